"""The one halving rule of histodecon's image pyramids, shared by the levels it builds and the levels it reads.

:mod:`histodecon.io` builds the pyramid of a large image that stores none by repeated
:func:`halve`; :mod:`histodecon.pp` reads a patch from the coarsest level that is fine enough and,
where the image does not store that level, halves the window under the patch by the same rule.
So a patch is the same whether the image was stored with its pyramid or without one.
Imports numpy and dask only.
"""

from __future__ import annotations

import dask.array as da
import numpy as np


def halve(image: np.ndarray) -> np.ndarray:
    """``(c, y, x)`` uint8 at half the size: each pixel the mean of a 2 x 2 block, rounded half up.

    An odd last row or column is dropped, as when a pyramid level is ``size // 2`` pixels.

    Examples
    --------
    >>> import numpy as np
    >>> halve(np.array([[[0, 1, 10], [2, 3, 10]]], dtype=np.uint8)).tolist()
    [[[2]]]
    """
    _, height, width = image.shape
    even = image[:, : height // 2 * 2, : width // 2 * 2]
    rows = even[:, 0::2].astype(np.uint16) + even[:, 1::2]  # strided adds: far faster than a reshaped sum
    blocks = rows[:, :, 0::2] + rows[:, :, 1::2]
    blocks += 2
    blocks >>= 2
    return blocks.astype(np.uint8)


def halvings(image: np.ndarray | da.Array, n: int) -> list[np.ndarray | da.Array]:
    """``image`` halved 1 .. ``n`` times: computed now for an array in memory, lazily for a dask array.

    A dask array is halved chunk by chunk (``halve`` on each chunk), which equals halving the whole
    image when every chunk but the last along each axis has an even side.
    """
    levels = []
    for _ in range(n):
        if isinstance(image, da.Array):
            if any(size % 2 for axis in image.chunks[1:] for size in axis[:-1]):
                image = image.rechunk({1: 2 * max(1, image.chunksize[1] // 2), 2: 2 * max(1, image.chunksize[2] // 2)})
            chunks = (image.chunks[0], *(tuple(size // 2 for size in axis) for axis in image.chunks[1:]))
            image = da.map_blocks(halve, image, chunks=chunks, dtype=np.uint8)
        else:
            image = halve(np.asarray(image))
        levels.append(image)
    return levels
