"""Spatial statistics: RBF weight graph and bivariate Moran's R."""
