import gzip

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
import tifffile
from PIL import Image

import histodecon as hd

MPP = 2.0  # 200 um pitch -> 100 px, 100 um spots -> 50 px


def _write_section(folder, *, image_mode="RGB"):
    """A legacy-ST section: 5 x 4 spots on a 100 px grid, two not selected, one without counts."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (480, 620, 3), dtype=np.uint8)
    xs, ys = np.meshgrid(np.arange(5) + 3, np.arange(4) + 7)
    spots = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel()})
    spots["new_x"], spots["new_y"] = spots["x"] + 0.01, spots["y"] - 0.02
    spots["pixel_x"] = 100.0 * (spots["x"] - 3) + 110.4
    spots["pixel_y"] = 100.0 * (spots["y"] - 7) + 90.6
    spots["selected"] = 1
    spots.loc[[0, 7], "selected"] = 0
    spots.to_csv(folder / "S1_selection.tsv", sep="\t", index=False)
    ids = (spots["x"].astype(str) + "x" + spots["y"].astype(str)).to_numpy()
    selected = ids[spots["selected"] == 1]
    counted = np.append(selected[selected != ids[5]], "99x99")  # drop one selected spot, add a stray row
    counts = pd.DataFrame(rng.poisson(2, (len(counted), 6)), index=counted, columns=[f"G{i}" for i in range(6)])
    with gzip.open(folder / "S1.tsv.gz", "wt") as handle:
        counts.to_csv(handle, sep="\t")
    if image_mode == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), "RGBA").save(folder / "he.png")
    else:
        Image.fromarray(rgb).convert(image_mode).save(folder / "he.png")
    return folder / "S1.tsv.gz", folder / "S1_selection.tsv", folder / "he.png", rgb, spots, counts


def test_reads_selected_spots_with_counts_in_spot_file_order(tmp_path):
    counts_path, spots_path, image_path, rgb, spots, counts = _write_section(tmp_path)
    sdata = hd.io.read_st(counts_path, spots_path, image_path)
    table = sdata.tables["table"]
    kept = [i for i in range(20) if i not in (0, 7, 5)]
    expected_ids = [f"{spots.x[i]}x{spots.y[i]}" for i in kept]
    assert list(table.obs_names) == expected_ids
    np.testing.assert_array_equal(table.X.toarray(), counts.loc[expected_ids].to_numpy())
    assert list(table.var_names) == list(counts.columns)
    np.testing.assert_allclose(table.obsm["spatial"], spots.loc[kept, ["pixel_x", "pixel_y"]].to_numpy())
    np.testing.assert_array_equal(table.obs["array_x"], spots.x[kept])
    info = table.uns["histodecon"]["samples"]["S1"]
    assert info["mpp"] == pytest.approx(MPP)
    assert info["spot_diameter_px"] == pytest.approx(50.0)
    assert set(sdata.images) == {"S1_image"} and set(sdata.shapes) == {"S1_spots"}
    np.testing.assert_array_equal(np.moveaxis(sdata.images["S1_image"].values, 0, -1), rgb)
    assert table.obs["sample"].unique().tolist() == ["S1"]


def test_patch_at_a_spot_is_the_crop_of_the_image(tmp_path):
    counts_path, spots_path, image_path, rgb, _, _ = _write_section(tmp_path)
    sdata = hd.io.read_st(counts_path, spots_path, image_path)
    x, y = sdata.tables["table"].obsm["spatial"][3]
    x0, y0 = round(x - 16), round(y - 16)
    np.testing.assert_array_equal(hd.pp.spot_patches(sdata, size=32)[3], rgb[y0 : y0 + 32, x0 : x0 + 32])


def test_explicit_mpp_sample_and_spot_size(tmp_path):
    counts_path, spots_path, image_path, *_ = _write_section(tmp_path)
    sdata = hd.io.read_st(counts_path, spots_path, image_path, sample="mine", mpp=0.5, spot_diameter_um=55)
    info = sdata.tables["table"].uns["histodecon"]["samples"]["mine"]
    assert info["mpp"] == 0.5 and info["spot_diameter_px"] == pytest.approx(110.0)


def test_stnet_spot_file_without_selection(tmp_path):
    counts_path, _, image_path, _, spots, counts = _write_section(tmp_path)
    ids = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    stnet = pd.DataFrame({"X": spots["pixel_x"].to_numpy(), "Y": spots["pixel_y"].to_numpy()}, index=ids)
    stnet.to_csv(tmp_path / "spots_S1.csv")
    sdata = hd.io.read_st(counts_path, tmp_path / "spots_S1.csv", image_path)
    table = sdata.tables["table"]
    assert list(table.obs_names) == [i for i in ids if i in set(counts.index)]  # no selection: every counted spot
    assert table.uns["histodecon"]["samples"]["S1"]["mpp"] == pytest.approx(MPP)


def test_rgba_image_loses_its_alpha(tmp_path):
    counts_path, spots_path, image_path, rgb, *_ = _write_section(tmp_path, image_mode="RGBA")
    sdata = hd.io.read_st(counts_path, spots_path, image_path)
    np.testing.assert_array_equal(np.moveaxis(sdata.images["S1_image"].values, 0, -1), rgb)


def test_bad_input(tmp_path):
    counts_path, spots_path, image_path, rgb, spots, _ = _write_section(tmp_path)
    with pytest.raises(FileNotFoundError, match="image"):
        hd.io.read_st(counts_path, spots_path, tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="counts"):
        hd.io.read_st(tmp_path / "missing.tsv.gz", spots_path, image_path)
    with pytest.raises(ValueError, match="mpp"):
        hd.io.read_st(counts_path, spots_path, image_path, mpp=0)
    renamed = spots.assign(x=spots["x"] + 50)
    renamed.to_csv(tmp_path / "other_selection.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="same section"):
        hd.io.read_st(counts_path, tmp_path / "other_selection.tsv", image_path)
    shifted = spots.assign(pixel_x=spots["pixel_x"] * 3)
    shifted.to_csv(tmp_path / "far_selection.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="outside"):
        hd.io.read_st(counts_path, tmp_path / "far_selection.tsv", image_path)
    spots.drop(columns=["pixel_x", "pixel_y"]).to_csv(tmp_path / "bad_selection.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="columns"):
        hd.io.read_st(counts_path, tmp_path / "bad_selection.tsv", image_path)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(ValueError, match="grayscale"):
        hd.io.read_st(counts_path, spots_path, tmp_path / "gray.png")
    tifffile.imwrite(tmp_path / "deep.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    with pytest.raises(ValueError, match="uint16"):
        hd.io.read_st(counts_path, spots_path, tmp_path / "deep.tif")


def test_stored_pyramid_levels_of_a_tiff_are_kept(tmp_path):
    counts_path, spots_path, _, rgb, _, _ = _write_section(tmp_path)
    coarse = np.full((240, 310, 3), 200, np.uint8)  # not a downsample of rgb: only a kept level reads like this
    with tifffile.TiffWriter(tmp_path / "he.tif") as tif:
        tif.write(rgb, tile=(256, 256), subifds=1, photometric="rgb")
        tif.write(coarse, tile=(256, 256), subfiletype=1, photometric="rgb")
    sdata = hd.io.read_st(counts_path, spots_path, tmp_path / "he.tif")
    sdata.write(tmp_path / "s1.zarr")
    image = sd.read_zarr(tmp_path / "s1.zarr").images["S1_image"]
    assert list(image) == ["scale0", "scale1"]
    np.testing.assert_array_equal(np.moveaxis(image["scale0"]["image"].values, 0, -1), rgb)
    np.testing.assert_array_equal(np.moveaxis(image["scale1"]["image"].values, 0, -1), coarse)
    scale = sd.transformations.get_transformation(image["scale1"]["image"], "S1").to_affine_matrix(
        ("x", "y"), ("x", "y")
    )
    np.testing.assert_allclose(np.diag(scale)[:2], [2.0, 2.0])
