"""Tissue detection on the her2st scans: the old fixed rule, squidpy's methods and histodecon's mask, side by side.

For each section (B4, C2, C3) the scan is subsampled as :func:`histodecon.pp.detect_tissue` does (at most 2^19
pixels) and judged by: the old rule ("every channel above 220 is glass"), squidpy's ``detect_tissue`` with its
default (Otsu on grey pixels), Otsu with holes up to 1 % of the image filled, Felzenszwalb superpixels (histodecon's
choice) and ``weka`` (with ``--weka``, about 20 s a section). Reference: the ST array spots the authors selected as
under tissue (the spot file) and the unselected array positions (33 x 35 array, placed by an affine fit of array to
pixel coordinates). Figures per method: the share of the image called tissue, the share of selected spots at least
half on it (recall), the share of unselected positions at least half on it (false positives), and seconds.

    .venv/bin/python benchmarks/tissue.py [--weka]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from _common import default_data_dir, write_results
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from squidpy.experimental.im import detect_tissue

from histodecon._glass import glass_mask
from histodecon._tissue import MAX_MASK_PIXELS, _subsample, detect, square_fractions
from histodecon.io._image import read_image

IMAGES = {"B4": "B/B4/BT10737_D2_HE.jpg", "C2": "C/C2/5714_HE_BT_C2.jpg", "C3": "C/C3/5714_HE_BT_D1.jpg"}
ARRAY = (33, 35)  # legacy ST array columns x rows
SPOT_UM, MPP = 100.0, 0.735


def squidpy(small: np.ndarray, **kwargs) -> np.ndarray:
    """squidpy's mask of the subsampled scan (>0 tissue)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sdata = SpatialData(images={"image": Image2DModel.parse(small, dims=("c", "y", "x"))})
        return detect_tissue(sdata, "image", inplace=False, **kwargs) > 0


def array_positions(spot_file: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of every array position and whether the authors selected it."""
    design = np.c_[spot_file["x"], spot_file["y"], np.ones(len(spot_file))]
    coef, *_ = np.linalg.lstsq(design, spot_file[["pixel_x", "pixel_y"]].to_numpy(), rcond=None)
    gx, gy = np.meshgrid(np.arange(1, ARRAY[0] + 1), np.arange(1, ARRAY[1] + 1))
    centres = np.c_[gx.ravel(), gy.ravel(), np.ones(gx.size)] @ coef
    chosen = set(
        zip(spot_file["x"][spot_file["selected"] == 1], spot_file["y"][spot_file["selected"] == 1], strict=True)
    )
    selected = np.array([(a, b) in chosen for a, b in zip(gx.ravel(), gy.ravel(), strict=True)])
    return centres, selected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weka", action="store_true", help="also squidpy's weka method (about 20 s a section)")
    args = parser.parse_args()
    root = default_data_dir() / "her2st"
    methods = {
        "old_rule_220": lambda small, levels: ~glass_mask(np.moveaxis(small, 0, -1)),
        "squidpy_otsu_default": lambda small, levels: squidpy(small),
        "squidpy_otsu_fill_1pct": lambda small, levels: squidpy(small, close_holes_smaller_than_frac=0.01),
        "histodecon_felzenszwalb": lambda small, levels: detect(levels, "scan")[0] > 0,
    }
    if args.weka:
        methods["squidpy_weka"] = lambda small, levels: squidpy(small, method="weka")
    figures = {"max_mask_pixels": MAX_MASK_PIXELS}
    for section, relative in IMAGES.items():
        levels = read_image(root / "ST-imgs" / relative)
        small, size_y, size_x = _subsample(levels, MAX_MASK_PIXELS)
        centres, selected = array_positions(pd.read_csv(root / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t"))
        figures[section] = {"mask_shape": list(small.shape[1:])}
        for name, method in methods.items():
            started = time.perf_counter()
            mask = method(small, levels)
            seconds = time.perf_counter() - started
            on = square_fractions(mask, np.diag([size_x, size_y, 1.0]), centres, SPOT_UM / MPP) >= 0.5
            figures[section][name] = {
                "tissue_share": round(float(mask.mean()), 3),
                "selected_spots_on_tissue": round(float(on[selected].mean()), 3),
                "unselected_positions_on_tissue": round(float(on[~selected].mean()), 4),
                "seconds": round(seconds, 2),
            }
    write_results("tissue", figures)


if __name__ == "__main__":
    main()
