"""The resumable zarr store of :func:`histodecon.tl.embed`: finished batches of one model on one slide."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import zarr

from histodecon.encoders import PatchEncoder
from histodecon.pp import SpotPatches


class StoredEmbedding:
    """The zarr group ``<store>/<model>`` holding one model's embeddings of one slide and a per-spot done mask.

    Its attributes identify the spots, model and weights; opening it for anything else fails.

    Parameters
    ----------
    path
        The zarr directory (created if needed).
    encoder
        The loaded encoder whose embeddings the group holds.
    patches
        The slide's spot patches, in table order.
    batch_size
        Patches per forward pass; a fresh store has one chunk per batch.
    """

    def __init__(self, path: str | os.PathLike, encoder: PatchEncoder, patches: SpotPatches, batch_size: int) -> None:
        n, name = len(patches), encoder.entry.name
        identity = {
            "model": name,
            "dim": encoder.dim,
            "weights_sha256": encoder.provenance.get("weights_sha256"),
            "patch_size": encoder.entry.patch_size,
            "input_size": encoder.entry.input_size,
            "mpp": encoder.entry.mpp,
            "n_obs": n,
            "obs_names_sha256": hashlib.sha256("\n".join(patches.obs_names).encode()).hexdigest(),
        }
        root = zarr.open_group(os.fspath(path), mode="a")
        if name not in root:
            root.create_group(name, attributes={"identity": identity})
        group = root[name]
        stored = dict(group.attrs.get("identity", {}))
        differ = [
            f"{key}: store {stored.get(key)!r} vs now {value!r}"
            for key, value in identity.items()
            if stored.get(key) != value
        ]
        if differ:
            raise ValueError(
                f"The store {os.fspath(path)!r} holds {name!r} embeddings made for other spots, model or "
                f"weights ({'; '.join(differ)}). Use another `store=` path, or delete {os.fspath(path)}/{name} "
                "to start over."
            )
        chunk = min(n, batch_size)  # a fresh run writes whole chunks, one per batch
        # require_array: a run killed while creating the store finds what it made and creates the rest.
        self.embedding = group.require_array(
            "embedding", shape=(n, encoder.dim), chunks=(chunk, encoder.dim), dtype="float32", fill_value=0.0
        )
        self.done = group.require_array("done", shape=(n,), chunks=(chunk,), dtype="bool", fill_value=False)

    def write(self, index: np.ndarray, embedding: np.ndarray) -> None:
        """Save one batch; the done mask is written after the embeddings, so a kill in between only redoes it."""
        self.embedding.set_orthogonal_selection((index, slice(None)), embedding)
        self.done.set_orthogonal_selection(index, np.ones(len(index), dtype=bool))
