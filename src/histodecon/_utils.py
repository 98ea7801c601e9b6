"""Shared plumbing: finding the table of a slide, writing results the scanpy way, checking inputs."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scipy.spatial import cKDTree
from spatialdata import SpatialData

from ._constants import Key
from ._settings import logger

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


def get_table(data: Any, table_key: str = Key.tables.table) -> AnnData:
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


def check_overwrite(
    container: Mapping, key: str, where: str, overwrite: bool, *, can_rename: bool = True, option: str = "key_added"
) -> None:
    """Refuse to replace ``container[key]`` unless ``overwrite=True``.

    The message offers the caller's ``option`` (the parameter that names the result) to write
    under another name; ``can_rename=False`` for functions without one.
    """
    if key in container and not overwrite:
        rename = f", or `{option}=` to write under another name" if can_rename else ""
        raise KeyError(f"`{where}[{key!r}]` already exists. Pass `overwrite=True` to replace it{rename}.")


def write_result(adata: AnnData, attr: str, key: str, value: Any, *, overwrite: bool = False) -> None:
    """Write ``value`` to ``adata.<attr>[key]`` after the overwrite check, and log it like scanpy."""
    container = getattr(adata, attr)
    check_overwrite(container, key, f"adata.{attr}", overwrite)
    container[key] = value
    logger.info(f"Adding `adata.{attr}[{key!r}]`")


def provenance(adata: AnnData) -> dict:
    """``adata.uns[Key.uns.root]``, histodecon's provenance record, created on first use."""
    return adata.uns.setdefault(Key.uns.root, {})


def check_samples_named(adata: AnnData, what: str) -> None:
    """Refuse spots whose ``obs[Key.obs.sample]`` is missing: nothing says which image and scale they have.

    ``hd.io.from_spatialdata(sdata, shapes_key=...)`` leaves the spots of the shapes it did not
    adopt that way.
    """
    if Key.obs.sample not in adata.obs:
        return
    missing = adata.obs[Key.obs.sample].isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} spots (e.g. {adata.obs_names[missing][:3].tolist()}) have no "
            f"`obs[{Key.obs.sample!r}]`, so {what} cannot tell their image and scale. Adopt their shapes too "
            "(`hd.io.from_spatialdata(sdata, shapes_key=...)`), or drop them from the table."
        )


def samples_of(adata: AnnData) -> list[str]:
    """The samples of a table, in the order of ``obs[Key.obs.sample]`` categories."""
    if Key.obs.sample not in adata.obs:
        raise KeyError(
            f"The table has no `obs[{Key.obs.sample!r}]` column (its obs columns are {list(adata.obs.columns)}). Read "
            "slides with `hd.io`, adopt a SpatialData with "
            f"`hd.io.from_spatialdata(sdata)`, or set `adata.obs[{Key.obs.sample!r}]` to the section of each spot."
        )
    return list(adata.obs[Key.obs.sample].astype("category").cat.categories)


def sample_info(adata: AnnData, sample: str | None = None) -> dict:
    """The cached record of one sample: ``mpp``, ``spot_diameter_px``, ``image_key``, ``shapes_key``, ...

    ``sample=None`` is allowed when the table holds exactly one sample. The record is a cache
    written by the readers; the geometry itself lives in the SpatialData's elements (read it with
    :func:`histodecon._geometry.sample_geometry`).
    """
    records = adata.uns.get(Key.uns.root, {}).get(Key.uns.samples, {})
    where = f"uns[{Key.uns.root!r}][{Key.uns.samples!r}]"
    if sample is None:
        if len(records) != 1:
            raise ValueError(
                f"The table describes {len(records)} samples ({list(records)}); pass `sample=` to pick one."
                if records
                else f"The table has no `{where}` record (mpp, spot size). Read the slide with `hd.io` or adopt "
                "its SpatialData with `hd.io.from_spatialdata(sdata, mpp=...)`."
            )
        (sample,) = records
    if sample not in records:
        raise KeyError(
            f"No sample {sample!r} in `{where}`; known samples: {list(records)}. Read the slide with `hd.io` or "
            "adopt its SpatialData with `hd.io.from_spatialdata(sdata, mpp=...)`, which record each sample's mpp, "
            "spot size and image."
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


def check_positive(value: float, name: str, what: str = "micrometres or micrometres per pixel") -> None:
    """Refuse a length, resolution or prior (``what`` it is, for the message) that is not a positive finite number."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not (np.isfinite(value) and value > 0)
    ):
        raise ValueError(f"`{name}` must be a positive number ({what}), got {value!r}.")


def check_count(value: object, name: str, minimum: int) -> None:
    """Refuse a count (spots, cells, a seed) that is not an integer of at least ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__}; pass e.g. `{name}=100`.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")


def check_positive_int(value: object, name: str) -> int:
    """Refuse a count (batch size, epochs, workers, permutations) that is not a positive integer.

    Booleans, floats (even ``2.0``), zero and negatives are refused: a count silently rounded
    or clipped gives wrong results or unrelated errors further down.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    error = ValueError if isinstance(value, numbers.Number) else TypeError
    raise error(f"`{name}` must be a positive integer, got {value!r}; pass e.g. `{name}=32`.")


def check_unique_names(names: Sequence, what: str, fix: str) -> None:
    """Refuse repeated names (spots, genes): results keyed by name would be ambiguous.

    ``what`` names the list in the message (``"Spot names of slide 0"``), ``fix`` says what to do.
    """
    index = pd.Index(names)
    if not index.is_unique:
        repeated = list(index[index.duplicated()].unique()[:5])
        raise ValueError(f"{what} are not unique; repeated: {repeated}. {fix}")


def check_centres(centres_xy: Any, ids, what: str) -> np.ndarray:
    """Spot centres as a float ``(n, 2)`` array, refusing other shapes and missing (NaN / inf) positions."""
    centres = np.asarray(centres_xy, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] < 2:
        raise ValueError(
            f"{what} must be spots x 2 (x, y) pixel positions, got shape {centres.shape}. "
            f"Set `obsm[{Key.obsm.spatial!r}]` to the spot centres in full-resolution pixels."
        )
    centres = centres[:, :2]
    missing = ~np.isfinite(centres).all(axis=1)
    if missing.any():
        raise ValueError(
            f"{missing.sum()} spots (e.g. {list(np.asarray(ids)[missing][:3])}) have no position: NaN or "
            f"infinite {what}. Drop those spots or give their pixel centres."
        )
    return centres


def nearest_neighbour_px(centres_xy: np.ndarray) -> float:
    """The median distance from a spot to its nearest neighbour (NaN for fewer than two spots)."""
    if len(centres_xy) < 2:
        return float("nan")
    distances, _ = cKDTree(centres_xy).query(centres_xy, k=2)
    return float(np.median(distances[:, 1]))


def check_spot_spacing(centres_xy: np.ndarray, mpp: float, what: str) -> None:
    """Refuse spots packed closer than :data:`MIN_SPOT_SPACING_UM`: their coordinates are not pixels of the image.

    Coordinates scaled to [0, 1], array indices on a micrometre-resolution image or a wrong
    um/px all put neighbouring spots impossibly close together (measured by the median
    nearest-neighbour distance, so a few duplicated positions pass).
    """
    if len(centres_xy) < 2:
        return
    spacing_um = nearest_neighbour_px(centres_xy) * mpp
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
            f"{height} px image {image_name!r}. Pass the image that the spot pixel coordinates refer to, or drop "
            "the spots off the image (a crop keeps spots that only overlap it)."
        )


#: A slide: a SpatialData (image, spots, table) or just its AnnData table.
Slide = SpatialData | AnnData


def as_slide_list(slides: Any, name: str = "slides", *, anndata_refusal: str | None = None) -> list[Slide]:
    """One slide or a sequence of slides, as a non-empty list.

    Slides are SpatialData or AnnData tables. Where only a SpatialData will do (its image is
    read), ``anndata_refusal`` is the message that refuses an AnnData.
    """
    kinds = "a SpatialData" if anndata_refusal is not None else "a SpatialData, an AnnData"
    listed = [slides] if isinstance(slides, Slide) else slides
    if isinstance(listed, Sequence) and not isinstance(listed, str) and listed:
        for slide in listed:
            if anndata_refusal is not None and isinstance(slide, AnnData):
                raise TypeError(anndata_refusal)
            if not isinstance(slide, Slide):
                raise TypeError(f"Every element of `{name}` must be {kinds}, got a {type(slide).__name__}.")
        return list(listed)
    raise TypeError(f"`{name}` must be {kinds} or a non-empty list of them, got {type(slides).__name__}.")


def check_finite_matrix(values: Any, what: str, *, rows: str, fix: str, dtype: type = np.float32) -> np.ndarray:
    """``values`` as a 2-D ``dtype`` array, refusing other shapes and rows with NaN or infinite values.

    ``what`` names the matrix in the messages (``"`X`"``, ``"Target `obsm['abund']` of slide B1"``),
    ``rows`` names its rows after their count (``"of 20 rows"``, ``"in-tissue spots"``) and
    ``fix`` says what to do about them.
    """
    matrix = np.asarray(values, dtype=dtype)
    if matrix.ndim != 2:
        raise ValueError(f"{what} must be 2-D (spots x columns), got shape {matrix.shape}.")
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} has NaN or infinite values in {int(bad.sum())} {rows}. {fix}")
    return matrix


def cell_type_frame(adata: AnnData, key: str, *, missing: str) -> pd.DataFrame:
    """``obsm[key]`` as a spots x cell types DataFrame with string column names, indexed by ``obs_names``.

    A DataFrame keeps its columns (copied); an array, dense or sparse, gets columns ``"0"``,
    ``"1"``, ... Non-numeric columns are refused; ``missing`` is the :class:`KeyError` message
    when there is no ``obsm[key]`` (it names the step that writes it), followed by the keys present.
    """
    if key not in adata.obsm:
        raise KeyError(f"{missing} Its obsm keys are {list(adata.obsm)}.")
    values = adata.obsm[key]
    if isinstance(values, pd.DataFrame):
        frame = values.set_axis(values.columns.astype(str), axis=1)
    else:
        values = values.toarray() if sparse.issparse(values) else np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"`obsm[{key!r}]` must be 2-D (spots x cell types), got shape {values.shape}.")
        frame = pd.DataFrame(values, index=adata.obs_names, columns=[str(i) for i in range(values.shape[1])])
    non_numeric = [name for name, dtype in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if non_numeric:
        raise TypeError(
            f"`obsm[{key!r}]` has non-numeric columns {non_numeric}; pass a spots x cell types matrix of numbers."
        )
    return frame


def check_storable_names(names: Sequence[str], what: str, fix: str) -> None:
    """Refuse cell-type names with ``/``: zarr (``SpatialData.write``) cannot store them as column keys."""
    slashed = [name for name in map(str, names) if "/" in name]
    if slashed:
        raise ValueError(
            f"{what} {slashed[:5]} contain '/', which `SpatialData.write` (zarr) cannot store as a column name, "
            f"so the results could not be saved. {fix}"
        )
