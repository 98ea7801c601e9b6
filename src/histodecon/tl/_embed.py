"""Embed the patch of every spot with one or more encoders, streaming and optionally resumable."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
import zarr
from anndata import AnnData
from spatialdata import SpatialData
from tqdm.auto import tqdm

from histodecon import encoders
from histodecon._docs import inject_docs
from histodecon._settings import logger, settings
from histodecon._utils import check_overwrite, encoder_names, get_table, provenance, write_result
from histodecon.pp._patches import SpotPatches, spot_patches

#: Batches read ahead of the model per reading thread; bounds the memory of prefetching.
PREFETCH_PER_WORKER = 2


@inject_docs
def embed(
    data: SpatialData | Sequence[SpatialData],
    models: str | Sequence[str] = ("handcrafted",),
    *,
    batch_size: int = 32,
    device: str | None = None,
    num_workers: int = 1,
    weights: Mapping[str, str | os.PathLike] | None = None,
    table_key: str = "table",
    overwrite: bool = False,
    store: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> None:
    """Embed the image patch of every spot with each encoder in ``models``.

    For each model, the patches its registry entry asks for (``patch_size`` pixels at
    ``mpp`` micrometres per pixel, see :func:`histodecon.encoders.get`) are read lazily
    from the slide by :func:`histodecon.pp.spot_patches`, in batches, by background
    threads that stay a few batches ahead of the model, so that reading overlaps compute
    and memory does not grow with the slide. Inference runs under
    :func:`torch.inference_mode`, with bfloat16 autocast on CUDA devices that support it.
    Nothing is written until every model has embedded every slide.

    Parameters
    ----------
    data
        A slide read with :mod:`histodecon.io`, or a list of slides (each is embedded and
        written separately). The images are needed, so an AnnData alone is refused.
    models
        Encoder names (:func:`histodecon.encoders.available`, or ``"timm:<name>"``).
    batch_size
        Patches per forward pass.
    {{device}}
    num_workers
        Threads reading patches ahead of the model.
    weights
        Weights file per model name, e.g. ``{"uni": "/path/pytorch_model.bin"}``; models
        not named here look in ``$HISTODECON_WEIGHTS_DIR`` and the Hugging Face cache.
    {{table_key}}
    {{overwrite}}
    store
        Path of a zarr directory where finished batches are saved as they complete (one
        group per model: the float32 embeddings and a per-spot done mask). Running again
        with the same store computes only the spots not yet done and gives the same result
        as an uninterrupted run. A store made for other spots, another model or other
        weights is refused. With a list of slides, pass one path per slide.

    Returns
    -------
    ``None``. Writes, for each model ``name``, ``obsm[f"X_{name}"]`` (float32, spots x
    dim, in table order) and its provenance ``uns['histodecon']['embeddings'][name]``
    (model, dim, weights file and sha256, patch size, input size, mpp, batch size, device,
    autocast, package versions, date).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=50, seed=0)
    >>> hd.tl.embed(sdata, models=["handcrafted"])
    >>> sdata.tables["table"].obsm["X_handcrafted"].shape
    (50, 51)
    """
    slides = _as_slides(data)
    names = encoder_names(models, "models")
    entries = [encoders.get(name) for name in names]
    weights = _weights_per_model(weights, names)
    stores = _stores_per_slide(store, len(slides))
    tables = _checked_tables(
        slides, names, batch_size=batch_size, num_workers=num_workers, table_key=table_key, overwrite=overwrite
    )
    patches = [
        {(e.patch_size, e.mpp): spot_patches(slide, size=e.patch_size, mpp=e.mpp, table_key=table_key) for e in entries}
        for slide in slides
    ]

    device = settings.torch_device(device)
    results: dict[tuple[int, str], tuple[np.ndarray, dict]] = {}
    for name, entry in zip(names, entries, strict=True):
        encoder = encoders.load(name, weights=weights.get(name), device=device)
        for i, slide_patches in enumerate(patches):
            spots = slide_patches[entry.patch_size, entry.mpp]
            results[i, name] = _embed_slide(encoder, device, spots, batch_size, num_workers, stores[i])
        del encoder

    for i, table in enumerate(tables):
        for name in names:
            embedding, record = results[i, name]
            write_result(table, "obsm", f"X_{name}", embedding, overwrite=overwrite)
            provenance(table).setdefault("embeddings", {})[name] = record


def _as_slides(data: Any) -> list[SpatialData]:
    """One slide or a list of slides, as a non-empty list of SpatialData."""
    slides = [data] if isinstance(data, SpatialData | AnnData) else data
    if isinstance(slides, Sequence) and not isinstance(slides, str) and slides:
        for slide in slides:
            if isinstance(slide, AnnData):
                raise TypeError(
                    "hd.tl.embed reads image patches, so it needs the SpatialData holding the slide image, "
                    "not an AnnData table. Read the slide with `hd.io` (or convert a scanpy/squidpy AnnData "
                    "with `uns['spatial']` by `hd.io.from_anndata`)."
                )
            if not isinstance(slide, SpatialData):
                raise TypeError(f"hd.tl.embed takes SpatialData slides, got a {type(slide).__name__}.")
        return list(slides)
    raise TypeError(f"`data` must be a SpatialData or a non-empty list of them, got {type(data).__name__}.")


def _weights_per_model(weights: Mapping | None, names: list[str]) -> Mapping:
    """Check that ``weights`` maps only requested model names to paths."""
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"`weights` must map model names to files, e.g. {{{names[0]!r}: '/path/to/weights'}}, "
            f"got {type(weights).__name__}."
        )
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"`weights` names {unknown}, which are not in `models` {names}.")
    return weights


def _checked_tables(
    slides: list[SpatialData], names: list[str], *, batch_size: int, num_workers: int, table_key: str, overwrite: bool
) -> list:
    """The slides' tables, after checking the loop options, that every table has spots and no result is replaced."""
    for value, what in ((batch_size, "batch_size"), (num_workers, "num_workers")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{what}` must be a positive integer, got {value!r}.")
    tables = [get_table(slide, table_key) for slide in slides]
    for table in tables:
        if table.n_obs == 0:
            raise ValueError("A slide's table has no spots to embed; drop it from `slides`.")
        for name in names:
            check_overwrite(table.obsm, f"X_{name}", "adata.obsm", overwrite, can_rename=False)
    return tables


def _stores_per_slide(store: Any, n_slides: int) -> list[str | os.PathLike | None]:
    """One store path (or ``None``) per slide."""
    if store is None:
        return [None] * n_slides
    if isinstance(store, str | os.PathLike):
        if n_slides > 1:
            raise ValueError(f"`store` must be a list of {n_slides} paths, one per slide, when embedding a list.")
        return [store]
    stores = list(store)
    if len(stores) != n_slides:
        raise ValueError(f"`store` has {len(stores)} paths for {n_slides} slides; pass one path per slide.")
    return stores


def _embed_slide(
    encoder: encoders.PatchEncoder,
    device: torch.device,
    patches: SpotPatches,
    batch_size: int,
    num_workers: int,
    store: str | os.PathLike | None,
) -> tuple[np.ndarray, dict]:
    """Embeddings ``(n, dim)`` of all spots of one slide and their provenance record."""
    n, dim, name = len(patches), encoder.dim, encoder.entry.name
    saved = _StoredEmbedding(store, encoder, patches, batch_size) if store is not None else None
    out = saved.embedding[:] if saved is not None else np.empty((n, dim), np.float32)
    todo = np.flatnonzero(~saved.done[:]) if saved is not None else np.arange(n)
    if saved is not None and len(todo) < n:
        logger.info(f"Resuming {name!r} from {store}: {n - len(todo)} of {n} spots already embedded")
    autocast = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    with (
        tqdm(total=len(todo), desc=f"embed {name}", unit="patch", disable=not settings.progress) as bar,
        torch.inference_mode(),
        torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext(),
    ):
        for index, batch in _prefetched(patches, batches, num_workers, pin=device.type == "cuda"):
            embedding = encoder(batch.to(device, non_blocking=True)).float().cpu().numpy()
            if embedding.shape != (len(index), dim):
                raise ValueError(
                    f"Encoder {name!r} returned shape {embedding.shape} for {len(index)} patches; its registry "
                    f"entry promises ({len(index)}, {dim}). Fix the entry's `dim` or the module's output."
                )
            out[index] = embedding
            if saved is not None:
                saved.write(index, embedding)
            bar.update(len(index))
    record = {"weights": None, "weights_sha256": None} | encoder.provenance
    record |= {
        "batch_size": batch_size,
        "device": str(device),
        "autocast": None if autocast is None else "bfloat16",
        "versions": {"histodecon": _version("histodecon"), "torch": torch.__version__, "timm": _version("timm")},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return out, record


def _prefetched(
    patches: SpotPatches, batches: Iterable[np.ndarray], num_workers: int, *, pin: bool
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(index, uint8 patches)`` per batch, read by ``num_workers`` threads a few batches ahead."""

    def read(index: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(patches[index])
        return batch.pin_memory() if pin else batch

    batches = iter(batches)
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="histodecon-patches")
    try:
        pending = deque(
            (index, pool.submit(read, index))
            for _, index in zip(range(PREFETCH_PER_WORKER * num_workers), batches, strict=False)
        )
        while pending:
            index, future = pending.popleft()
            upcoming = next(batches, None)
            if upcoming is not None:
                pending.append((upcoming, pool.submit(read, upcoming)))
            yield index, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _StoredEmbedding:
    """The zarr group ``<store>/<model>`` holding one model's embeddings of one slide and a per-spot done mask.

    Its attributes identify the spots, model and weights; opening it for anything else fails.
    """

    def __init__(
        self, path: str | os.PathLike, encoder: encoders.PatchEncoder, patches: SpotPatches, batch_size: int
    ) -> None:
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


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
