"""Visium HD Space Ranger folders (feature_slice.h5, binned_outputs/square_XXXum/), generated in 10x's layout."""

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

import histodecon as hd
from histodecon._geometry import sample_geometry
from histodecon._utils import sample_info

MPP = 0.5
ORIGIN_PX = np.array([40.0, 30.0])  # top-left corner of the bin grid in the full-resolution image
HIRES_SCALE = 0.25


def _write_bins(outs, bin_um, n_cols, n_rows, rng, write_10x_h5):
    """One ``square_XXXum`` folder: counts of every bin, positions (parquet) and scale factors."""
    spatial = outs / "binned_outputs" / f"square_{bin_um:03d}um" / "spatial"
    spatial.mkdir(parents=True)
    side_px = bin_um / MPP
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij"))
    barcodes = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    centres = ORIGIN_PX + (np.column_stack([cols, rows]) + 0.5) * side_px
    positions = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": centres[:, 1],
            "pxl_col_in_fullres": centres[:, 0],
        }
    )
    positions.to_parquet(spatial / "tissue_positions.parquet", index=False)
    scalefactors = {
        "bin_size_um": float(bin_um),
        "microns_per_pixel": MPP,
        "spot_diameter_fullres": side_px,
        "tissue_hires_scalef": HIRES_SCALE,
        "tissue_lowres_scalef": 0.05,
    }
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    counts = rng.poisson(3.0, (len(barcodes), 6))
    order = rng.permutation(len(barcodes))  # the counts file lists the bins in another order
    write_10x_h5(
        spatial.parent / "filtered_feature_bc_matrix.h5",
        [barcodes[i] for i in order],
        [f"GENE{i}" for i in range(6)],
        counts[order],
    )
    return pd.DataFrame(counts, index=barcodes), centres


@pytest.fixture(scope="module")
def visium_hd_outs(tmp_path_factory, write_10x_h5):
    """12 bins of 16 µm (4 x 3) and 48 bins of 8 µm over a 300 x 200 px slide at 0.5 µm/px; each 16 µm bin coloured."""
    rng = np.random.default_rng(3)
    outs = tmp_path_factory.mktemp("visium_hd") / "outs"
    outs.mkdir()
    with h5py.File(outs / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps({"file_format": "1.0"})})
    counts16, centres16 = _write_bins(outs, 16, 4, 3, rng, write_10x_h5)
    _write_bins(outs, 8, 8, 6, rng, write_10x_h5)
    image = np.full((200, 300, 3), 240, np.uint8)
    colours = rng.integers(20, 200, (len(centres16), 3)).astype(np.uint8)
    for (x, y), colour in zip(centres16.astype(int), colours, strict=True):
        image[y - 16 : y + 16, x - 16 : x + 16] = colour
    (outs / "microscope_image").mkdir()
    tifffile.imwrite(outs / "microscope_image" / "slide.tif", image, photometric="rgb", tile=(64, 64))
    hires = image[::4, ::4].copy()
    (outs / "spatial").mkdir()
    tifffile.imwrite(outs / "spatial" / "hires.tif", hires, photometric="rgb")
    Image.fromarray(hires).save(outs / "spatial" / "tissue_hires_image.png")
    return outs, counts16, centres16, image


def test_visium_hd_bins_as_spots(visium_hd_outs):
    outs, counts, centres, image = visium_hd_outs
    sdata = hd.io.read_visium_hd(outs, bin_size=16, sample="HD1")
    table = sdata.tables["table"]
    geometry = sample_geometry(sdata, "HD1", table_key="table")
    assert (geometry.mpp, geometry.spot_diameter_px) == (MPP, 32.0)
    info = sample_info(table)
    assert (info["bin_size_um"], info["field_um"], info["mpp_source"]) == (16.0, 16.0, "visium-hd-scalefactors")
    assert table.n_obs == 12 and list(table.var_names) == [f"GENE{i}" for i in range(6)]
    spots = table.obs_names
    np.testing.assert_allclose(table.obsm["spatial"], pd.DataFrame(centres, index=counts.index).loc[spots])
    np.testing.assert_array_equal(table.X.toarray(), counts.loc[spots].to_numpy())
    assert table.obs["array_col"].tolist() == [int(s.split("_")[3].split("-")[0]) for s in spots]
    patches = hd.pp.spot_patches(sdata, size=32, mpp=None)
    x, y = table.obsm["spatial"][5].astype(int)
    np.testing.assert_array_equal(patches[5], image[y - 16 : y + 16, x - 16 : x + 16])
    hd.tl.embed(sdata, models=["handcrafted"])
    assert table.obsm["X_handcrafted"].shape[0] == 12 and np.isfinite(table.obsm["X_handcrafted"]).all()


def test_visium_hd_field_and_bin_choice(visium_hd_outs):
    outs, *_ = visium_hd_outs
    sdata = hd.io.read_visium_hd(outs, bin_size=8, field_um=55)
    geometry = sample_geometry(sdata, "outs", table_key="table")
    assert (geometry.mpp, geometry.spot_diameter_px) == (MPP, 110.0)
    assert sdata.tables["table"].n_obs == 48 and sample_info(sdata.tables["table"])["bin_size_um"] == 8.0


def test_visium_hd_hires_without_microscope_image(visium_hd_outs, tmp_path):
    outs, counts, centres, _ = visium_hd_outs
    copy = shutil.copytree(outs, tmp_path / "outs", ignore=shutil.ignore_patterns("microscope_image"))
    sdata = hd.io.read_visium_hd(copy)
    geometry = sample_geometry(sdata, "outs", table_key="table")
    assert (geometry.mpp, geometry.spot_diameter_px) == (MPP / HIRES_SCALE, 16 * HIRES_SCALE / MPP)
    expected = pd.DataFrame(centres * HIRES_SCALE, index=counts.index).loc[sdata.tables["table"].obs_names]
    np.testing.assert_allclose(sdata.tables["table"].obsm["spatial"], expected)


def test_visium_hd_errors(visium_hd_outs):
    outs, *_ = visium_hd_outs
    with pytest.raises(FileNotFoundError, match=r"No bin size 2 µm.*'square_008um', 'square_016um'.*`bin_size=`"):
        hd.io.read_visium_hd(outs, bin_size=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hd.io.read_visium_hd(outs.parent / "missing")
    with pytest.raises(ValueError, match="outside"):  # bins of the full-resolution image on the quarter-size one
        hd.io.read_visium_hd(outs, fullres_image="spatial/hires.tif")
