"""The worker side of :func:`histodecon.tl.embed_many` and :func:`histodecon.tl.predict_many`.

One task per slide, run on a dask worker (or in this process without a client): the tasks,
the models each worker process loads once and reuses, and the worker's settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import dask
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData

from histodecon import encoders
from histodecon._constants import Key
from histodecon._settings import logger, settings
from histodecon._utils import get_table, provenance
from histodecon.pp._stain import StainReference

from ._embedding._patch_field import (
    ENCODER_FIELD,
    EncoderField,
    field_encoder,
    field_key,
    field_patches,
    with_patch_field,
)
from ._embedding._slide import embed_slide
from ._embedding._slide_record import slide_record
from ._estimator._applicability import ApplicabilityWarning
from ._estimator._regressor import AbundanceRegressor
from ._predict import predict

#: glibc's ``mallopt`` parameters (malloc.h) and the values a worker sets: the largest mmap
#: threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``), and twice it as the trim
#: threshold, the ratio glibc itself keeps when it adjusts the two.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: Models loaded in this process, reused by every slide a dask worker embeds or predicts.
WORKER_MODELS: dict[tuple, Any] = {}
_WORKER_MODELS_LOCK = threading.Lock()


def embed_task(
    slide: SpatialData,
    store: str,
    *,
    entries: Sequence[encoders.Encoder],
    weights: Mapping[str, str],
    device: str | None,
    batch_size: int,
    num_workers: int,
    table_key: str,
    patch_size: int | EncoderField = ENCODER_FIELD,
    mpp: float | None | EncoderField = ENCODER_FIELD,
    image_key: str | None = None,
    stain_reference: StainReference | None = None,
    models: dict | None = None,
) -> dict[str, tuple]:
    """Embeddings and provenance of one slide per model, saved batch by batch to ``store``.

    ``patch_size`` and ``mpp`` choose the patch field, ``image_key`` the image and
    ``stain_reference`` the stain normalisation (:func:`histodecon.tl.embed`); the
    registry ``entries`` and the cached encoders are left as they are. ``models`` caches the
    loaded encoders; ``None`` uses this process's :data:`WORKER_MODELS`.
    """
    models = WORKER_MODELS if models is None else models
    torch_device = settings.torch_device(device)
    results = {}
    with worker_settings():
        fields = [with_patch_field(entry, patch_size=patch_size, mpp=mpp) for entry in entries]
        patches = field_patches(
            slide, fields, table_key=table_key, image_key=image_key, stain_reference=stain_reference
        )
        table = get_table(slide, table_key)
        for entry, field in zip(entries, fields, strict=True):
            encoder = cached(
                models,
                ("encoder", entry.name, weights.get(entry.name), str(torch_device)),
                lambda entry=entry: load_encoder(entry, weights.get(entry.name), torch_device),
            )
            results[entry.name] = embed_slide(
                field_encoder(encoder, field),
                patches[field_key(field)],
                table=table,
                device=torch_device,
                batch_size=batch_size,
                num_workers=num_workers,
                store=store,
            )
        images = slide_record(slide, table_key, image_key=image_key, stain_reference=stain_reference)
    return {name: (embedding, record | {"samples": images}) for name, (embedding, record) in results.items()}


def predict_task(
    table: AnnData, model: AbundanceRegressor, *, key_added: str, interval: float | None
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Predictions of one slide's table (with ``interval``, their bounds too) by ``obsm`` key, and their provenance.

    The client judges the slide's applicability and warns (:func:`histodecon.tl.predict_many`), so
    the same warning from here, in this process without a client, would come twice.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApplicabilityWarning)
        predict(table, model, key_added=key_added, interval=interval)
    keys = (key_added, *(Key.obsm.interval_bounds(key_added) if interval is not None else ()))
    return {key: table.obsm[key] for key in keys}, provenance(table)[Key.uns.predictions][key_added]


def load_encoder(entry: encoders.Encoder, weights: str | None, device: Any) -> encoders.PatchEncoder:
    """Load ``entry``, first registering it where this process does not know it (a fresh worker)."""
    try:
        known = encoders.get(entry.name)
    except KeyError:
        known = None
    if known != entry:
        encoders.register(entry, overwrite=True)
    return encoders.load(entry.name, weights=weights, device=device)


def cached(models: dict, key: tuple, load: Callable[[], Any]) -> Any:
    """``models[key]``, loaded once even when several threads of a worker ask at the same time."""
    with _WORKER_MODELS_LOCK:
        if key not in models:
            models[key] = load()
        return models[key]


@contextlib.contextmanager
def worker_settings() -> Iterator[None]:
    """Inside a dask worker: no per-batch progress bars, and image chunks read by local threads.

    The client shows one bar over slides. Without the threaded scheduler, the chunk reads of
    :func:`histodecon.pp.spot_patches` would go back to the cluster as tasks of their own.
    """
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        yield
        return
    tune_malloc()
    shown, settings.progress = settings.progress, False
    try:
        with dask.config.set(scheduler="threads"):
            yield
    finally:
        settings.progress = shown


@functools.cache
def tune_malloc() -> None:
    """Let a dask worker keep torch's batch-sized buffers in its heap, as a plain process does.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that they give memory
    back to the system. Setting it also freezes glibc's mmap threshold at 128 KiB, so every
    tensor of a batch is mapped, zero-filled page by page, and unmapped again; and freeing a
    batch's buffers at the top of the heap hands their pages back, to be faulted in again by
    the next batch. With the weights-free encoder (``benchmarks/scale.py``) a worker left that
    way embedded half as many slides per minute, and with only the mmap threshold raised still
    made 17 times the page faults of a plain process and spent about a tenth more CPU per slide.
    Once per worker process, this sets the mmap threshold to 32 MiB and the trim threshold to
    64 MiB (glibc's own ratio): freed memory beyond 64 MiB at the top of the heap still goes
    back to the system. Skipped where the mmap threshold was set explicitly, where the trim
    setting is absent or already as large, or without glibc.
    """
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not trim.isdigit() or int(trim) >= TRIM_THRESHOLD:
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        logger.debug(
            f"Set this worker's malloc mmap and trim thresholds to {MMAP_THRESHOLD} and {TRIM_THRESHOLD} bytes."
        )
