import shutil

import dask.array as da
import numpy as np
import pytest

import histodecon as hd

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _centre_colours(sdata, size):
    patches = hd.pp.spot_patches(sdata, size=size)[:]
    return patches[:, size // 2, size // 2]


def test_fullres_image_counts_and_alignment(visium_folder):
    v = visium_folder
    sdata = hd.io.read_visium(v.path, fullres_image="../fullres.tif")
    table = sdata.tables["table"]
    assert list(table.obs_names) == v.barcodes  # the 27 in-tissue spots, in counts-file order
    np.testing.assert_array_equal(table.X.toarray(), v.counts)
    expected = v.positions.loc[v.barcodes, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    np.testing.assert_array_equal(table.obsm["spatial"], expected)
    np.testing.assert_array_equal(table.obs["array_row"], v.positions.loc[v.barcodes, "array_row"])
    assert table.obs["in_tissue"].all() and "gene_ids" in table.var
    info = table.uns["histodecon"]["samples"]["lib1"]
    assert info["mpp"] == pytest.approx(0.5) and info["spot_diameter_px"] == pytest.approx(110.0)
    assert info["coordinate_system"] in sdata.coordinate_systems
    assert isinstance(sdata.images["lib1_image"].data, da.Array)
    np.testing.assert_array_equal(_centre_colours(sdata, 64), np.stack([v.colours[b] for b in v.barcodes]))
    x, y = expected[4]
    np.testing.assert_array_equal(hd.pp.spot_patches(sdata, size=64)[4], v.fullres[y - 32 : y + 32, x - 32 : x + 32])


def test_hires_image_when_no_fullres(visium_folder):
    v = visium_folder
    sdata = hd.io.read_visium(v.path, sample="mine")
    table = sdata.tables["table"]
    expected = v.positions.loc[v.barcodes, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy() * 0.25
    np.testing.assert_allclose(table.obsm["spatial"], expected)
    info = table.uns["histodecon"]["samples"]["mine"]
    assert info["mpp"] == pytest.approx(2.0) and info["spot_diameter_px"] == pytest.approx(27.5)
    np.testing.assert_array_equal(np.moveaxis(sdata.images["mine_image"].values, 0, -1), v.hires)
    np.testing.assert_array_equal(_centre_colours(sdata, 8), np.stack([v.colours[b] for b in v.barcodes]))


def test_bad_input(visium_folder, tmp_path):
    v = visium_folder
    with pytest.raises(FileNotFoundError, match="Space Ranger"):
        hd.io.read_visium(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="counts"):
        hd.io.read_visium(tmp_path)
    shutil.copy(v.path / "filtered_feature_bc_matrix.h5", tmp_path)
    with pytest.raises(FileNotFoundError, match="scalefactors"):
        hd.io.read_visium(tmp_path)
    with pytest.raises(FileNotFoundError, match="image"):
        hd.io.read_visium(v.path, fullres_image="missing.tif")
    with pytest.raises(ValueError, match="outside"):  # the hires image passed as the full-resolution one
        hd.io.read_visium(v.path, fullres_image="spatial/tissue_hires_image.png")
    with pytest.raises(ValueError, match="spot_diameter_um"):
        hd.io.read_visium(v.path, spot_diameter_um=-55)
