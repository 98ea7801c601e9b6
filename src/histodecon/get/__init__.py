"""Results as objects that scanpy, squidpy and spatialdata-plot read directly (as ``sc.get``)."""

from ._abundances import abundances

__all__ = ["abundances"]
