"""Shared plumbing: finding the table of a slide, writing results the scanpy way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anndata import AnnData

from ._settings import logger

UNS_KEY = "histodecon"


def get_table(data: Any, table_key: str = "table") -> AnnData:
    """Return the AnnData of ``data``: itself if AnnData, else ``data.tables[table_key]``."""
    if isinstance(data, AnnData):
        return data
    tables = getattr(data, "tables", None)
    if tables is None:
        raise TypeError(
            f"Expected a SpatialData or AnnData, got {type(data).__name__}. "
            "Read a slide with `hd.io.read_st`, `hd.io.read_visium` or `hd.io.read_slide` first."
        )
    if table_key not in tables:
        raise KeyError(
            f"SpatialData has no table {table_key!r}; its tables are {list(tables)}. Pass `table_key=` to pick one."
        )
    return tables[table_key]


def check_overwrite(container: Mapping, key: str, where: str, overwrite: bool) -> None:
    """Refuse to replace ``container[key]`` unless ``overwrite=True``."""
    if key in container and not overwrite:
        raise KeyError(
            f"`{where}[{key!r}]` already exists. Pass `overwrite=True` to replace it, "
            "or `key_added=` to write under another name."
        )


def write_result(adata: AnnData, attr: str, key: str, value: Any, *, overwrite: bool = False) -> None:
    """Write ``value`` to ``adata.<attr>[key]`` after the overwrite check, and log it like scanpy."""
    container = getattr(adata, attr)
    check_overwrite(container, key, f"adata.{attr}", overwrite)
    container[key] = value
    logger.info(f"Adding `adata.{attr}[{key!r}]`")


def provenance(adata: AnnData) -> dict:
    """``adata.uns['histodecon']``, created on first use."""
    return adata.uns.setdefault(UNS_KEY, {})


def samples_of(adata: AnnData) -> list[str]:
    """The samples of a table, in the order of ``obs['sample']`` categories."""
    if "sample" not in adata.obs:
        raise KeyError(
            "The table has no `obs['sample']` column. Read slides with `hd.io` or set "
            "`adata.obs['sample']` to the section each spot belongs to."
        )
    return list(adata.obs["sample"].astype("category").cat.categories)


def sample_info(adata: AnnData, sample: str | None = None) -> dict:
    """Provenance of one sample: ``mpp``, ``spot_diameter_px``, ``image_key``, ``shapes_key``, ...

    ``sample=None`` is allowed when the table holds exactly one sample.
    """
    records = adata.uns.get(UNS_KEY, {}).get("samples", {})
    if sample is None:
        if len(records) != 1:
            raise ValueError(
                f"The table describes {len(records)} samples ({list(records)}); pass `sample=` to pick one."
                if records
                else "The table has no `uns['histodecon']['samples']` record (mpp, spot size). "
                "Read the slide with `hd.io` or `hd.io.from_anndata` so that its geometry is known."
            )
        (sample,) = records
    if sample not in records:
        raise KeyError(f"No sample {sample!r} in `uns['histodecon']['samples']`; known samples: {list(records)}.")
    return records[sample]
