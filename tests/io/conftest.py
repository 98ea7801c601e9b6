"""A small Space Ranger output folder, generated: counts h5 in the 10x format, positions, scale factors, images."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from scipy import sparse

SPOT_FULLRES = 110.0  # px -> 0.5 um/px for 55 um spots
HIRES_SCALE = 0.25


@dataclass
class VisiumFolder:
    path: Path
    fullres: np.ndarray  # (y, x, 3)
    hires: np.ndarray
    positions: pd.DataFrame  # all spots, indexed by barcode
    barcodes: list[str]  # in-tissue spots, in the order of the counts file
    counts: np.ndarray  # spots x genes
    colours: dict[str, np.ndarray]  # colour of the square under each in-tissue spot


def _write_10x_h5(path, barcodes, genes, counts):
    """The 10x HDF5 matrix: genes x barcodes in CSC, i.e. the CSR arrays of barcodes x genes."""
    matrix = sparse.csr_matrix(np.asarray(counts))
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([b"lib1"])
        group = f.create_group("matrix")
        group["barcodes"] = np.array(barcodes, dtype="S")
        group["data"] = matrix.data.astype(np.int32)
        group["indices"] = matrix.indices.astype(np.int64)
        group["indptr"] = matrix.indptr.astype(np.int64)
        group["shape"] = np.array([len(genes), len(barcodes)], dtype=np.int32)
        features = group.create_group("features")
        features["_all_tag_keys"] = np.array([b"genome"])
        features["feature_type"] = np.array([b"Gene Expression"] * len(genes))
        features["genome"] = np.array([b"GRCh38"] * len(genes))
        features["id"] = np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S")
        features["name"] = np.array(genes, dtype="S")


@pytest.fixture(scope="session")
def write_10x_h5():
    """``write(path, barcodes, genes, counts)``: a counts matrix in 10x's HDF5 layout (Space Ranger, Xenium)."""
    return _write_10x_h5


@pytest.fixture(scope="session")
def visium_folder(tmp_path_factory) -> VisiumFolder:
    """A 6 x 5 spot grid, 200 px apart, on a 1400 x 1200 px white slide; coloured squares under in-tissue spots."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("visium") / "outs"
    (root / "spatial").mkdir(parents=True)
    fullres = np.full((1200, 1400, 3), 245, np.uint8)
    rows, cols = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    positions = pd.DataFrame(
        {
            "in_tissue": 1,
            "array_row": rows.ravel(),
            "array_col": 2 * cols.ravel(),
            "pxl_row_in_fullres": 200 + 200 * rows.ravel(),
            "pxl_col_in_fullres": 180 + 200 * cols.ravel(),
        },
        index=pd.Index([f"SPOT{i:02d}-1" for i in range(30)], name="barcode"),
    )
    positions.loc[positions.index[[0, 11, 29]], "in_tissue"] = 0
    barcodes = [b for b in positions.index[::-1] if positions.loc[b, "in_tissue"] == 1]  # h5 order differs
    colours = {}
    for barcode in barcodes:
        y, x = positions.loc[barcode, ["pxl_row_in_fullres", "pxl_col_in_fullres"]]
        colours[barcode] = rng.integers(20, 200, 3).astype(np.uint8)
        fullres[y - 60 : y + 60, x - 60 : x + 60] = colours[barcode]
    positions.to_csv(root / "spatial" / "tissue_positions.csv")
    hires = np.asarray(Image.fromarray(fullres).resize((350, 300), Image.Resampling.BOX))
    Image.fromarray(hires).save(root / "spatial" / "tissue_hires_image.png")
    Image.fromarray(fullres).resize((140, 120)).save(root / "spatial" / "tissue_lowres_image.png")
    scalefactors = {
        "spot_diameter_fullres": SPOT_FULLRES,
        "tissue_hires_scalef": HIRES_SCALE,
        "tissue_lowres_scalef": 0.1,
        "fiducial_diameter_fullres": 170.0,
    }
    (root / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    tifffile.imwrite(root.parent / "fullres.tif", fullres, photometric="rgb", tile=(256, 256))
    counts = rng.poisson(1.5, (len(barcodes), 8))
    _write_10x_h5(root / "filtered_feature_bc_matrix.h5", barcodes, [f"GENE{i}" for i in range(8)], counts)
    return VisiumFolder(root, fullres, hires, positions, barcodes, counts, colours)
