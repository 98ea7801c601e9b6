"""Evaluation metrics: CC and L1 scores, colocalisation similarity."""
