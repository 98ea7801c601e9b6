"""Preprocessing: spot patches and background filtering."""

from ._background import filter_background
from ._patches import SpotPatches, spot_patches
