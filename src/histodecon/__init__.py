"""histodecon: cell-type composition from H&E histology with pathology foundation models."""

from . import datasets, encoders, get, gr, io, metrics, pl, pp, tl
from ._settings import settings

__version__ = "0.1.0.dev0"

__all__ = ["datasets", "encoders", "get", "gr", "io", "metrics", "pl", "pp", "tl", "settings", "__version__"]
