"""Tools: embedding, deconvolution, training and prediction."""

from ._cross_validate import CVResult, cross_validate
from ._deconvolve import deconvolve, reference_signatures
from ._distributed import embed_many, predict_many
from ._embed import embed
from ._estimator._hyperparameters import Hyperparameters
from ._estimator._regressor import AbundanceRegressor
from ._fit import fit
from ._predict import predict
