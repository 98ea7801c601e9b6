"""Checks of an embedding request shared by :func:`histodecon.tl.embed` and :func:`histodecon.tl.embed_many`.

Everything is checked before a model is loaded, so that bad input fails at once and leaves
the slides unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from anndata import AnnData
from spatialdata import SpatialData

from histodecon._utils import as_slide_list, check_positive_int, check_unique_names, get_table

from ._writer import check_embedding_absent

#: Why an AnnData alone cannot be embedded.
IMAGE_NEEDED = (
    "hd.tl.embed reads image patches, so it needs the SpatialData holding the slide image, not an AnnData "
    "table. Read the slide with `hd.io` (or convert a scanpy/squidpy AnnData with `uns['spatial']` by "
    "`hd.io.from_anndata`)."
)


def image_slides(data: Any, name: str) -> list[SpatialData]:
    """One slide or a list of slides, as a non-empty list of SpatialData (their images are read)."""
    return as_slide_list(data, name, anndata_refusal=IMAGE_NEEDED)


def weights_per_model(weights: Mapping | None, names: list[str]) -> Mapping:
    """Check that ``weights`` maps only requested model names to paths."""
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"`weights` must map model names to files, e.g. {{{names[0]!r}: '/path/to/weights'}}, "
            f"got {type(weights).__name__}."
        )
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"`weights` names {unknown}, which are not in `models` {names}.")
    return weights


def checked_tables(
    slides: Sequence[SpatialData],
    names: list[str],
    *,
    batch_size: int,
    num_workers: int,
    table_key: str,
    overwrite: bool,
) -> list[AnnData]:
    """The slides' tables, after checking the loop options and every slide, before anything is written.

    Refused: counts that are not positive integers, a slide (or table) listed twice, a table
    without spots or with repeated spot names, and results that would be replaced without
    ``overwrite``.
    """
    check_positive_int(batch_size, "batch_size")
    check_positive_int(num_workers, "num_workers")
    tables = [get_table(slide, table_key) for slide in slides]
    for kind, items in (("slide", slides), ("table", tables)):
        first: dict[int, int] = {}
        for i, item in enumerate(items):
            if id(item) in first:
                raise ValueError(
                    f"The same {kind} is listed twice in the slides (positions {first[id(item)]} and {i}); "
                    "each slide is embedded once: drop the repeat."
                )
            first[id(item)] = i
    for i, table in enumerate(tables):
        where = f"slide {i}" if len(tables) > 1 else "the slide"
        if table.n_obs == 0:
            raise ValueError(f"The table of {where} has no spots to embed; drop it from the slides.")
        check_unique_names(
            table.obs_names,
            f"The spot names (`obs_names`) of {where}",
            "Embeddings are stored and resumed by spot: make them unique with `adata.obs_names_make_unique()`.",
        )
        for name in names:
            check_embedding_absent(table, name, overwrite=overwrite)
    return tables
