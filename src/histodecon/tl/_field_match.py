"""Do a slide's embeddings cover the patch field the model was trained on?

An embedding describes ``patch_size`` pixels at the µm/px recorded per sample by
:func:`histodecon.tl.embed`: a side in micrometres. A model trained on one field and applied to
embeddings of another (224 µm legacy-ST patches, then 123 µm Visium ones with a spot-relative
default) sees tissue at another scale and predicts worse without saying so. ``fit`` records the
training fields; ``predict`` warns when a slide's fields fall outside them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from anndata import AnnData

from histodecon._constants import Key

#: Relative difference of patch sides (in µm) tolerated between training and prediction.
FIELD_TOLERANCE = 0.1
#: The model provenance field holding the training fields: encoder -> [smallest, largest] side in µm.
PATCH_FIELD_UM = "patch_field_um"


def embedded_fields_um(table: AnnData, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Side in µm of the patches behind each encoder's embeddings, per sample, from their provenance.

    Encoders whose embeddings carry no record (embeddings made elsewhere) are left out.
    """
    records = table.uns.get(Key.uns.root, {}).get(Key.uns.embeddings, {})
    fields = {}
    for name in names:
        record = records.get(name, {})
        size, sample_mpp = record.get("patch_size"), record.get("patch_mpp")
        if size and sample_mpp:
            fields[name] = {str(sample): float(size * mpp) for sample, mpp in sample_mpp.items()}
    return fields


def training_fields_um(tables: Sequence[AnnData], names: Sequence[str]) -> dict[str, list[float]]:
    """Smallest and largest patch side in µm per encoder over the training tables (recorded encoders only)."""
    sides: dict[str, list[float]] = {}
    for table in tables:
        for name, per_sample in embedded_fields_um(table, names).items():
            sides.setdefault(name, []).extend(per_sample.values())
    return {name: [round(min(values), 3), round(max(values), 3)] for name, values in sides.items()}


def warn_on_other_fields(table: AnnData, names: Sequence[str], trained: dict[str, list[float]]) -> None:
    """Warn, naming the fix, where a sample's patches differ from every training field by more than 10%."""
    for name, per_sample in embedded_fields_um(table, [name for name in names if name in trained]).items():
        low, high = trained[name]
        other = {
            sample: side
            for sample, side in per_sample.items()
            if not low / (1 + FIELD_TOLERANCE) <= side <= high * (1 + FIELD_TOLERANCE)
        }
        if other:
            size = table.uns[Key.uns.root][Key.uns.embeddings][name]["patch_size"]
            target = (low + high) / 2
            warnings.warn(
                f"The {name!r} embeddings of sample{'s' if len(other) > 1 else ''} {_sides(other)} were taken from patches of another size than "
                f"the model was trained on ({_range(low, high)} µm), so it sees the tissue at another scale. "
                f"Embed again over the training field: `hd.tl.embed(sdata, [{name!r}], patch_size={size}, "
                f"mpp={target / size:.4g}, overwrite=True)`.",
                UserWarning,
                stacklevel=3,
            )


def _sides(per_sample: dict[str, float]) -> str:
    return ", ".join(f"{sample!r} ({side:.0f} µm)" for sample, side in per_sample.items())


def _range(low: float, high: float) -> str:
    return f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"
