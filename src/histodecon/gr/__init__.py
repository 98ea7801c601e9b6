"""Spatial statistics: RBF weight graph and bivariate Moran's R."""

from ._moran import moran_r
from ._rbf import rbf_graph

__all__ = ["moran_r", "rbf_graph"]
