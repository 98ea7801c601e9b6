"""Plotting."""

from ._colocalization import colocalization
from ._scores import scores
from ._spatial import spatial_abundance

__all__ = ["colocalization", "scores", "spatial_abundance"]
