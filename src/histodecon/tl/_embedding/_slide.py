"""Embed the spots of one slide with one loaded encoder: batches read ahead by threads, resumable from a store.

The single step both :func:`histodecon.tl.embed` (in this process) and
:func:`histodecon.tl.embed_many` (one task per slide on a dask worker) run.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from anndata import AnnData

from histodecon._cost import measure_cost
from histodecon._settings import logger, progress_bar
from histodecon.encoders import PatchEncoder
from histodecon.pp import SpotPatches

from ._store import StoredEmbedding

#: Batches read ahead of the model per reading thread; bounds the memory of prefetching.
PREFETCH_PER_WORKER = 2


def embed_slide(
    encoder: PatchEncoder,
    patches: SpotPatches,
    *,
    table: AnnData,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    store: str | os.PathLike | None,
) -> tuple[np.ndarray, dict]:
    """Embeddings ``(n, dim)`` of all spots of one slide and their provenance record.

    The record's ``cost`` says what computing the embeddings cost: ``patches`` embedded (those
    not already in the store), ``patches_per_second``, ``seconds``, ``peak_host_mb`` and, on
    CUDA, ``peak_gpu_mb`` (:mod:`histodecon._cost`).

    Parameters
    ----------
    encoder
        A loaded encoder, on ``device``.
    patches
        The slide's spot patches at the encoder's ``patch_size`` and ``mpp``.
    table
        The slide's table, whose samples, spot names and coordinates identify the ``store``.
    device
        Where the batches are embedded; bfloat16 autocast on CUDA devices that support it.
    batch_size
        Patches per forward pass.
    num_workers
        Threads reading patches ahead of the model.
    store
        Zarr directory of a :class:`StoredEmbedding` to save batches to and resume from, or ``None``.
        Spots whose stored embedding is lost or corrupted are recomputed, with a warning.
    """
    n, dim, name = len(patches), encoder.dim, encoder.entry.name
    saved = StoredEmbedding(store, encoder, patches, table, batch_size) if store is not None else None
    out, finished = saved.finished() if saved is not None else (np.empty((n, dim), np.float32), np.zeros(n, bool))
    todo = np.flatnonzero(~finished)
    if saved is not None and len(todo) < n:
        logger.info(f"Resuming {name!r} from {store}: {n - len(todo)} of {n} spots already embedded")
    autocast = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    with (
        measure_cost(device) as cost,
        progress_bar(total=len(todo), desc=f"embed {name}", unit="patch") as bar,
        torch.inference_mode(),
        torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext(),
    ):
        for index, batch in prefetched(patches, batches, num_workers, pin=device.type == "cuda"):
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
        "patch_mpp": dict(patches.sample_mpp),
        "stain_reference": patches.stain_record,
        "batch_size": batch_size,
        "device": str(device),
        "autocast": None if autocast is None else "bfloat16",
        "versions": {"histodecon": _version("histodecon"), "torch": str(torch.__version__), "timm": _version("timm")},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cost": cost.record(patches=len(todo), patches_per_second=round(len(todo) / max(cost.seconds, 1e-9), 2)),
    }
    return out, record


def prefetched(
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


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
