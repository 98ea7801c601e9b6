"""A least-recently-used cache of image chunks, bounded in bytes: what patch reading keeps of a slide."""

from __future__ import annotations

from collections import OrderedDict

import dask
import dask.array as da
import numpy as np


class ChunkCache:
    """Least-recently-used store of image chunks as ``(y, x, c)`` numpy arrays, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get_many(self, array: da.Array, keys: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """Return the chunks ``(i, j)`` of ``array``, computing the missing ones together."""
        found, missing = {}, []
        for key in keys:
            full_key = (array.name, *key)
            if full_key in self._chunks:
                self._chunks.move_to_end(full_key)
                found[key] = self._chunks[full_key]
            else:
                missing.append(key)
        blocks = dask.compute(*[array.blocks[0, i, j] for i, j in missing]) if missing else ()
        for key, block in zip(missing, blocks, strict=True):
            chunk = np.ascontiguousarray(np.moveaxis(np.asarray(block), 0, -1))
            found[key] = chunk
            self._chunks[(array.name, *key)] = chunk
            self._bytes += chunk.nbytes
        while self._bytes > self.max_bytes and len(self._chunks) > len(keys):
            _, chunk = self._chunks.popitem(last=False)
            self._bytes -= chunk.nbytes
        return found
