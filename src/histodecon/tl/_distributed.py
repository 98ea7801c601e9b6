"""Embed and predict many slides, one task per slide, on a dask.distributed cluster or locally."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import pandas as pd
from anndata import AnnData
from spatialdata import SpatialData
from tqdm.auto import tqdm

from histodecon import encoders
from histodecon._docs import inject_docs
from histodecon._settings import logger, settings
from histodecon._utils import check_overwrite, encoder_names, get_table, provenance, samples_of, write_result
from histodecon.pp._patches import spot_patches

from ._embed import _as_slides, _checked_tables, _embed_slide, _weights_per_model
from ._fit import as_slide_list, predict
from ._regressor import AbundanceRegressor
from ._regressor import _paths as model_files

if TYPE_CHECKING:
    from distributed import Client

#: glibc's ``mallopt`` parameter for the mmap threshold (malloc.h), and its largest value on
#: 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20
#: Models loaded in this process, reused by every slide a dask worker embeds or predicts.
_WORKER_MODELS: dict[tuple, Any] = {}
_WORKER_MODELS_LOCK = threading.Lock()


@inject_docs
def embed_many(
    slides: Sequence[SpatialData],
    models: str | Sequence[str] = ("handcrafted",),
    *,
    stores: str | os.PathLike,
    client: Client | None = None,
    resources: Mapping[str, float] | None = None,
    batch_size: int = 32,
    device: str | None = None,
    num_workers: int = 1,
    weights: Mapping[str, str | os.PathLike] | None = None,
    table_key: str = "table",
    overwrite: bool = False,
) -> None:
    """Embed many slides, one task per slide, on a dask cluster or one after another here.

    Each slide is one :mod:`dask.distributed` task that embeds it exactly like
    :func:`histodecon.tl.embed`, saving finished batches to its own zarr store
    ``<stores>/<sample>.zarr``. A worker loads each model once and reuses it for every
    slide it gets. Results are gathered into the slides' tables as slides finish.

    A worker that dies mid-slide loses only its unfinished batch: dask reschedules the slide
    and the new attempt resumes from its store. Running the same call again (after a crash
    of the whole job, or with ``overwrite=True``) reads finished slides back from their
    stores instead of computing them. Slides that fail are reported together at the end,
    after every other slide has been written.

    Parameters
    ----------
    slides
        SpatialData slides, each with one or more samples in ``obs['sample']`` (these name
        its store). Slides read with :func:`spatialdata.read_zarr` ship only their lazy
        graphs to the workers; in-memory images are copied to them.
    models
        Encoder names (:func:`histodecon.encoders.available`). Encoders registered in this
        session are sent to the workers with the tasks.
    stores
        Folder of the per-slide zarr stores (created if needed). On a cluster it must be on
        a file system every worker can write to.
    client
        A :class:`distributed.Client`; ``None`` embeds the slides one after another in this
        process, through the same per-slide tasks.
    resources
        Dask worker resources each slide's task needs, e.g. ``{"GPU": 1}`` so that model
        work runs only on workers started with ``--resources GPU=1`` (one slide at a time
        each). Ignored without a client.
    batch_size
        Patches per forward pass.
    device
        Torch device, resolved on each worker; ``None`` uses CUDA where the worker has it.
    num_workers
        Threads reading patches ahead of the model, per task.
    weights
        Weights file per model name; on a cluster the path must be readable by the workers.
    {{table_key}}
    {{overwrite}}

    Returns
    -------
    ``None``. Writes ``obsm[f"X_{name}"]`` and ``uns['histodecon']['embeddings'][name]`` to
    every slide's table, as :func:`histodecon.tl.embed` does.

    Examples
    --------
    >>> import histodecon as hd
    >>> from distributed import Client, LocalCluster
    >>> slides = [hd.datasets.synthetic(n_spots=50, seed=i, sample=f"s{i}") for i in range(4)]
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:  # doctest: +SKIP
    ...     hd.tl.embed_many(slides, ["handcrafted"], stores="embeddings", client=client)
    >>> hd.tl.embed_many(slides, ["handcrafted"], stores="embeddings")  # no client: one by one here
    >>> slides[0].tables["table"].obsm["X_handcrafted"].shape
    (50, 51)
    """
    slides = _as_slides(slides)
    names = encoder_names(models, "models")
    entries = [encoders.get(name) for name in names]
    weights = {name: os.fspath(path) for name, path in _weights_per_model(weights, names).items()}
    tables = _checked_tables(
        slides, names, batch_size=batch_size, num_workers=num_workers, table_key=table_key, overwrite=overwrite
    )
    paths = [Path(stores) / f"{slide_id}.zarr" for slide_id in _slide_ids(tables)]
    Path(stores).mkdir(parents=True, exist_ok=True)

    options = {
        "entries": entries,
        "weights": weights,
        "device": device,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "table_key": table_key,
    }
    arguments = [(slide, os.fspath(path)) for slide, path in zip(slides, paths, strict=True)]
    for i, results in _run(_embed_task, arguments, options, client, resources, "embed"):
        for name, (embedding, record) in results.items():
            write_result(tables[i], "obsm", f"X_{name}", embedding, overwrite=overwrite)
            provenance(tables[i]).setdefault("embeddings", {})[name] = record | {"store": os.fspath(paths[i])}


@inject_docs
def predict_many(
    slides: Sequence[SpatialData | AnnData],
    model: AbundanceRegressor | str | os.PathLike,
    *,
    client: Client | None = None,
    resources: Mapping[str, float] | None = None,
    table_key: str = "table",
    key_added: str = "pred_abund",
    overwrite: bool = False,
) -> None:
    """Predict cell-type abundances of many slides, one task per slide, like :func:`histodecon.tl.predict`.

    Only each slide's embeddings travel to the workers, never its images. The model is
    either a fitted :class:`AbundanceRegressor`, sent once to every worker, or the path of a
    saved one, which each worker loads (and checks) once. Prediction is cheap: a client
    pays off when the slides' tables are large or the predictions run next to
    :func:`embed_many` on the same cluster.

    Parameters
    ----------
    slides
        SpatialData or AnnData slides holding the embeddings the model was trained on.
    model
        A fitted :class:`AbundanceRegressor`, or the path given to
        :meth:`AbundanceRegressor.save` (readable by every worker).
    client
        A :class:`distributed.Client`; ``None`` predicts one slide after another here.
    resources
        Dask worker resources each task needs, e.g. ``{"GPU": 1}``. Ignored without a client.
    {{table_key}}
    {{key_added}}
    {{overwrite}}

    Returns
    -------
    ``None``. Writes ``obsm[key_added]`` and ``uns['histodecon']['predictions'][key_added]`` to
    every slide's table, as :func:`histodecon.tl.predict` does.

    Examples
    --------
    >>> import histodecon as hd
    >>> slides = [hd.datasets.synthetic(n_spots=50, seed=i, sample=f"s{i}") for i in range(3)]
    >>> hd.tl.embed_many(slides, ["handcrafted"], stores="embeddings")
    >>> model = hd.tl.fit(slides[:2], features=["handcrafted"], max_epochs=5)
    >>> model.save("model")
    >>> hd.tl.predict_many(slides[2:], "model")
    >>> list(slides[2].tables["table"].obsm["pred_abund"].columns) == model.cell_types
    True
    """
    slides = as_slide_list(slides)
    if isinstance(model, AbundanceRegressor):
        model._check_fitted()
        features = model.feature_keys
    elif isinstance(model, str | os.PathLike):
        _, sidecar = model_files(model)
        if not sidecar.exists():
            raise FileNotFoundError(f"{sidecar} not found; pass a fitted model or the path given to `model.save`.")
        model = os.path.abspath(model)
        features = None
    else:
        raise TypeError(
            f"`model` must be an AbundanceRegressor or the path of a saved one, got {type(model).__name__}."
        )
    tables = [get_table(slide, table_key) for slide in slides]
    for table in tables:
        check_overwrite(table.obsm, key_added, "adata.obsm", overwrite)
    if client is not None and isinstance(model, AbundanceRegressor):
        model = client.scatter(model, broadcast=True, hash=False)

    arguments = [(_embeddings_only(table, features), model) for table in tables]
    options = {"key_added": key_added}
    for i, (prediction, record) in _run(_predict_task, arguments, options, client, resources, "predict"):
        write_result(tables[i], "obsm", key_added, prediction, overwrite=overwrite)
        provenance(tables[i]).setdefault("predictions", {})[key_added] = record


def _slide_ids(tables: Sequence[AnnData]) -> list[str]:
    """A file-name-safe name per slide from its samples; two slides with the same samples are refused."""
    ids = ["+".join(re.sub(r"[^\w.-]", "_", str(sample)) for sample in samples_of(table)) for table in tables]
    repeated = sorted({slide_id for slide_id in ids if ids.count(slide_id) > 1})
    if repeated:
        raise ValueError(
            f"Several slides have the samples {repeated}, so they would share a store. Give each slide its own "
            "`obs['sample']` (or drop the duplicates from `slides`)."
        )
    return ids


def _embeddings_only(table: AnnData, features: Sequence[str] | None) -> AnnData:
    """A table with the spot names and the ``X_*`` embeddings of ``table`` (those of ``features`` if known)."""
    keys = [key for key in table.obsm if key.startswith("X_")]
    if features is not None:
        keys = [f"X_{name}" for name in features if f"X_{name}" in table.obsm]
    obs = table.obs[["sample"]] if "sample" in table.obs else pd.DataFrame(index=table.obs_names)
    return AnnData(obs=obs.copy(), obsm={key: table.obsm[key] for key in keys})


def _run(
    task: Callable,
    arguments: Sequence[tuple],
    options: dict,
    client: Client | None,
    resources: Mapping[str, float] | None,
    what: str,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(slide index, result)`` as slides finish; raise once at the end, naming every failed slide."""
    n, failures = len(arguments), {}
    bar = tqdm(total=n, desc=f"{what} slides", unit="slide", disable=not settings.progress)
    if client is None:
        models: dict = {}
        outcomes = ((i, _attempt(task, *args, **options, models=models)) for i, args in enumerate(arguments))
    else:
        logger.info(f"Submitting {n} slides to {len(client.scheduler_info()['workers'])} dask workers")
        outcomes = _gathered(client, task, arguments, options, resources)
    with bar:
        for i, (ok, value) in outcomes:
            if ok:
                yield i, value
            else:
                failures[i] = value
            bar.update()
    if failures:
        listing = "\n".join(f"  slide {i}: {type(error).__name__}: {error}" for i, error in sorted(failures.items()))
        raise RuntimeError(
            f"{len(failures)} of {n} slides failed (the others were written):\n{listing}\n"
            "Fix the cause and run the failed slides again with the same arguments; finished work is reused."
        ) from next(iter(failures.values()))


def _attempt(task: Callable, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    try:
        return True, task(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - reported with the slide it belongs to
        return False, error


def _gathered(client: Client, task: Callable, arguments: Sequence[tuple], options: dict, resources: Any) -> Iterator:
    """Submit one task per slide and yield ``(index, (ok, value))`` in completion order."""
    from distributed import as_completed

    futures = {
        client.submit(task, *args, **options, pure=False, resources=dict(resources) if resources else None): i
        for i, args in enumerate(arguments)
    }
    for future in as_completed(futures):
        try:
            outcome = True, future.result()
        except Exception as error:  # noqa: BLE001 - includes KilledWorker after repeated worker deaths
            outcome = False, error
        future.release()
        yield futures[future], outcome


def _embed_task(
    slide: SpatialData,
    store: str,
    *,
    entries: Sequence[encoders.Encoder],
    weights: Mapping[str, str],
    device: str | None,
    batch_size: int,
    num_workers: int,
    table_key: str,
    models: dict | None = None,
) -> dict[str, tuple]:
    """Embeddings and provenance of one slide per model, saved batch by batch to ``store``."""
    models = _WORKER_MODELS if models is None else models
    torch_device = settings.torch_device(device)
    results = {}
    with _worker_settings():
        for entry in entries:
            encoder = _cached(
                models,
                ("encoder", entry.name, weights.get(entry.name), str(torch_device)),
                lambda entry=entry: _load_encoder(entry, weights.get(entry.name), torch_device),
            )
            patches = spot_patches(slide, size=entry.patch_size, mpp=entry.mpp, table_key=table_key)
            results[entry.name] = _embed_slide(encoder, torch_device, patches, batch_size, num_workers, store)
    return results


def _predict_task(
    table: AnnData, model: AbundanceRegressor | str, *, key_added: str, models: dict | None = None
) -> tuple[pd.DataFrame, dict]:
    """Predictions of one slide's table and their provenance record."""
    if not isinstance(model, AbundanceRegressor):
        models = _WORKER_MODELS if models is None else models
        stamp = os.stat(model_files(model)[0]).st_mtime_ns
        model = _cached(models, ("regressor", model, stamp), lambda: AbundanceRegressor.load(model))
    predict(table, model, key_added=key_added)
    return table.obsm[key_added], provenance(table)["predictions"][key_added]


def _load_encoder(entry: encoders.Encoder, weights: str | None, device: Any) -> encoders.PatchEncoder:
    """Load ``entry``, first registering it where this process does not know it (a fresh worker)."""
    try:
        known = encoders.get(entry.name)
    except KeyError:
        known = None
    if known != entry:
        encoders.register(entry, overwrite=True)
    return encoders.load(entry.name, weights=weights, device=device)


def _cached(models: dict, key: tuple, load: Callable[[], Any]) -> Any:
    """``models[key]``, loaded once even when several threads of a worker ask at the same time."""
    with _WORKER_MODELS_LOCK:
        if key not in models:
            models[key] = load()
        return models[key]


@contextlib.contextmanager
def _worker_settings() -> Iterator[None]:
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
    _raise_mmap_threshold()
    shown, settings.progress = settings.progress, False
    try:
        with dask.config.set(scheduler="threads"):
            yield
    finally:
        settings.progress = shown


@functools.cache
def _raise_mmap_threshold() -> None:
    """Let a dask worker serve torch's batch-sized buffers from the heap instead of fresh mmaps.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that they give memory
    back to the system. Setting it also freezes glibc's mmap threshold at 128 KiB, so every
    tensor of a batch is mapped, zero-filled page by page, and unmapped again: a worker embedded
    half as many slides per minute with the weights-free encoder (``benchmarks/scale.py``). Raising
    the mmap threshold to 32 MiB, once per worker process, restores the speed and leaves the
    trimming of freed memory to dask's setting. Skipped where the threshold was set explicitly,
    where the trim setting is absent, or without glibc.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD):
        logger.debug(f"Raised this worker's malloc mmap threshold to {_MMAP_THRESHOLD} bytes.")
