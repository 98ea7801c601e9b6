"""Reader for the legacy Spatial Transcriptomics layout (her2st, STNet): count TSV, spot file, JPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree
from spatialdata import SpatialData

from histodecon._settings import logger
from histodecon._tissue import MAX_GLASS_FRACTION, square_fractions, tissue_labels, warn_mismatch
from histodecon._utils import check_centres, check_positive, check_spots_inside
from histodecon.io._build import build_sdata
from histodecon.io._image import check_file, read_image


def _spot_table(path: Path) -> pd.DataFrame:
    """Spot ids (index) and full-resolution pixel centres ``pixel_x``, ``pixel_y`` of the selected spots.

    Accepts the her2st spot file (``x y new_x new_y pixel_x pixel_y selected``: ids from the
    array coordinates ``x``, ``y``) and the STNet one (ids in the first column, pixel centres
    in ``X``, ``Y``, no ``selected`` column).
    """
    table = pd.read_csv(path, sep=None, engine="python")
    if {"pixel_x", "pixel_y"} <= set(table.columns):
        if not {"x", "y"} <= set(table.columns):
            raise ValueError(f"Spot file {path.name!r} has pixel_x/pixel_y but no x/y array coordinates for the ids.")
        ids = table["x"].astype(int).astype(str) + "x" + table["y"].astype(int).astype(str)
        spots = pd.DataFrame(
            {"pixel_x": table["pixel_x"], "pixel_y": table["pixel_y"], "array_x": table["x"], "array_y": table["y"]}
        )
    elif {"X", "Y"} <= set(table.columns):
        ids = table.iloc[:, 0].astype(str)
        spots = pd.DataFrame({"pixel_x": table["X"], "pixel_y": table["Y"]})
    else:
        raise ValueError(
            f"Spot file {path.name!r} has columns {list(table.columns)}; expected the her2st layout "
            "(x, y, pixel_x, pixel_y[, selected]) or the STNet one (spot id, X, Y)."
        )
    if "selected" in table.columns:
        spots = spots[table["selected"].to_numpy() == 1]
        ids = ids[table["selected"].to_numpy() == 1]
    return spots.set_axis(pd.Index(ids.to_numpy(), name=None))


def estimate_mpp(centres_xy: np.ndarray, spot_pitch_um: float) -> float:
    """Micrometres per pixel from the median nearest-neighbour distance of spot centres (the grid pitch)."""
    if len(centres_xy) < 2:
        raise ValueError("Estimating mpp needs at least two spots; pass `mpp=` explicitly.")
    distances, _ = cKDTree(centres_xy).query(centres_xy, k=2)
    return spot_pitch_um / float(np.median(distances[:, 1]))


def _check_unique_ids(ids: pd.Index, file_name: str) -> None:
    """Refuse a file that names a spot twice: its rows could not be matched to one spot each."""
    repeated = ids[ids.duplicated()].unique()
    if len(repeated):
        raise ValueError(
            f"{file_name!r} repeats {len(repeated)} spot id(s), e.g. {list(repeated[:3])}: every spot needs one row. "
            "Remove or merge the repeated rows (or pass the file of a single section)."
        )


def _join(spots: pd.DataFrame, counts: pd.DataFrame, spots_name: str, counts_name: str) -> pd.Index:
    """Spot ids present in both files, in spot-file order; the unmatched ones are logged."""
    shared = spots.index[spots.index.isin(counts.index)]
    if len(shared) == 0:
        raise ValueError(
            f"No spot id of {spots_name!r} (e.g. {list(spots.index[:3])}) matches a row of {counts_name!r} "
            f"(e.g. {list(counts.index[:3])}). Pass the spot file and count file of the same section."
        )
    if len(shared) < len(spots):
        logger.warning(f"Dropping {len(spots) - len(shared)} selected spots without a row in {counts_name!r}.")
    if len(shared) < len(counts):
        logger.warning(f"Dropping {len(counts) - len(shared)} count rows without a selected spot in {spots_name!r}.")
    return shared


def read_st(
    counts: str | Path,
    spots: str | Path,
    image: str | Path,
    *,
    sample: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float = 100.0,
    spot_pitch_um: float = 200.0,
) -> SpatialData:
    """Read one section in the legacy Spatial Transcriptomics layout (her2st, STNet).

    Spots are named ``"{x}x{y}"`` by their array coordinates, as the rows of the count file.
    Only spots with ``selected == 1`` (when the spot file has that column) that also have a
    row in the count file are kept, in spot-file order; the others are dropped with a logged
    warning (her2st has a few selected spots without counts).

    A warning names the likely cause when most spots lie on glass by the tissue mask
    (:func:`histodecon.pp.detect_tissue`): the image is not the one of the spot file, e.g. a
    downscaled copy.

    Parameters
    ----------
    counts
        Count matrix, spots x genes, tab-separated (``.tsv`` or ``.tsv.gz``), spot ids in the
        first column.
    spots
        Spot file: her2st's ``{S}_selection.tsv`` (``x y new_x new_y pixel_x pixel_y selected``;
        ``pixel_x`` is the image column, ``pixel_y`` the row) or STNet's spot CSV (spot id,
        ``X``, ``Y``).
    image
        Full-resolution H&E image the pixel centres refer to (JPEG, PNG or TIFF).
    sample
        Sample name; default: the count file name up to its first dot (``C2`` for ``C2.tsv.gz``).
    mpp
        Micrometres per pixel. Default: ``spot_pitch_um`` divided by the median
        nearest-neighbour distance of the spot centres in pixels.
    spot_diameter_um
        Spot diameter; 100 um for legacy ST.
    spot_pitch_um
        Centre-to-centre distance of neighbouring spots; 200 um for legacy ST.

    Returns
    -------
    :class:`~spatialdata.SpatialData`
        SpatialData with ``images[f"{sample}_image"]``, its tissue mask ``labels[f"{sample}_tissue"]``,
        ``shapes[f"{sample}_spots"]`` and
        ``tables["table"]`` (counts in ``X``, array coordinates in ``obs["array_x"]`` /
        ``obs["array_y"]`` when known, mpp and spot size in ``uns["histodecon"]["samples"]``).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.io.read_st(
    ...     "her2st/ST-cnts/C2.tsv.gz", "her2st/ST-spotfiles/C2_selection.tsv", "her2st/ST-imgs/C/C2/5714_HE_BT_C2.jpg"
    ... )  # doctest: +SKIP
    >>> sdata.tables["table"].uns["histodecon"]["samples"]["C2"]["mpp"]  # doctest: +SKIP
    0.73...
    """
    counts_path, spots_path = check_file(counts, "counts"), check_file(spots, "spot")
    image_path = check_file(image, "image")
    if mpp is not None:
        check_positive(mpp, "mpp")
    check_positive(spot_diameter_um, "spot_diameter_um")
    check_positive(spot_pitch_um, "spot_pitch_um")
    sample = sample or counts_path.name.split(".")[0]

    spot_table = _spot_table(spots_path)
    count_table = pd.read_csv(counts_path, sep="\t", index_col=0)
    count_table.index = count_table.index.astype(str)
    _check_unique_ids(spot_table.index, spots_path.name)
    _check_unique_ids(count_table.index, counts_path.name)
    ids = _join(spot_table, count_table, spots_path.name, counts_path.name)
    spot_table, count_table = spot_table.loc[ids], count_table.loc[ids]
    centres = check_centres(spot_table[["pixel_x", "pixel_y"]], ids, f"pixel positions of {spots_path.name!r}")

    levels = read_image(image_path)
    check_spots_inside(centres, ids, levels[0].shape[2], levels[0].shape[1], image_path.name)
    if mpp is None:
        mpp = estimate_mpp(centres, spot_pitch_um)
        logger.info(f"Estimated {mpp:.4f} um/px for {sample!r} from the {spot_pitch_um:g} um spot pitch.")
    sdata = build_sdata(
        levels,
        centres,
        sample=sample,
        mpp=mpp,
        spot_diameter_px=spot_diameter_um / mpp,
        spot_ids=ids,
        X=sparse.csr_matrix(count_table.to_numpy(dtype=np.float32)),
        var_names=count_table.columns,
        obs=spot_table.drop(columns=["pixel_x", "pixel_y"]),
    )
    mask, affine = tissue_labels(sdata, sample, f"{sample}_image")
    on_glass = square_fractions(mask, affine, centres, spot_diameter_um / mpp) < 1 - MAX_GLASS_FRACTION
    warn_mismatch(sample, image_path.name, on_glass, "selected spots")
    return sdata
