"""Shared plumbing: finding the table of a slide, writing results the scanpy way, checking inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from anndata import AnnData
from scipy.spatial import cKDTree

from ._settings import logger

UNS_KEY = "histodecon"
#: Neighbouring spots closer than this are not physical spots (Visium HD bins, the finest, are 2 um apart).
MIN_SPOT_SPACING_UM = 1.0


def copy_data(data: Any) -> Any:
    """A copy whose tables can be written to without touching ``data``; images and shapes are shared."""
    from spatialdata import SpatialData

    if isinstance(data, AnnData):
        return data.copy()
    return SpatialData(
        images=dict(data.images),
        labels=dict(data.labels),
        points=dict(data.points),
        shapes=dict(data.shapes),
        tables={name: table.copy() for name, table in data.tables.items()},
        attrs=dict(data.attrs),
    )


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


def check_overwrite(container: Mapping, key: str, where: str, overwrite: bool, *, can_rename: bool = True) -> None:
    """Refuse to replace ``container[key]`` unless ``overwrite=True``.

    ``can_rename=False`` for functions without ``key_added=``, so the message does not offer it.
    """
    if key in container and not overwrite:
        rename = ", or `key_added=` to write under another name" if can_rename else ""
        raise KeyError(f"`{where}[{key!r}]` already exists. Pass `overwrite=True` to replace it{rename}.")


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
        raise KeyError(
            f"No sample {sample!r} in `uns['histodecon']['samples']`; known samples: {list(records)}. Read the "
            "slide with `hd.io` (or `hd.io.from_anndata`), which records each sample's mpp, spot size and image."
        )
    return records[sample]


def encoder_names(names: str | Sequence[str], argument: str) -> list[str]:
    """Encoder names as a list: ``"uni"`` -> ``["uni"]``; empty lists and duplicates refused.

    ``argument`` is the parameter the names came in (``"models"``, ``"features"``), for the messages.
    """
    listed = [names] if isinstance(names, str) else list(names)
    if not listed or not all(isinstance(name, str) for name in listed):
        raise TypeError(f"`{argument}` must be an encoder name or a non-empty list of names, got {names!r}.")
    if len(set(listed)) != len(listed):
        raise ValueError(f"`{argument}` lists an encoder twice: {listed}.")
    return listed


def check_positive(value: float, name: str) -> None:
    """Refuse a length or resolution that is not a positive finite number."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not (np.isfinite(value) and value > 0)
    ):
        raise ValueError(f"`{name}` must be a positive number (micrometres or micrometres per pixel), got {value!r}.")


def check_centres(centres_xy: Any, ids, what: str) -> np.ndarray:
    """Spot centres as a float ``(n, 2)`` array, refusing other shapes and missing (NaN / inf) positions."""
    centres = np.asarray(centres_xy, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] < 2:
        raise ValueError(
            f"{what} must be spots x 2 (x, y) pixel positions, got shape {centres.shape}. "
            "Set `obsm['spatial']` to the spot centres in full-resolution pixels."
        )
    centres = centres[:, :2]
    missing = ~np.isfinite(centres).all(axis=1)
    if missing.any():
        raise ValueError(
            f"{missing.sum()} spots (e.g. {list(np.asarray(ids)[missing][:3])}) have no position: NaN or "
            f"infinite {what}. Drop those spots or give their pixel centres."
        )
    return centres


def check_spot_spacing(centres_xy: np.ndarray, mpp: float, what: str) -> None:
    """Refuse spots packed closer than :data:`MIN_SPOT_SPACING_UM`: their coordinates are not pixels of the image.

    Coordinates scaled to [0, 1], array indices on a micrometre-resolution image or a wrong
    um/px all put neighbouring spots impossibly close together (measured by the median
    nearest-neighbour distance, so a few duplicated positions pass).
    """
    if len(centres_xy) < 2:
        return
    distances, _ = cKDTree(centres_xy).query(centres_xy, k=2)
    spacing_um = float(np.median(distances[:, 1])) * mpp
    if spacing_um < MIN_SPOT_SPACING_UM:
        raise ValueError(
            f"The spots of {what} are a median {spacing_um:.3g} um apart ({spacing_um / mpp:.3g} px at {mpp:g} um/px); "
            f"real spots are at least {MIN_SPOT_SPACING_UM:g} um apart. The spot coordinates are not full-resolution "
            "pixels of the image (array indices? scaled to [0, 1]?) or the um/px is wrong: pass pixel centres "
            "and the image's um/px."
        )


def check_spots_inside(centres_xy: np.ndarray, ids, width: int, height: int, image_name: str) -> None:
    """Refuse spot centres outside the image: the spot coordinates belong to another image or scale."""
    x, y = centres_xy[:, 0], centres_xy[:, 1]
    outside = ~((x >= 0) & (x < width) & (y >= 0) & (y < height))  # NaN (no position) counts as outside
    if outside.any():
        raise ValueError(
            f"{outside.sum()} spot centres (e.g. {list(np.asarray(ids)[outside][:3])}) lie outside the {width} x "
            f"{height} px image {image_name!r}. Pass the image that the spot pixel coordinates refer to."
        )
