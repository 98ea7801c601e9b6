"""Tools: embedding, deconvolution, training and prediction."""
