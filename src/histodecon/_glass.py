"""The glass rule: which pixels are unstained slide background, shared by ``io``, ``pp`` and ``encoders``.

A bottom-layer module (numpy only), so that the slide reader, background filtering and the
weights-free encoder apply one rule without importing each other.
"""

from __future__ import annotations

import numpy as np

#: Pixels brighter than this in all of R, G and B are glass (unstained slide background).
GLASS_THRESHOLD = 220
#: Spots whose patch is more than this fraction glass are background.
MAX_GLASS_FRACTION = 0.5


def glass_mask(image: np.ndarray, threshold: int = GLASS_THRESHOLD) -> np.ndarray:
    """Boolean mask of glass pixels: all channels of an ``(..., 3)`` uint8 image above ``threshold``."""
    return (image > threshold).all(axis=-1)


def check_rule(glass_threshold: int, max_glass_fraction: float) -> None:
    """Refuse thresholds outside their ranges."""
    if not 0 <= glass_threshold < 255:
        raise ValueError(f"`glass_threshold` must be an intensity in [0, 255), got {glass_threshold!r}.")
    if not 0 <= max_glass_fraction <= 1:
        raise ValueError(f"`max_glass_fraction` must be a fraction in [0, 1], got {max_glass_fraction!r}.")
