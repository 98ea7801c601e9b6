import anndata
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import spatialdata
import tifffile
from PIL import Image
from spatialdata.transformations import get_transformation

import histodecon as hd
from histodecon._utils import sample_info

MPP = 1.0
SPOT = 40  # um -> 40 px pseudo-spots


def _tissue_image():
    """A 900 x 1300 px white slide with a textured pink rectangle of tissue at rows 200-700, columns 300-1100."""
    rng = np.random.default_rng(3)
    image = np.full((900, 1300, 3), 243, np.uint8)
    tissue = np.array([205, 130, 185]) + rng.integers(-25, 25, (500, 800, 3))
    image[200:700, 300:1100] = tissue.clip(0, 255).astype(np.uint8)
    return image


def _write_pyramid(path, image):
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), subifds=2, photometric="rgb")
        tif.write(image[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
        tif.write(image[::4, ::4], tile=(128, 128), subfiletype=1, photometric="rgb")


@pytest.fixture(scope="module")
def slide_tiff(tmp_path_factory):
    image = _tissue_image()
    path = tmp_path_factory.mktemp("slide") / "patient7.ome.tif"
    _write_pyramid(path, image)
    return path, image


def _expected_grid(min_fraction, *, strict, columns=(300, 1100), rows=(200, 700)):
    """(row, col) of the 40 px grid squares whose overlap with a rectangle is above (or at) ``min_fraction``."""
    centre_x, centre_y = np.arange(32) * 40 + 20, np.arange(22) * 40 + 20
    overlap_x = np.clip(np.minimum(centre_x + 20, columns[1]) - np.maximum(centre_x - 20, columns[0]), 0, None)
    overlap_y = np.clip(np.minimum(centre_y + 20, rows[1]) - np.maximum(centre_y - 20, rows[0]), 0, None)
    fraction = np.outer(overlap_y, overlap_x) / 40**2
    return set(map(tuple, np.argwhere(fraction > min_fraction if strict else fraction >= min_fraction)))


def test_pseudo_spots_cover_the_tissue_only(slide_tiff, monkeypatch):
    path, image = slide_tiff
    sdata = hd.io.read_slide(path, mpp=MPP, spot_diameter_um=SPOT)
    table = sdata.tables["table"]
    assert table.n_vars == 0 and table.obs["sample"].unique().tolist() == ["patient7"]
    info = sample_info(table)
    assert info["mpp"] == MPP and info["spot_diameter_px"] == SPOT
    x, y = table.obsm["spatial"].T
    assert ((x >= 300 - 1) & (x <= 1100 + 1) & (y >= 200 - 1) & (y <= 700 + 1)).all()
    # a spot is kept when at least half of its 40 px square is on the detected tissue: all spots more than half on
    # the rectangle, none less; those exactly half on it (centre on the edge) go either way with the mask's edge
    got = set(map(tuple, table.obs[["array_row", "array_col"]].to_numpy()))
    assert _expected_grid(0.5, strict=True) <= got <= _expected_grid(0.5, strict=False)
    assert table.obs_names[0] == f"{table.obs['array_col'].iloc[0]}x{table.obs['array_row'].iloc[0]}"
    # the detected mask is the rectangle (on 2 x 2 px blocks: the image is over MAX_MASK_PIXELS)
    mask = np.asarray(sdata.labels["patient7_tissue"]) > 0
    truth = np.zeros((450, 650), bool)
    truth[100:350, 150:550] = True
    assert mask.shape == truth.shape and (mask != truth).mean() < 0.002
    # patches come from the lazily read TIFF and match the image
    patches = hd.pp.spot_patches(sdata, size=SPOT)
    cx, cy = int(x[5]), int(y[5])
    np.testing.assert_array_equal(patches[5], image[cy - 20 : cy + 20, cx - 20 : cx + 20])
    # filter_background reuses the mask read_slide wrote: no second detection
    calls = []
    monkeypatch.setattr("histodecon._tissue.detect", lambda *a: calls.append(a))
    hd.pp.filter_background(sdata, size=SPOT)
    assert calls == [] and table.obs["in_tissue"].all()


def test_own_mask_is_used_and_kept(slide_tiff, monkeypatch):
    _, image = slide_tiff
    monkeypatch.setattr("histodecon._tissue.detect", lambda *a: pytest.fail("detected despite an own mask"))
    own = np.zeros((225, 325), bool)  # a quarter of the image's resolution: only the left half of the rectangle
    own[50:175, 75:175] = True
    sdata = hd.io.read_slide(image, mpp=MPP, spot_diameter_um=SPOT, tissue=own)
    got = set(map(tuple, sdata.tables["table"].obs[["array_row", "array_col"]].to_numpy()))
    assert got == _expected_grid(0.5, strict=False, columns=(300, 700))  # half-on-edge spots kept, exactly
    assert len(got) == 9 * 12 + 2 * 12 + 9  # inside, halves on the left / right edges, halves on the bottom edge
    np.testing.assert_array_equal(np.asarray(sdata.labels["slide_tissue"]) > 0, own)


def test_tissue_mask_survives_zarr_and_is_reused(slide_tiff, tmp_path, monkeypatch):
    _, image = slide_tiff
    sdata = hd.io.read_slide(image, mpp=MPP, spot_diameter_um=SPOT)
    sdata.write(tmp_path / "slide.zarr")
    back = spatialdata.read_zarr(tmp_path / "slide.zarr")
    np.testing.assert_array_equal(np.asarray(back.labels["slide_tissue"]), np.asarray(sdata.labels["slide_tissue"]))
    # registered under the image: a 2 x 2 px block per label pixel, in pixels and micrometres
    to_pixels = get_transformation(back.labels["slide_tissue"], "slide").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(np.diag(to_pixels), [2, 2, 1])
    calls = []
    monkeypatch.setattr("histodecon._tissue.detect", lambda *a: calls.append(a))
    before = hd.pp.filter_background(sdata, size=SPOT, inplace=False)
    after = hd.pp.filter_background(back, size=SPOT, inplace=False)
    assert calls == []
    pd.testing.assert_frame_equal(before, after)
    back.tables["table"].obs = back.tables["table"].obs.join(after.drop(columns="in_tissue"))
    back.tables["table"].write_h5ad(tmp_path / "table.h5ad")
    np.testing.assert_array_equal(
        anndata.read_h5ad(tmp_path / "table.h5ad").obs["tissue_fraction"], after["tissue_fraction"]
    )


def test_array_input_spacing_and_alpha(slide_tiff):
    _, image = slide_tiff
    from_array = hd.io.read_slide(image, mpp=MPP, spot_diameter_um=SPOT, spacing_um=80)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    from_rgba = hd.io.read_slide(rgba, mpp=MPP, spot_diameter_um=SPOT, spacing_um=80, sample="s")
    centres = from_array.tables["table"].obsm["spatial"]
    np.testing.assert_array_equal(centres, from_rgba.tables["table"].obsm["spatial"])
    assert np.all((centres - 40) % 80 == 0)  # spacing 80 px
    assert from_array.tables["table"].obs["sample"].iloc[0] == "slide"


def test_png_and_tiff_agree(slide_tiff, tmp_path):
    path, image = slide_tiff
    Image.fromarray(image).save(tmp_path / "same.png")
    png = hd.io.read_slide(tmp_path / "same.png", mpp=MPP, spot_diameter_um=SPOT).tables["table"]
    tiff = hd.io.read_slide(path, mpp=MPP, spot_diameter_um=SPOT).tables["table"]
    assert list(png.obs_names) == list(tiff.obs_names)


def test_bad_input(slide_tiff, tmp_path):
    path, image = slide_tiff
    for mpp in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="mpp"):
            hd.io.read_slide(path, mpp=mpp)
    with pytest.raises(FileNotFoundError, match="image"):
        hd.io.read_slide(tmp_path / "missing.tif", mpp=0.5)
    tifffile.imwrite(tmp_path / "gray.tif", image[..., 0])
    with pytest.raises(ValueError, match="grayscale"):
        hd.io.read_slide(tmp_path / "gray.tif", mpp=0.5)
    tifffile.imwrite(tmp_path / "deep.tif", image.astype(np.uint16) * 257, photometric="rgb")
    with pytest.raises(ValueError, match="uint16"):
        hd.io.read_slide(tmp_path / "deep.tif", mpp=0.5)
    with pytest.raises(ValueError, match="float"):
        hd.io.read_slide(image / 255.0, mpp=0.5)
    with pytest.raises(TypeError, match="array"):
        hd.io.read_slide(image.tolist(), mpp=0.5)
    with pytest.raises(ValueError, match="grid step"):
        hd.io.read_slide(image, mpp=0.5, spacing_um=1000)
    with pytest.raises(ValueError, match="max_glass_fraction"):
        hd.io.read_slide(image, mpp=0.5, max_glass_fraction=2)
    with pytest.raises(ValueError, match="No pseudo-spot"):
        hd.io.read_slide(image, mpp=0.5, tissue=np.zeros((90, 130), bool))
    with pytest.raises(ValueError, match="does not have the shape of image"):
        hd.io.read_slide(image, mpp=0.5, tissue=np.ones((90, 90), bool))
    with pytest.raises(ValueError, match="2-D boolean or integer"):
        hd.io.read_slide(image, mpp=0.5, tissue=np.ones((90, 130)))


def test_mask_is_detected_on_the_coarsest_level_that_is_large_enough(monkeypatch):
    # level 0 must not be read: level 2 (225 x 325 px) is above the (lowered) pixel budget, then every 2nd pixel
    from histodecon import _tissue

    image = np.moveaxis(_tissue_image(), -1, 0)
    unreadable = da.zeros(image.shape, np.uint8, chunks=256).map_blocks(
        lambda block: pytest.fail("the full-resolution level was read"), meta=np.empty((0, 0, 0), np.uint8)
    )
    levels = [unreadable, image[:, ::2, ::2], image[:, ::4, ::4]]
    monkeypatch.setattr(_tissue, "MAX_MASK_PIXELS", 50_000)
    small, size_y, size_x = _tissue._subsample(levels, _tissue.MAX_MASK_PIXELS)
    assert (size_y, size_x) == (8.0, 8.0) and small.shape == (3, 113, 163)
    rows, cols = np.minimum(np.arange(113) * 2 + 1, 224), np.minimum(np.arange(163) * 2 + 1, 324)
    np.testing.assert_array_equal(small, levels[2][:, rows][:, :, cols])
    labels, size_y, size_x = _tissue.detect(levels, "s")
    # rows 200-700, columns 300-1100 are rows 25-87.5, columns 37.5-137.5 in 8 px blocks: all tissue inside, glass
    # outside, the blocks on the edges either way
    assert (size_y, size_x) == (8.0, 8.0) and labels.shape == (113, 163)
    assert (labels[26:87, 39:137] > 0).all()
    outside = np.ones(labels.shape, bool)
    outside[24:89, 36:139] = False
    assert (labels[outside] == 0).all()


def test_an_image_without_glass_at_its_corners_is_all_tissue():
    from histodecon._tissue import detect

    rng = np.random.default_rng(0)
    inside = (np.array([205, 130, 185]) + rng.integers(-25, 25, (300, 400, 3))).astype(np.uint8)
    inside[100:200, 150:250] = 240  # a bright hole, which is glass when the corners are glass
    labels, _, _ = detect([np.moveaxis(inside, -1, 0)], "crop")
    assert (labels == 1).all()
    framed = np.full((500, 600, 3), 243, np.uint8)
    framed[100:400, 100:500] = inside
    labels, _, _ = detect([np.moveaxis(framed, -1, 0)], "framed")
    assert (labels[:100] == 0).all() and (labels[150:350, 150:250] > 0).all() and (labels[205:295, 255:345] == 0).all()


def test_hex_grid_is_visium_like_by_default():
    # all tissue: every hex centre is kept; 1 um/px, 55 um spots, 100 um pitch
    rng = np.random.default_rng(0)
    image = (np.array([205, 130, 185]) + rng.integers(-25, 25, (700, 1000, 3))).astype(np.uint8)
    sdata = hd.io.read_slide(image, mpp=1.0, grid="hex")
    table = sdata.tables["table"]
    info = sample_info(table)
    assert (info["grid"], info["grid_spacing_um"], info["spot_diameter_px"]) == ("hex", 100.0, 55.0)
    np.testing.assert_allclose(sdata.shapes["slide_spots"]["radius"], 27.5)
    centres = table.obsm["spatial"]
    row_step = 100 * np.sqrt(3) / 2
    assert table.n_obs == 4 * 10 + 4 * 9  # 8 rows; even rows at half-pitches 0, 2, ..., 18, odd rows at 1, ..., 17
    np.testing.assert_allclose(centres[:, 1], (table.obs["array_row"] + 0.5) * row_step)
    np.testing.assert_allclose(centres[:, 0], (table.obs["array_col"] + 1) * 50)
    assert ((table.obs["array_col"] - table.obs["array_row"]) % 2 == 0).all()
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    np.testing.assert_allclose(distances.min(axis=1), 100.0)
    inner = (centres[:, 0] > 150) & (centres[:, 0] < 850) & (centres[:, 1] > 150) & (centres[:, 1] < 550)
    assert (np.isclose(distances[inner], 100.0).sum(axis=1) == 6).all()
    assert (centres + [50, row_step / 2] <= [1000, 700] + np.array([1e-9, 1e-9])).all()


def test_hex_grid_spacing_and_diameter_in_um():
    image = np.full((600, 600, 3), 150, np.uint8)
    table = hd.io.read_slide(image, mpp=0.5, grid="hex", spot_diameter_um=20, spacing_um=40).tables["table"]
    assert sample_info(table)["spot_diameter_px"] == 40.0  # 20 um at 0.5 um/px
    centres = table.obsm["spatial"]
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    np.testing.assert_allclose(distances.min(axis=1), 80.0)  # 40 um at 0.5 um/px
    with pytest.raises(ValueError, match="grid"):
        hd.io.read_slide(image, mpp=0.5, grid="triangle")


def test_transparent_pixels_get_no_spots(slide_tiff, tmp_path):
    _, image = slide_tiff
    tissue_everywhere = np.broadcast_to(image[450, 700], image.shape).copy()
    alpha = np.zeros(image.shape[:2], np.uint8)
    alpha[200:700, 300:1100] = 255  # opaque only where the reference image has tissue
    rgba = np.dstack([tissue_everywhere, alpha])
    reference = hd.io.read_slide(image, mpp=MPP, spot_diameter_um=SPOT).tables["table"]
    from_array = hd.io.read_slide(rgba, mpp=MPP, spot_diameter_um=SPOT).tables["table"]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    from_png = hd.io.read_slide(tmp_path / "rgba.png", mpp=MPP, spot_diameter_um=SPOT).tables["table"]
    assert list(from_array.obs_names) == list(reference.obs_names) == list(from_png.obs_names)
    x, y = from_array.obsm["spatial"].T
    assert ((x >= 300 - 1) & (x <= 1100 + 1) & (y >= 200 - 1) & (y <= 700 + 1)).all()


def test_a_file_name_that_cannot_name_elements_gives_a_usable_sample(tmp_path):
    Image.fromarray(_tissue_image()).save(tmp_path / "my slide (1).png")
    sdata = hd.io.read_slide(tmp_path / "my slide (1).png", mpp=2.0)
    assert sdata.tables["table"].obs["sample"].unique().tolist() == ["my_slide__1_"]
    with pytest.raises(ValueError, match=r"The sample name 'my slide' cannot name SpatialData elements"):
        hd.io.read_slide(tmp_path / "my slide (1).png", mpp=2.0, sample="my slide")
