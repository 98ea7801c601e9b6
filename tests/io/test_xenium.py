"""Xenium output folders with a registered H&E (he_image.ome.tif + he_imagealignment.csv), generated in 10x's layout."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

import histodecon as hd
from histodecon._geometry import sample_geometry
from histodecon._utils import sample_info

PIXEL_SIZE = 0.2125  # µm per morphology pixel
#: H&E pixels -> morphology pixels: a quarter turn, 2 morphology pixels per H&E pixel, and a shift.
ALIGNMENT = np.array([[0.0, -2.0, 900.0], [2.0, 0.0, 30.0], [0.0, 0.0, 1.0]])
HE_MPP = 2 * PIXEL_SIZE
CELL_DIAMETER_UM = 8.0


def _write_xenium(root, he_xy, rng, write_10x_h5):
    """Cells at the H&E pixels ``he_xy`` (written in µm through the alignment), counts, specs and the H&E."""
    root.mkdir(parents=True)
    (root / "experiment.xenium").write_text(
        json.dumps({"pixel_size": PIXEL_SIZE, "analysis_sw_version": "xenium-1.0.2"})
    )
    store = zarr.storage.ZipStore(root / "cells.zarr.zip", mode="w")
    zarr.open_group(store, mode="w")
    store.close()
    ids = [f"cell{i:03d}" for i in range(len(he_xy))]
    morphology = np.column_stack([he_xy, np.ones(len(he_xy))]) @ ALIGNMENT.T
    area = np.pi * (CELL_DIAMETER_UM / 2) ** 2
    cells = pd.DataFrame(
        {
            "cell_id": ids,
            "x_centroid": morphology[:, 0] * PIXEL_SIZE,
            "y_centroid": morphology[:, 1] * PIXEL_SIZE,
            "transcript_counts": 10,
            "cell_area": area,
            "nucleus_area": area / 3,
        }
    )
    cells.to_parquet(root / "cells.parquet", index=False)
    counts = rng.poisson(2.0, (len(ids), 5))
    write_10x_h5(root / "cell_feature_matrix.h5", ids, [f"GENE{i}" for i in range(5)], counts)
    image = np.full((300, 400, 3), 240, np.uint8)
    for x, y in he_xy.astype(int):
        if 0 <= x < 400 and 0 <= y < 300:
            image[y - 10 : y + 10, x - 10 : x + 10] = rng.integers(20, 200, 3)
    tifffile.imwrite(root / "he_image.ome.tif", image, photometric="rgb", tile=(64, 64))
    np.savetxt(root / "he_imagealignment.csv", ALIGNMENT, delimiter=",")
    return ids, counts, image


@pytest.fixture(scope="module")
def xenium_run(tmp_path_factory, write_10x_h5):
    """20 cells on a 5 x 4 grid of the 400 x 300 px H&E, two next to the first one, and one off the H&E."""
    cols, rows = (a.ravel() for a in np.meshgrid(np.arange(5), np.arange(4)))
    he_xy = np.vstack(
        [np.column_stack([50.0 + 75 * cols, 40.0 + 70 * rows]), [[60.0, 48.0], [40.0, 30.0], [-30.0, 100.0]]]
    )
    root = tmp_path_factory.mktemp("xenium") / "run1"
    ids, counts, image = _write_xenium(root, he_xy, np.random.default_rng(5), write_10x_h5)
    return root, he_xy, ids, counts, image


def test_xenium_cells_on_he(xenium_run):
    root, he_xy, ids, counts, image = xenium_run
    sdata = hd.io.read_xenium(root)
    table = sdata.tables["table"]
    geometry = sample_geometry(sdata, "run1", table_key="table")
    assert geometry.mpp == pytest.approx(HE_MPP)
    assert geometry.spot_diameter_px == pytest.approx(CELL_DIAMETER_UM / HE_MPP)
    assert list(table.obs_names) == ids[:22]  # the cell off the H&E is left out
    np.testing.assert_allclose(table.obsm["spatial"], he_xy[:22], atol=1e-9)
    np.testing.assert_array_equal(table.X.toarray(), counts[:22])
    assert table.obs["cell_area"].iloc[0] == pytest.approx(np.pi * 16)
    info = sample_info(table)
    assert (info["alignment"], info["spots"], info["spot_diameter_um"]) == ("he_imagealignment.csv", "cells", 8.0)
    assert info["morphology_mpp"] == PIXEL_SIZE
    patches = hd.pp.spot_patches(sdata, size=20, mpp=None)
    x, y = he_xy[7].astype(int)
    np.testing.assert_array_equal(patches[7], image[y - 10 : y + 10, x - 10 : x + 10])
    hd.tl.embed(sdata, models=["handcrafted"])
    assert np.isfinite(table.obsm["X_handcrafted"]).all()


def test_xenium_folder_given_relative_to_the_working_directory(xenium_run, monkeypatch):
    root, he_xy, *_ = xenium_run
    monkeypatch.chdir(root.parent)
    sdata = hd.io.read_xenium(root.name)
    np.testing.assert_allclose(sdata.tables["table"].obsm["spatial"], he_xy[:22], atol=1e-9)


def test_xenium_grid_sums_cells(xenium_run):
    root, he_xy, _, counts, _ = xenium_run
    sdata = hd.io.read_xenium(root, spots="grid", spot_diameter_um=30, spacing_um=40, sample="S")
    table = sdata.tables["table"]
    geometry = sample_geometry(sdata, "S", table_key="table")
    assert (geometry.mpp, geometry.spot_diameter_px) == (pytest.approx(HE_MPP), pytest.approx(30 / HE_MPP))
    assert sample_info(table)["grid"] == "hex" and sample_info(table)["grid_spacing_um"] == 40.0
    radius = 15 / HE_MPP
    for spot, centre in zip(table.obs_names, table.obsm["spatial"], strict=True):
        inside = np.linalg.norm(he_xy - centre, axis=1) < radius
        assert table.obs.loc[spot, "n_cells"] == inside.sum() > 0
        np.testing.assert_array_equal(table[spot].X.toarray()[0], counts[inside].sum(0))
    assert table.n_obs == 9 and table.obs["n_cells"].sum() == 11  # spots without cells are left out
    assert table.obs.loc["0x0", "n_cells"] == 3
    hd.tl.embed(sdata, models=["handcrafted"])
    assert table.obsm["X_handcrafted"].shape[0] == table.n_obs


def test_xenium_errors(xenium_run, tmp_path):
    root, *_ = xenium_run
    copy = shutil.copytree(root, tmp_path / "run2")
    (copy / "he_imagealignment.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"No alignment file 'he_imagealignment.csv'.*`alignment=`"):
        hd.io.read_xenium(copy)
    with pytest.raises(FileNotFoundError, match="alignment file"):
        hd.io.read_xenium(copy, alignment="missing.csv")
    with pytest.raises(ValueError, match="`spots` must be one of"):
        hd.io.read_xenium(root, spots="bins")
