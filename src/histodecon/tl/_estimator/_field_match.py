"""Do a slide's embeddings cover the patch field the model was trained on?

An embedding describes ``patch_size`` pixels at the µm/px recorded per sample by
:func:`histodecon.tl.embed`: a side in micrometres. A model trained on one field and applied to
embeddings of another (224 µm legacy-ST patches, then 123 µm Visium ones with a spot-relative
default) sees tissue at another scale and predicts worse without saying so. ``fit`` records the
training fields; ``predict`` and ``predict_many`` warn when a slide's fields fall outside them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from anndata import AnnData

from histodecon._constants import Key

#: Relative difference of patch sides (in µm) tolerated between training and prediction.
FIELD_TOLERANCE = 0.1
#: The model provenance field holding the training fields: encoder -> [smallest, largest] side in µm.
PATCH_FIELD_UM = "patch_field_um"


def embedded_fields_um(table: AnnData, names: Iterable[str]) -> dict[str, dict[str, float]]:
    """Side in µm of the patches behind each encoder's embeddings, per sample of ``table``, from their provenance.

    Keyed by the embeddings' record name (``Key.obsm.embedding(name)`` without its prefix).
    Encoders whose embeddings carry no record (embeddings made elsewhere) are left out, and so
    are samples a record names that the table no longer holds (a subset).
    """
    records = table.uns.get(Key.uns.root, {}).get(Key.uns.embeddings, {})
    present = set(table.obs[Key.obs.sample].astype(str)) if Key.obs.sample in table.obs else None
    fields = {}
    for key in map(_record_key, names):
        record = records.get(key, {})
        size, sample_mpp = record.get("patch_size"), record.get("patch_mpp")
        if size and sample_mpp:
            sides = {str(sample): float(size * mpp) for sample, mpp in sample_mpp.items()}
            fields[key] = {sample: side for sample, side in sides.items() if present is None or sample in present}
    return fields


def training_fields_um(tables: Sequence[AnnData], names: Sequence[str]) -> dict[str, list[float]]:
    """Smallest and largest patch side in µm per encoder over the training tables (recorded encoders only)."""
    sides: dict[str, list[float]] = {}
    for table in tables:
        for key, per_sample in embedded_fields_um(table, names).items():
            sides.setdefault(key, []).extend(per_sample.values())
    return {key: [round(min(values), 3), round(max(values), 3)] for key, values in sides.items() if values}


def warn_on_other_fields(table: AnnData, trained: dict[str, list[float]]) -> None:
    """Warn, naming the fix, where a sample's patches differ from every training field by more than 10%."""
    for key, per_sample in embedded_fields_um(table, trained).items():
        low, high = trained[key]
        other = {sample: side for sample, side in per_sample.items() if not _within(side, low, high)}
        if other:
            name = table.uns[Key.uns.root][Key.uns.embeddings][key].get("name", key)
            warnings.warn(
                f"The {name!r} embeddings of sample{'s' if len(other) > 1 else ''} {_sides(other)} were taken from "
                f"patches of another size than the model was trained on ({_range(low, high)} µm), so it sees the "
                f"tissue at another scale. Embed again over the training field: {_embed_call(table, name, other, low, high)}.",
                UserWarning,
                stacklevel=3,  # the user's call of predict or predict_many
            )


def _embed_call(table: AnnData, name: str, samples: Iterable[str], low: float, high: float) -> str:
    """The ``hd.tl.embed`` call whose patches cover the training field on ``samples``.

    The encoder's default field when it covers it there (as when the model was trained on it),
    else the encoder's patch size at the µm/px that spans the training field.
    """
    from histodecon.encoders import get

    record = table.uns[Key.uns.root][Key.uns.embeddings][_record_key(name)]
    try:
        entry = get(name)
    except KeyError:  # an encoder registered elsewhere: the size the slide was embedded with
        size = record["patch_size"]
    else:
        default = _default_sides(table, entry.patch_size, entry.mpp, entry.field_spots, samples)
        if default and all(_within(side, low, high) for side in default):
            return f"`hd.tl.embed(sdata, [{name!r}], overwrite=True)` (the encoder's default field)"
        size = entry.patch_size
    return f"`hd.tl.embed(sdata, [{name!r}], patch_size={size}, mpp={(low + high) / 2 / size:.4g}, overwrite=True)`"


def _default_sides(
    table: AnnData, patch_size: int, mpp: float | None, field_spots: float | None, samples: Iterable[str]
) -> list[float]:
    """Patch sides in µm an encoder's default field gives on ``samples`` (empty where that is unknown)."""
    if field_spots is None:
        return [patch_size * mpp] if mpp is not None else []
    records = table.uns.get(Key.uns.root, {}).get(Key.uns.samples, {})
    sides = []
    for sample in samples:
        record = records.get(sample, {})
        if "spot_diameter_px" not in record or "mpp" not in record:
            return []
        sides.append(field_spots * float(record["spot_diameter_px"]) * float(record["mpp"]))
    return sides


def _within(side: float, low: float, high: float) -> bool:
    return low * (1 - FIELD_TOLERANCE) <= side <= high * (1 + FIELD_TOLERANCE)


def _record_key(name: str) -> str:
    return Key.obsm.embedding(name).removeprefix(Key.obsm.embedding_prefix)


def _sides(per_sample: dict[str, float]) -> str:
    return ", ".join(f"{sample!r} ({side:.0f} µm)" for sample, side in per_sample.items())


def _range(low: float, high: float) -> str:
    return f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"
