"""The patch field of an embedding: ``patch_size`` pixels at ``mpp`` micrometres per pixel, per call.

Every encoder's registry entry names the field it was trained on, either a fixed ``mpp`` or a
side of ``field_spots`` spot diameters (then each sample has its own um/px);
:func:`histodecon.tl.embed` may choose another for one call (the paper cuts 224 px at the
slide's native resolution).
The choice travels with the loaded encoder, so the store identity and the provenance record
name the field that was read.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Literal

from spatialdata import SpatialData

from histodecon._geometry import sample_geometries
from histodecon._utils import check_positive, check_positive_int
from histodecon.encoders import Encoder, PatchEncoder
from histodecon.pp import SpotPatches, spot_patches
from histodecon.pp._stain import StainReference

#: Default of ``patch_size=`` and ``mpp=``: the encoder's own registry entry.
ENCODER_FIELD = "encoder"

EncoderField = Literal["encoder"]


def with_patch_field(
    entry: Encoder, *, patch_size: int | EncoderField = ENCODER_FIELD, mpp: float | None | EncoderField = ENCODER_FIELD
) -> Encoder:
    """``entry`` with ``patch_size`` and ``mpp`` replaced where they are not :data:`ENCODER_FIELD`.

    ``mpp=None`` reads native pixels of the slide. A chosen ``mpp`` switches the entry's
    ``field_spots`` off; a chosen ``patch_size`` alone keeps it (the same field in more or
    fewer pixels). Bad values raise before anything is read.
    """
    changes: dict = {}
    if not (isinstance(patch_size, str) and patch_size == ENCODER_FIELD):
        changes["patch_size"] = check_positive_int(patch_size, "patch_size")
    if not (isinstance(mpp, str) and mpp == ENCODER_FIELD):
        if mpp is not None:
            check_positive(mpp, "mpp")
            mpp = float(mpp)
        changes |= {"mpp": mpp, "field_spots": None}
    return dataclasses.replace(entry, **changes) if changes else entry


def field_encoder(encoder: PatchEncoder, entry: Encoder) -> PatchEncoder:
    """``encoder`` reading the field of ``entry``, sharing its module (the loaded encoder is left as it is)."""
    field = (entry.patch_size, entry.mpp, entry.field_spots)
    if field == (encoder.entry.patch_size, encoder.entry.mpp, encoder.entry.field_spots):
        return encoder
    chosen = copy.copy(encoder)
    chosen.entry = entry
    chosen.provenance = encoder.provenance | dict(zip(("patch_size", "mpp", "field_spots"), field, strict=True))
    return chosen


def patch_mpp(
    entry: Encoder, sdata: SpatialData, *, table_key: str, image_key: str | None = None
) -> float | None | dict[str, float]:
    """The um/px at which ``entry`` reads ``sdata``: its ``mpp``, or one per sample from ``field_spots``.

    With ``field_spots``, sample ``s`` is read at ``field_spots * spot diameter (um) / patch_size``,
    the spot diameter coming from the sample's geometry (:mod:`histodecon._geometry`).
    """
    if entry.field_spots is None:
        return entry.mpp
    geometries = sample_geometries(sdata, table_key=table_key, image_key=image_key)
    return {
        sample: entry.field_spots * geometry.spot_diameter_px * geometry.mpp / entry.patch_size
        for sample, geometry in geometries.items()
    }


def field_key(entry: Encoder) -> tuple:
    """What decides the patches an entry reads: entries sharing it share one reader per slide."""
    return entry.patch_size, entry.mpp, entry.field_spots


def field_patches(
    sdata: SpatialData,
    entries: list[Encoder],
    *,
    table_key: str,
    image_key: str | None = None,
    stain_reference: StainReference | None = None,
) -> dict[tuple, SpotPatches]:
    """One patch reader per distinct field of ``entries`` (by :func:`field_key`), built once each.

    ``image_key`` chooses the image; ``stain_reference`` normalises the patches read (see
    :func:`histodecon.pp.spot_patches`).
    """
    distinct = {field_key(entry): entry for entry in entries}
    return {
        key: spot_patches(
            sdata,
            size=entry.patch_size,
            mpp=patch_mpp(entry, sdata, table_key=table_key, image_key=image_key),
            table_key=table_key,
            image_key=image_key,
            stain_reference=stain_reference,
        )
        for key, entry in distinct.items()
    }
