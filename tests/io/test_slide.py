import numpy as np
import pytest
import tifffile
from PIL import Image

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


def test_pseudo_spots_cover_the_tissue_only(slide_tiff):
    path, image = slide_tiff
    sdata = hd.io.read_slide(path, mpp=MPP, spot_diameter_um=SPOT)
    table = sdata.tables["table"]
    assert table.n_vars == 0 and table.obs["sample"].unique().tolist() == ["patient7"]
    info = sample_info(table)
    assert info["mpp"] == MPP and info["spot_diameter_px"] == SPOT
    x, y = table.obsm["spatial"].T
    # grid centres at 20, 60, 100, ...; a spot is kept when at least half of its 40 px square is tissue
    assert ((x >= 300 - 1) & (x <= 1100 + 1) & (y >= 200 - 1) & (y <= 700 + 1)).all()
    centre_x, centre_y = np.arange(32) * 40 + 20, np.arange(22) * 40 + 20
    overlap_x = np.clip(np.minimum(centre_x + 20, 1100) - np.maximum(centre_x - 20, 300), 0, None)
    overlap_y = np.clip(np.minimum(centre_y + 20, 700) - np.maximum(centre_y - 20, 200), 0, None)
    expected = np.argwhere(np.outer(overlap_y, overlap_x) / 40**2 >= 0.5)  # (row, col); drops half-half corners
    got = table.obs[["array_row", "array_col"]].to_numpy()
    assert sorted(map(tuple, got)) == sorted(map(tuple, expected))
    assert table.obs_names[0] == f"{table.obs['array_col'].iloc[0]}x{table.obs['array_row'].iloc[0]}"
    # patches come from the lazily read TIFF and match the image
    patches = hd.pp.spot_patches(sdata, size=SPOT)
    cx, cy = int(x[5]), int(y[5])
    np.testing.assert_array_equal(patches[5], image[cy - 20 : cy + 20, cx - 20 : cx + 20])
    hd.pp.filter_background(sdata, size=SPOT)
    assert table.obs["in_tissue"].all()


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
        hd.io.read_slide(np.full((300, 300, 3), 250, np.uint8), mpp=0.5)


def test_mask_resolution_uses_the_coarsest_stored_level_then_block_means():
    # a spot may span down to 4 px on a stored level; block means bring it to about 8 px
    from histodecon.io._slide import _glass_lowres
    from histodecon.pp._background import glass_mask

    image = np.moveaxis(_tissue_image(), -1, 0)
    image[:, 1:3, 1:3] = 100  # a dark speck on the glass: it makes its 3 x 3 block mean non-glass
    levels = [image, image[:, ::2, ::2], image[:, ::4, ::4]]
    glass, sy, sx = _glass_lowres(levels, 40.0, 220)  # spot spans 10 px on level 2
    assert (sy, sx) == (4.0, 4.0)
    np.testing.assert_array_equal(glass, glass_mask(np.moveaxis(levels[2], 0, -1)))
    glass, sy, sx = _glass_lowres(levels, 72.0, 220)  # level 2, then 2 x 2 block means
    assert (sy, sx) == (8.0, 8.0) and glass.shape == (112, 162)
    means = levels[2][:, :224, :324].reshape(3, 112, 2, 162, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(glass, (means > 220).all(axis=0))
    glass, sy, sx = _glass_lowres([image], 28.0, 220)  # no pyramid: 3 x 3 block means of the full image
    assert glass.shape == (300, 433) and (sy, sx) == (3.0, 3.0)
    assert not glass[0, 0] and glass[0, 5] and not glass[100, 150]


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
