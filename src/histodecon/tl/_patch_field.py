"""The patch field of an embedding: ``patch_size`` pixels at ``mpp`` micrometres per pixel, per call.

Every encoder's registry entry names the field it was trained on; :func:`histodecon.tl.embed`
may choose another for one call (the paper cuts 224 px at the slide's native resolution).
The choice travels with the loaded encoder, so the store identity and the provenance record
name the field that was read.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Literal

from histodecon._utils import check_positive, check_positive_int
from histodecon.encoders import Encoder, PatchEncoder

#: Default of ``patch_size=`` and ``mpp=``: the encoder's own registry entry.
ENCODER_FIELD = "encoder"

EncoderField = Literal["encoder"]


def with_patch_field(
    entry: Encoder, *, patch_size: int | EncoderField = ENCODER_FIELD, mpp: float | None | EncoderField = ENCODER_FIELD
) -> Encoder:
    """``entry`` with ``patch_size`` and ``mpp`` replaced where they are not :data:`ENCODER_FIELD`.

    ``mpp=None`` reads native pixels of the slide. Bad values raise before anything is read.
    """
    changes: dict = {}
    if not (isinstance(patch_size, str) and patch_size == ENCODER_FIELD):
        changes["patch_size"] = check_positive_int(patch_size, "patch_size")
    if not (isinstance(mpp, str) and mpp == ENCODER_FIELD):
        if mpp is not None:
            check_positive(mpp, "mpp")
            mpp = float(mpp)
        changes["mpp"] = mpp
    return dataclasses.replace(entry, **changes) if changes else entry


def field_encoder(encoder: PatchEncoder, entry: Encoder) -> PatchEncoder:
    """``encoder`` reading the field of ``entry``, sharing its module (the loaded encoder is left as it is)."""
    if (entry.patch_size, entry.mpp) == (encoder.entry.patch_size, encoder.entry.mpp):
        return encoder
    chosen = copy.copy(encoder)
    chosen.entry = entry
    chosen.provenance = encoder.provenance | {"patch_size": entry.patch_size, "mpp": entry.mpp}
    return chosen
