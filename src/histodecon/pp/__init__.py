"""Preprocessing: spot patches, tissue masks, background filtering and stain references."""

from ._background import filter_background
from ._patches import SpotPatches, spot_patches
from ._stain import stain_reference
from ._tissue import detect_tissue
