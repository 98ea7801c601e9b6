"""Embed the patch of every spot with one or more encoders, streaming and optionally resumable."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from spatialdata import SpatialData

from histodecon import encoders
from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._settings import progress_option, settings
from histodecon._utils import encoder_names
from histodecon.pp._stain import StainReference, as_stain_reference

from ._embedding._patch_field import (
    ENCODER_FIELD,
    EncoderField,
    field_encoder,
    field_key,
    field_patches,
    with_patch_field,
)
from ._embedding._request import checked_tables, image_slides, weights_per_model
from ._embedding._slide import embed_slide
from ._embedding._slide_record import slide_record
from ._embedding._writer import write_embedding


@inject_docs
@progress_option
def embed(
    data: SpatialData | Sequence[SpatialData],
    models: str | Sequence[str] = ("handcrafted",),
    *,
    batch_size: int = 32,
    device: str | None = None,
    num_workers: int = 1,
    weights: Mapping[str, str | os.PathLike] | None = None,
    table_key: str = Key.tables.table,
    overwrite: bool = False,
    store: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    patch_size: int | EncoderField = ENCODER_FIELD,
    mpp: float | None | EncoderField = ENCODER_FIELD,
    image_key: str | None = None,
    stain_reference: StainReference | Any | None = None,
    progress: bool | None = None,
) -> None:
    """Embed the image patch of every spot with each encoder in ``models``.

    For each model, the patches its registry entry asks for (``patch_size`` pixels at
    ``mpp`` micrometres per pixel, or a side of ``field_spots`` spot diameters, see
    :func:`histodecon.encoders.get`; ``patch_size=`` and ``mpp=`` choose another field for
    this call) are read lazily
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
        as an uninterrupted run. A store made for other spots, another model, other
        weights or another patch field is refused. With a list of slides, pass one path per slide.
    patch_size
        Side in pixels of the patch cut around each spot, for every model of the call;
        ``"encoder"`` (default) takes each encoder's own ``patch_size``. Patches are resized
        to the encoder's ``input_size``.
    mpp
        Micrometres per pixel of the patches, for every model of the call; ``None`` cuts
        ``patch_size`` pixels at the slide's native resolution (the paper's field: 224 px of
        a her2st section at about 0.73 um/px cover about 164 um); ``"encoder"`` (default)
        takes each encoder's own field (0.5 um/px for the foundation models: 112 um at 224 px;
        2.24 spot diameters for ``handcrafted``: 224 um on 100 um legacy ST spots, 123 um on
        55 um Visium spots). A number or ``None`` here replaces an encoder's ``field_spots``.
        See :doc:`/large_slides` for the field of the weights-free encoder.
    {{image_key}}
    {{stain_reference}}
    progress
        Show progress bars for this call; ``None`` follows :attr:`histodecon.settings.progress`.

    Returns
    -------
    ``None``
        Writes, for each model ``name``, ``obsm["X_<name>"]`` (float32, spots x
        dim, in table order) and its provenance ``uns["histodecon"]["embeddings"][name]``
        (model, dim, weights file and sha256, patch size, input size, mpp (``None``: native
        pixels), ``field_spots``, ``patch_mpp`` (the um/px read, per sample), batch size,
        device, autocast, package versions, date, ``stain_reference`` (method and arrays as plain
        lists; ``None``: not normalised), ``cost``: patches per second and peak memory, and
        ``samples``: each sample's native µm/px and squidpy's H and E stain vectors, estimated on a
        bounded sample of small in-tissue patches, which :func:`predict` compares with the training
        slides').

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=50, seed=0)
    >>> hd.tl.embed(sdata, models=["handcrafted"])
    >>> sdata.tables["table"].obsm["X_handcrafted"].shape
    (50, 51)

    The paper's field, 224 px at the slide's own resolution:

    >>> hd.tl.embed(sdata, models=["handcrafted"], patch_size=224, mpp=None, overwrite=True)
    >>> sdata.tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]["mpp"] is None
    True

    By default ``handcrafted`` reads 2.24 spot diameters (the synthetic spots are 55 um wide):

    >>> hd.tl.embed(sdata, models=["handcrafted"], overwrite=True)
    >>> sdata.tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]["patch_mpp"]
    {'synthetic': 1.1}

    Normalised to a stain reference fitted over training slides (see :doc:`/stain`):

    >>> reference = hd.pp.stain_reference([sdata])
    >>> hd.tl.embed(sdata, stain_reference=reference, overwrite=True)
    >>> sdata.tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]["stain_reference"]["method"]
    'macenko'
    """
    slides = image_slides(data, "data")
    names = encoder_names(models, "models")
    entries = [with_patch_field(encoders.get(name), patch_size=patch_size, mpp=mpp) for name in names]
    weights = weights_per_model(weights, names)
    stores = _stores_per_slide(store, len(slides))
    stain_reference = as_stain_reference(stain_reference)
    tables = checked_tables(
        slides, names, batch_size=batch_size, num_workers=num_workers, table_key=table_key, overwrite=overwrite
    )
    patches = [
        field_patches(slide, entries, table_key=table_key, image_key=image_key, stain_reference=stain_reference)
        for slide in slides
    ]

    device = settings.torch_device(device)
    results: dict[tuple[int, str], tuple[np.ndarray, dict]] = {}
    for name, entry in zip(names, entries, strict=True):
        encoder = field_encoder(encoders.load(name, weights=weights.get(name), device=device), entry)
        for i, slide_patches in enumerate(patches):
            spots = slide_patches[field_key(entry)]
            results[i, name] = embed_slide(
                encoder,
                spots,
                table=tables[i],
                device=device,
                batch_size=batch_size,
                num_workers=num_workers,
                store=stores[i],
            )
        del encoder

    images = [slide_record(slide, table_key, image_key=image_key, stain_reference=stain_reference) for slide in slides]
    for i, table in enumerate(tables):
        for name in names:
            embedding, record = results[i, name]
            write_embedding(table, name, embedding, record | {"samples": images[i]}, overwrite=overwrite)


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
    resolved = [os.path.abspath(path) for path in stores]
    shared = sorted({path for path in resolved if resolved.count(path) > 1})
    if shared:
        raise ValueError(f"`store` gives several slides the same path {shared}; pass one path per slide.")
    return stores
