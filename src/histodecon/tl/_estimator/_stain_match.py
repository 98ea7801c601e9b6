"""Were a slide's embeddings normalised to the stain reference the model's training embeddings were?

:func:`histodecon.tl.embed` records in each embedding's provenance the stain reference its
patches were normalised to (``None``: as scanned). ``fit`` records the one reference of the
training embeddings in ``model.provenance["stain_reference"]``; ``predict`` warns, naming the
fix, when a slide's embeddings were made another way: the model then sees colours it was not
trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from anndata import AnnData

from histodecon._constants import Key
from histodecon.pp._stain import STAIN_REFERENCE, describe, reference_from_record, same_reference, stain_record


def embedded_references(table: AnnData, names: Iterable[str]) -> dict[str, dict | None]:
    """The stain reference record of each encoder's embeddings (by encoder name); unrecorded embeddings left out.

    Embeddings made before references were recorded (no ``stain_reference`` field) count as not normalised.
    """
    records = table.uns.get(Key.uns.root, {}).get(Key.uns.embeddings, {})
    found = {}
    for name in names:
        record = records.get(Key.obsm.embedding(name).removeprefix(Key.obsm.embedding_prefix))
        if record is not None:
            found[name] = record.get(STAIN_REFERENCE)
    return found


def training_reference(tables: Sequence[AnnData], names: Sequence[str]) -> dict | None:
    """The one stain reference of the training embeddings of ``names``; refuses embeddings made several ways."""
    references: list[dict | None] = []
    for table in tables:
        for reference in embedded_references(table, names).values():
            if not any(same_reference(reference, seen) for seen in references):
                references.append(reference)
    if len(references) > 1:
        raise ValueError(
            f"The training embeddings were made with {len(references)} different stain normalisations "
            f"({'; '.join(describe(r) for r in references)}), so one model would learn several colour spaces. "
            "Embed every training slide the same way: `hd.tl.embed(slides, stain_reference=reference, "
            "overwrite=True)` with one `reference = hd.pp.stain_reference(slides)`, or none at all."
        )
    return stain_record(reference_from_record(references[0])) if references and references[0] is not None else None


def warn_on_other_stain(table: AnnData, names: Sequence[str], trained: dict | None) -> None:
    """Warn, naming the fix, where the slide's embeddings were normalised otherwise than the model's."""
    other = [name for name, reference in embedded_references(table, names).items()
             if not same_reference(reference, trained)]  # fmt: skip
    if not other:
        return
    fix = (
        "`hd.tl.embed(sdata, stain_reference=model, overwrite=True)`, which normalises to the model's reference"
        if trained is not None
        else "`hd.tl.embed(sdata, overwrite=True)` without `stain_reference`, as the model's training slides were"
    )
    slide = describe(embedded_references(table, other[:1])[other[0]])
    warnings.warn(
        f"The {other} embeddings of this slide were made with {slide}, the model's training embeddings with "
        f"{describe(trained)}: the model sees colours it was not trained on. Embed the slide again: {fix}.",
        UserWarning,
        stacklevel=3,  # the user's call of predict or predict_many
    )
