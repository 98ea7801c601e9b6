"""Embed and predict many slides, one task per slide, on a dask.distributed cluster or locally: the client side.

The tasks themselves, and what a worker process keeps between them, are in
:mod:`histodecon.tl._worker`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anndata import AnnData
from spatialdata import SpatialData

from histodecon import encoders
from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._settings import logger, progress_bar, progress_option, settings
from histodecon._utils import (
    as_slide_list,
    check_overwrite,
    encoder_names,
    get_table,
    provenance,
    samples_of,
    write_result,
)
from histodecon.pp import spot_patches
from histodecon.pp._stain import StainReference, as_stain_reference

from ._embedding._patch_field import ENCODER_FIELD, EncoderField, with_patch_field
from ._embedding._request import checked_tables, image_slides, weights_per_model
from ._embedding._store import pixels_sha256, spots_fingerprint
from ._embedding._writer import write_embedding
from ._estimator._applicability import judge, warn_outside
from ._estimator._calibration import check_calibrated, check_interval
from ._estimator._field_match import PATCH_FIELD_UM, warn_on_other_fields
from ._estimator._regressor import AbundanceRegressor
from ._estimator._stain_match import STAIN_REFERENCE, warn_on_other_stain
from ._worker import embed_task, predict_task

if TYPE_CHECKING:
    from distributed import Client

#: Side, in native pixels, of the crops under a few spots whose pixels name a slide's store.
FINGERPRINT_SIZE = 16


@inject_docs
@progress_option
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
    table_key: str = Key.tables.table,
    overwrite: bool = False,
    patch_size: int | EncoderField = ENCODER_FIELD,
    mpp: float | None | EncoderField = ENCODER_FIELD,
    image_key: str | None = None,
    stain_reference: StainReference | Any | None = None,
    progress: bool | None = None,
) -> None:
    """Embed many slides, one task per slide, on a dask cluster or one after another here.

    Each slide is one :mod:`dask.distributed` task that embeds it exactly like
    :func:`histodecon.tl.embed`, saving finished batches to its own zarr store
    ``<stores>/<sample>-<fingerprint>.zarr``, where the fingerprint hashes the slide's spot
    names and coordinates (a store also checks the image under its spots and refuses another slide). A worker loads each model once and reuses it for every
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
    patch_size, mpp
        The patch field of every model, as in :func:`histodecon.tl.embed` (default each
        encoder's own; ``mpp=None``: native pixels).
    {{image_key}}
    {{stain_reference}}
    progress
        Show progress bars for this call; ``None`` follows :attr:`histodecon.settings.progress`.

    Returns
    -------
    ``None``
        Writes ``obsm["X_<name>"]`` and ``uns["histodecon"]["embeddings"][name]`` to
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
    slides = image_slides(slides, "slides")
    names = encoder_names(models, "models")
    entries = [encoders.get(name) for name in names]
    for entry in entries:
        with_patch_field(entry, patch_size=patch_size, mpp=mpp)  # a bad field fails here, before any task
    weights = {name: os.fspath(path) for name, path in weights_per_model(weights, names).items()}
    stain_reference = as_stain_reference(stain_reference)
    tables = checked_tables(
        slides, names, batch_size=batch_size, num_workers=num_workers, table_key=table_key, overwrite=overwrite
    )
    if device is not None:
        settings.check_device_name(device)  # a worker checks that it has the device
    paths = [Path(stores) / f"{slide_id}.zarr" for slide_id in _slide_ids(slides, tables, table_key)]
    Path(stores).mkdir(parents=True, exist_ok=True)

    options = {
        "entries": entries,
        "weights": weights,
        "device": device,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "table_key": table_key,
        "patch_size": patch_size,
        "mpp": mpp,
        "image_key": image_key,
        "stain_reference": stain_reference,
        "models": {} if client is None else None,  # here: models released after the run; workers keep theirs
    }
    arguments = [(slide, os.fspath(path)) for slide, path in zip(slides, paths, strict=True)]
    for i, results in _run(embed_task, arguments, options, client, resources, "embed"):
        for name, (embedding, record) in results.items():
            write_embedding(tables[i], name, embedding, record | {"store": os.fspath(paths[i])}, overwrite=overwrite)


@inject_docs
@progress_option
def predict_many(
    slides: Sequence[SpatialData | AnnData],
    model: AbundanceRegressor | str | os.PathLike,
    *,
    client: Client | None = None,
    resources: Mapping[str, float] | None = None,
    table_key: str = Key.tables.table,
    key_added: str = Key.obsm.pred_abund,
    overwrite: bool = False,
    interval: float | None = None,
    progress: bool | None = None,
) -> None:
    """Predict cell-type abundances of many slides, one task per slide, like :func:`histodecon.tl.predict`.

    Only each slide's embeddings travel to the workers, never its images. The model (a fitted
    :class:`AbundanceRegressor`, or the path of a saved one, loaded and checked here before any
    task is sent) is sent once to every worker. Prediction is cheap: a client
    pays off when the slides' tables are large or the predictions run next to
    :func:`embed_many` on the same cluster.

    Parameters
    ----------
    slides
        SpatialData or AnnData slides holding the embeddings the model was trained on.
    model
        A fitted :class:`AbundanceRegressor`, the path given to
        :meth:`AbundanceRegressor.save`, or a Hugging Face Hub repository id.
    client
        A :class:`distributed.Client`; ``None`` predicts one slide after another here.
    resources
        Dask worker resources each task needs, e.g. ``{"GPU": 1}``. Ignored without a client.
    {{table_key}}
    {{key_added}}
    {{overwrite}}
    interval
        Coverage level in (0, 1) of per-spot prediction intervals, as in :func:`histodecon.tl.predict`.
    progress
        Show progress bars for this call; ``None`` follows :attr:`histodecon.settings.progress`.

    Returns
    -------
    ``None``
        Writes ``obsm[key_added]`` (with ``interval``, its bounds ``obsm[f"{key_added}_lower"]``
        and ``obsm[f"{key_added}_upper"]``), ``uns["histodecon"]["predictions"][key_added]`` and
        ``uns["histodecon"]["applicability"]`` (judged and warned here, on the client) to every
        slide's table, as :func:`histodecon.tl.predict` does.

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
    interval = check_interval(interval)
    if isinstance(model, str | os.PathLike):
        model = AbundanceRegressor.load(model)  # loaded and checked once, here, before any task is sent
    if not isinstance(model, AbundanceRegressor):
        raise TypeError(
            f"`model` must be an AbundanceRegressor or the path of a saved one, got {type(model).__name__}."
        )
    model.check_fitted()
    if interval is not None:
        check_calibrated(model.calibration)
    tables = [get_table(slide, table_key) for slide in slides]
    written = (key_added, *(Key.obsm.interval_bounds(key_added) if interval is not None else ()))
    for table in tables:
        for key in written:
            check_overwrite(table.obsm, key, "adata.obsm", overwrite)
    for table in tables:  # here: warnings on the workers would not reach the user
        warn_on_other_fields(table, model.provenance.get(PATCH_FIELD_UM, {}))
        warn_on_other_stain(table, model.feature_keys, model.provenance.get(STAIN_REFERENCE))
    applicability = [judge(table, model.provenance, model.feature_keys, model.feature_dims) for table in tables]
    for verdicts in applicability:
        warn_outside(verdicts)
    shipped = model if client is None else client.scatter(model, broadcast=True, hash=False)
    arguments = [(_embeddings_only(table, model.feature_keys), shipped) for table in tables]
    options = {"key_added": key_added, "interval": interval}
    for i, (frames, record) in _run(predict_task, arguments, options, client, resources, "predict"):
        for key, frame in frames.items():
            write_result(tables[i], "obsm", key, frame, overwrite=overwrite)
        provenance(tables[i]).setdefault(Key.uns.predictions, {})[key_added] = record
        provenance(tables[i]).setdefault(Key.uns.applicability, {}).update(applicability[i])


def _slide_ids(slides: Sequence[SpatialData], tables: Sequence[AnnData], table_key: str) -> list[str]:
    """A file-name-safe name per slide: its samples, a fingerprint of its spots and one of the pixels under them.

    The fingerprints keep apart slides whose samples share a name (legacy ST ids repeat on
    every section, and so do sample names across studies): another slide gets a store of its
    own in the same folder, the cache of :func:`embed_many`.
    """
    ids = [
        "+".join(re.sub(r"[^\w.-]", "_", str(sample)) for sample in samples_of(table))
        + f"-{spots_fingerprint(table)}"
        + f"-{pixels_sha256(spot_patches(slide, size=FINGERPRINT_SIZE, table_key=table_key))[:8]}"
        for slide, table in zip(slides, tables, strict=True)
    ]
    repeated = sorted({slide_id for slide_id in ids if ids.count(slide_id) > 1})
    if repeated:
        raise ValueError(
            f"Several slides have the same samples, spots and pixels under them ({repeated}), so they would share a "
            "store. Drop the duplicates from `slides`."
        )
    return ids


def _embeddings_only(table: AnnData, features: Sequence[str] | None) -> AnnData:
    """What ``predict`` reads of ``table``, and nothing more, to ship to a worker.

    The spot names, the embeddings (those of ``features`` if known), the samples and in-tissue
    flags (per-slide feature scaling), the spot centres and the samples' geometry record
    (neighbourhood inputs).
    """
    keys = [key for key in table.obsm if key.startswith(Key.obsm.embedding_prefix)]
    if features is not None:
        keys = [Key.obsm.embedding(name) for name in features if Key.obsm.embedding(name) in table.obsm]
    if Key.obsm.spatial in table.obsm:
        keys.append(Key.obsm.spatial)
    columns = [column for column in (Key.obs.sample, Key.obs.in_tissue) if column in table.obs]
    samples = table.uns.get(Key.uns.root, {}).get(Key.uns.samples)
    uns = {Key.uns.root: {Key.uns.samples: samples}} if samples is not None else {}
    return AnnData(obs=table.obs[columns].copy(), obsm={key: table.obsm[key] for key in keys}, uns=uns)


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
    bar = progress_bar(total=n, desc=f"{what} slides", unit="slide")
    if client is None:
        outcomes = ((i, _attempt(task, *args, **options)) for i, args in enumerate(arguments))
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
