"""The pixel glass rule: which pixels are unstained slide background, for pixel statistics of ``encoders`` and ``pp``.

A bottom-layer module (numpy only). It picks pixels (stain estimation, the handcrafted
encoder's features); which spots lie on tissue is decided by the slide's tissue mask
(:mod:`histodecon._tissue`), which adapts to each scan's background colour.
"""

from __future__ import annotations

import numpy as np

#: Pixels brighter than this in all of R, G and B are glass (unstained slide background).
GLASS_THRESHOLD = 220


def glass_mask(image: np.ndarray, threshold: int = GLASS_THRESHOLD) -> np.ndarray:
    """Boolean mask of glass pixels: all channels of an ``(..., 3)`` uint8 image above ``threshold``."""
    return (image > threshold).all(axis=-1)
