"""The resumable zarr store of :func:`histodecon.tl.embed`: finished batches of one model on one slide.

A store is bound to what it embeds. Its identity records the slide (samples, spot names, spot
coordinates, a fingerprint of the pixels under a few spots), the patch geometry, the model and
its weights; a store made for anything else is refused. Every finished spot carries a CRC-32
of its float32 embedding, so that on resume a lost or corrupted chunk is found, named and
recomputed instead of being read back as zeros.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib

import numpy as np
import zarr
from anndata import AnnData

from histodecon._constants import Key
from histodecon.encoders import PatchEncoder
from histodecon.pp import SpotPatches

#: Spots, evenly spread over the table, whose patches fingerprint the image content.
FINGERPRINT_SPOTS = 16
#: Spot names listed in a message about spots to recompute.
NAMED_SPOTS = 5
#: What each identity field means, for the message refusing a store made for something else.
_FIELDS = {
    "samples": "samples",
    "n_obs": "number of spots",
    "obs_names_sha256": "spot names",
    "coordinates_sha256": f"spot coordinates (`obsm[{Key.obsm.spatial!r}]`)",
    "image_sha256": f"image pixels under {FINGERPRINT_SPOTS} spots",
    "patch_size": "patch_size",
    "patch_mpp": "patch um/px",
    "input_size": "model input size",
    "model": "model",
    "dim": "embedding width",
    "weights_sha256": "weights (sha256)",
    "stain_reference": "stain reference the patches are normalised to",
}


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def spots_identity(table: AnnData) -> dict:
    """Samples, spot count and hashes of the spot names and coordinates of a table: which spots it holds.

    Cheap (no pixels are read): :func:`histodecon.tl.embed_many` names its stores with it.
    """
    samples = (
        sorted(str(sample) for sample in table.obs[Key.obs.sample].unique()) if Key.obs.sample in table.obs else []
    )
    spatial = table.obsm.get(Key.obsm.spatial)
    coordinates = None
    if spatial is not None:
        coordinates = _sha256(np.ascontiguousarray(np.asarray(spatial, dtype=np.float64)[:, :2]).tobytes())
    return {
        "samples": samples,
        "n_obs": int(table.n_obs),
        "obs_names_sha256": _sha256("\n".join(map(str, table.obs_names)).encode()),
        "coordinates_sha256": coordinates,
    }


def spots_fingerprint(table: AnnData) -> str:
    """A short hex digest of :func:`spots_identity`: two tables with other spots get other fingerprints."""
    return _sha256(json.dumps(spots_identity(table), sort_keys=True).encode())[:12]


def pixels_sha256(patches: SpotPatches) -> str:
    """A hash of the patches of :data:`FINGERPRINT_SPOTS` spots spread evenly over the table: the image under them."""
    n = len(patches)
    sampled = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_SPOTS)).round().astype(np.intp))
    return _sha256(np.ascontiguousarray(patches[sampled]).tobytes())


def slide_identity(table: AnnData, patches: SpotPatches) -> dict:
    """:func:`spots_identity` plus the patch geometry, stain reference and a hash of :data:`FINGERPRINT_SPOTS` patches.

    The patches fingerprint the image content under the spots (another image with the same
    spots differs there) at the geometry the model sees.
    """
    return spots_identity(table) | {
        "image_sha256": pixels_sha256(patches),
        "patch_size": int(patches.size),
        "patch_mpp": [float(mpp) for mpp in np.unique(patches.mpp)],
        "stain_reference": patches.stain_record,
    }


def _difference(key: str, stored: object, now: object) -> str:
    """One field of a store's identity that differs, for the message; hashes are shortened."""
    if key.endswith("_sha256"):
        stored, now = (value[:12] if isinstance(value, str) else value for value in (stored, now))
    return f"{_FIELDS.get(key, key)} (store {stored!r}, now {now!r})"


def row_checksums(embedding: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's float32 bytes: what verifies a stored spot on resume."""
    rows = np.ascontiguousarray(embedding, dtype=np.float32)
    return np.fromiter((zlib.crc32(row.tobytes()) for row in rows), dtype=np.uint32, count=len(rows))


class StoredEmbedding:
    """The zarr group ``<store>/<model>``: one model's embeddings of one slide, per-spot checksums and done mask.

    Its attributes identify the slide, patch geometry, model and weights; opening it for
    anything else fails, naming what differs.

    Parameters
    ----------
    path
        The zarr directory (created if needed).
    encoder
        The loaded encoder whose embeddings the group holds.
    patches
        The slide's spot patches, in table order.
    table
        The slide's table (samples, spot names and coordinates).
    batch_size
        Patches per forward pass; a fresh store has one chunk per batch.
    """

    def __init__(
        self, path: str | os.PathLike, encoder: PatchEncoder, patches: SpotPatches, table: AnnData, batch_size: int
    ) -> None:
        n, name = len(patches), encoder.entry.name
        self.path, self.name = os.fspath(path), name
        self.obs_names = patches.obs_names
        identity = slide_identity(table, patches) | {
            "model": name,
            "dim": encoder.dim,
            "weights_sha256": encoder.provenance.get("weights_sha256"),
            "input_size": encoder.entry.input_size,
        }
        root = zarr.open_group(self.path, mode="a")
        if name not in root:
            root.create_group(name, attributes={"identity": identity})
        group = root[name]
        stored = dict(group.attrs.get("identity", {}))
        differ = [
            _difference(key, stored.get(key), value) for key, value in identity.items() if stored.get(key) != value
        ]
        if differ:
            raise ValueError(
                f"The store {self.path!r} holds {name!r} embeddings of another slide, patch geometry, model or "
                f"weights; what differs: {'; '.join(differ)}. Give each slide its own `store=` path, or delete "
                f"{os.path.join(self.path, name)} to start over."
            )
        chunk = min(n, batch_size)  # a fresh run writes whole chunks, one per batch
        # require_array: a run killed while creating the store finds what it made and creates the rest.
        self.embedding = group.require_array(
            "embedding", shape=(n, encoder.dim), chunks=(chunk, encoder.dim), dtype="float32", fill_value=0.0
        )
        self.checksum = group.require_array("checksum", shape=(n,), chunks=(chunk,), dtype="uint32", fill_value=0)
        self.done = group.require_array("done", shape=(n,), chunks=(chunk,), dtype="bool", fill_value=False)

    def finished(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored embeddings and the mask of spots whose embedding is stored intact.

        A spot marked done counts only if its chunks decompress and its embedding matches its
        checksum. Chunks that fail to decompress are cleared; spots that fail either check
        are named in a warning and left to recompute.
        """
        done, unreadable_done = self._read(self.done, False)
        checksum, unreadable_checksum = self._read(self.checksum, 0)
        embedding, unreadable = self._read(self.embedding, 0.0)
        intact = done & ~unreadable_checksum & ~unreadable
        intact[intact] = row_checksums(embedding[intact]) == checksum[intact]
        lost = (done & ~intact) | unreadable_done
        if lost.any():
            self.done.set_orthogonal_selection(np.flatnonzero(lost), np.zeros(int(lost.sum()), dtype=bool))
            names = list(self.obs_names[lost][:NAMED_SPOTS])
            warnings.warn(
                f"The store {self.path!r} lost the {self.name!r} embeddings of {int(lost.sum())} spots marked done "
                f"(e.g. {names}): a chunk is missing or corrupted. They are recomputed now.",
                UserWarning,
                stacklevel=3,
            )
        return embedding, intact

    def _read(self, array: zarr.Array, fill: object) -> tuple[np.ndarray, np.ndarray]:
        """``array`` read chunk by chunk, and the mask of rows in chunks that failed to decompress (cleared)."""
        step = array.chunks[0]
        values = np.full(array.shape, fill, dtype=array.dtype)
        unreadable = np.zeros(array.shape[0], dtype=bool)
        for start in range(0, array.shape[0], step):
            rows = slice(start, start + step)
            try:
                values[rows] = array[rows]
            except Exception:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ... on corrupted bytes
                unreadable[rows] = True
                array[rows] = fill  # a whole chunk of the fill value: its corrupted bytes are never read again
        return values, unreadable

    def write(self, index: np.ndarray, embedding: np.ndarray) -> None:
        """Save one batch; checksums and done mask are written after the embeddings, so a kill in between redoes it."""
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        self.embedding.set_orthogonal_selection((index, slice(None)), embedding)
        self.checksum.set_orthogonal_selection(index, row_checksums(embedding))
        self.done.set_orthogonal_selection(index, np.ones(len(index), dtype=bool))
