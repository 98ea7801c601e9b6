"""Reader for 10x Genomics Xenium with its registered H&E, through spatialdata-io."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import spatialdata_io
from scipy import sparse
from scipy.spatial import cKDTree
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._geometry import affine_between, table_region_keys
from histodecon._settings import logger
from histodecon._utils import check_positive, get_table
from histodecon.io._build import build_sdata
from histodecon.io._grid import GRIDS, default_spacing, grid_centres
from histodecon.io._image import check_file, read_image
from histodecon.io._slide import GRID, GRID_SPACING_UM, MPP_SOURCE

SPECS, HE_SUFFIX, ALIGNMENT_SUFFIX = "experiment.xenium", "he_image.ome.tif", "alignment.csv"
SPOTS = ("cells", "grid")
#: Fields of the per-sample provenance record written here.
SPOTS_FIELD, ALIGNMENT_FIELD, MORPHOLOGY_MPP, N_CELLS = "spots", "alignment", "morphology_mpp", "n_cells"


def _he_paths(path: Path, he_image: str | Path | None, alignment: str | Path | None) -> tuple[Path, Path]:
    """The H&E image (given, else the one ``*he_image.ome.tif`` of ``path``) and its alignment CSV."""
    if he_image is None:
        found = sorted(path.glob(f"*{HE_SUFFIX}"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"{'No' if not found else 'Several'} `*{HE_SUFFIX}` in {str(path)!r}"
                f"{'' if not found else ': ' + str([f.name for f in found])}. Pass the registered H&E as `he_image=`."
            )
    # `path / given` is `given` itself when that is absolute; the glob's match already starts with `path`.
    he_image = check_file(found[0] if he_image is None else path / he_image, "Xenium H&E image")
    if alignment is None:
        alignment = he_image.with_name(he_image.name.removesuffix(".ome.tif") + ALIGNMENT_SUFFIX)
        if not alignment.is_file():
            raise FileNotFoundError(
                f"No alignment file {alignment.name!r} next to the H&E {he_image.name!r}. Pass the 3 x 3 affine "
                "from H&E pixels to morphology pixels (Xenium Explorer's `*_he_imagealignment.csv`) as `alignment=`."
            )
        return he_image, alignment
    return he_image, check_file(path / alignment, "H&E alignment file")


def _grid_spots(centres, counts, width, height, spot_px, spacing_px, grid):
    """Grid spots holding at least one cell: their centres, array columns / rows, counts and cell numbers."""
    spots, cols, rows = grid_centres(width, height, spacing_px, grid)
    distance, nearest = cKDTree(spots).query(centres, distance_upper_bound=spot_px / 2)
    inside = np.isfinite(distance)
    member = sparse.csr_matrix(
        (np.ones(inside.sum()), (nearest[inside], np.flatnonzero(inside))), shape=(len(spots), len(centres))
    )
    n_cells = np.asarray(member.sum(axis=1)).ravel()
    kept = n_cells > 0
    return spots[kept], cols[kept], rows[kept], sparse.csr_matrix(member[kept] @ counts), n_cells[kept]


def read_xenium(
    path: str | Path,
    *,
    spots: Literal["cells", "grid"] = "cells",
    he_image: str | Path | None = None,
    alignment: str | Path | None = None,
    sample: str | None = None,
    spot_diameter_um: float | None = None,
    grid: Literal["square", "hex"] = "hex",
    spacing_um: float | None = None,
) -> SpatialData:
    """Read a Xenium output folder and its registered H&E into the histodecon layout.

    Cells (counts, centroids and areas) are read by :func:`spatialdata_io.xenium` and the
    H&E's registration by :func:`spatialdata_io.xenium_aligned_image`: its alignment file is
    the 3 x 3 affine from H&E pixels to morphology pixels, the cells' micrometres reach
    morphology pixels through ``pixel_size`` of ``experiment.xenium``, so the cells are placed
    on the H&E through both, and the H&E's µm per pixel is ``pixel_size`` times the affine's
    scale. The H&E pixels are read lazily (TIFF tiles, pyramid levels kept).

    With ``spots="cells"`` each cell on the H&E is a spot, of diameter ``spot_diameter_um``
    (default the median diameter of a disc of the cells' area); cells off the H&E are left out.
    With ``spots="grid"``, pseudo-spots of ``spot_diameter_um`` (default 55) on a hexagonal
    (Visium's layout) or square grid ``spacing_um`` apart cover the H&E; each spot's counts are
    the sum over the cells whose centroid lies in it, and spots without cells are left out.

    Parameters
    ----------
    path
        Xenium output folder (``experiment.xenium``, ``cells.parquet``, ``cells.zarr.zip``,
        ``cell_feature_matrix.h5``).
    spots
        ``"cells"`` or ``"grid"``.
    he_image
        The registered H&E, absolute or relative to ``path``; default the one ``*he_image.ome.tif`` of ``path``.
    alignment
        Its alignment CSV; default ``*he_imagealignment.csv`` next to the image.
    sample
        Sample name; default the folder name.
    spot_diameter_um
        Spot diameter; see above for the defaults.
    grid
        Layout of the grid spots: ``"hex"`` (Visium's) or ``"square"``.
    spacing_um
        Centre-to-centre distance of grid spots; default Visium's pitch on a hexagonal grid
        (``spot_diameter_um * 100 / 55``), touching spots on a square one.

    Returns
    -------
    :class:`~spatialdata.SpatialData`
        SpatialData with ``images[f"{sample}_image"]`` (the H&E), ``shapes[f"{sample}_spots"]`` and
        ``tables["table"]`` (counts; the cells' metrics, or ``obs['array_col']``, ``obs['array_row']``
        and ``obs['n_cells']`` of grid spots); ``uns['histodecon']['samples'][sample]`` records the
        alignment file and the spots.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.io.read_xenium("xenium_outs", spots="grid")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"The Xenium folder {str(path)!r} does not exist. Pass the Xenium output folder.")
    if spots not in SPOTS:
        raise ValueError(f"`spots` must be one of {SPOTS}, got {spots!r}.")
    if grid not in GRIDS:
        raise ValueError(f"`grid` must be one of {GRIDS}, got {grid!r}.")
    for value, name in ((spot_diameter_um, "spot_diameter_um"), (spacing_um, "spacing_um")):
        if value is not None:
            check_positive(value, name)
    pixel_size = json.loads(check_file(path / SPECS, "Xenium specification").read_text())["pixel_size"]
    he_path, alignment_path = _he_paths(path, he_image, alignment)
    sample = sample or path.name

    cells = spatialdata_io.xenium(
        path,
        cells_boundaries=False,
        nucleus_boundaries=False,
        cells_as_circles=True,
        cells_labels=False,
        nucleus_labels=False,
        transcripts=False,
        morphology_mip=False,
        morphology_focus=False,
        aligned_images=False,
    )
    he = spatialdata_io.xenium_aligned_image(he_path, alignment_path)
    (circles_key,) = cells.shapes
    circles, adata = cells.shapes[circles_key], get_table(cells)
    to_he = affine_between(circles, he)  # cells' µm -> morphology pixels (pixel_size) -> H&E pixels (alignment)
    mpp = 1.0 / float(np.sqrt(abs(np.linalg.det(to_he[:2, :2]))))  # H&E px per µm is the affine's scale
    _, region_key, instance_key = table_region_keys(adata)
    points = circles.geometry.loc[adata.obs[instance_key]]
    centres = (np.column_stack([points.x, points.y, np.ones(len(points))]) @ to_he.T)[:, :2]

    levels = read_image(he_path)
    height, width = levels[0].shape[1:]
    on_image = (centres[:, 0] >= 0) & (centres[:, 0] < width) & (centres[:, 1] >= 0) & (centres[:, 1] < height)
    if not on_image.any():
        raise ValueError(
            f"No cell of {str(path)!r} lies on the H&E {he_path.name!r} through {alignment_path.name!r}. Pass the "
            "alignment of this H&E to this Xenium run."
        )
    record = {
        MPP_SOURCE: "xenium-alignment",
        ALIGNMENT_FIELD: alignment_path.name,
        SPOTS_FIELD: spots,
        MORPHOLOGY_MPP: float(pixel_size),
    }
    if spots == "cells":
        if spot_diameter_um is None:
            spot_diameter_um = 2 * float(np.median(circles["radius"]))  # the circles are in µm
        keep = np.flatnonzero(on_image)
        if len(keep) < len(centres):
            logger.info(f"Left out {len(centres) - len(keep)} of {len(centres)} cells lying off the H&E.")
        obs = adata.obs.drop(columns=[region_key]).iloc[keep]
        sdata = build_sdata(
            levels,
            centres[keep],
            sample=sample,
            mpp=mpp,
            spot_diameter_px=spot_diameter_um / mpp,
            spot_ids=adata.obs_names[keep],
            X=sparse.csr_matrix(adata.X)[keep],
            var_names=adata.var_names,
            obs=obs,
        )
    else:
        spot_diameter_um = 55.0 if spot_diameter_um is None else spot_diameter_um
        spacing_um = default_spacing(grid, spot_diameter_um) if spacing_um is None else spacing_um
        spot_centres, cols, rows, counts, n_cells = _grid_spots(
            centres, sparse.csr_matrix(adata.X), width, height, spot_diameter_um / mpp, spacing_um / mpp, grid
        )
        if not len(spot_centres):
            raise ValueError(
                f"No {grid} grid spot of {spot_diameter_um:g} µm holds a cell of {str(path)!r}; lower `spacing_um=` "
                "or raise `spot_diameter_um=`."
            )
        ids = pd.Index([f"{c}x{r}" for c, r in zip(cols, rows, strict=True)])
        obs = pd.DataFrame({Key.obs.array_col: cols, Key.obs.array_row: rows, N_CELLS: n_cells}, index=ids)
        sdata = build_sdata(
            levels,
            spot_centres,
            sample=sample,
            mpp=mpp,
            spot_diameter_px=spot_diameter_um / mpp,
            spot_ids=ids,
            X=counts,
            var_names=adata.var_names,
            obs=obs,
        )
        record.update({GRID: grid, GRID_SPACING_UM: float(spacing_um)})
    table = get_table(sdata)
    table.var = adata.var.copy()
    table.uns[Key.uns.root][Key.uns.samples][sample].update(record | {"spot_diameter_um": float(spot_diameter_um)})
    return sdata
