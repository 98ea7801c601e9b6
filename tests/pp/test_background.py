import numpy as np
import pytest

import histodecon as hd
from histodecon._glass import glass_mask
from histodecon.io._build import build_sdata


@pytest.fixture
def half_glass():
    """Tissue (pink) left of column 300, glass (near white) right of it."""
    image = np.empty((3, 200, 600), np.uint8)
    image[:, :, :300] = np.array([200, 120, 180], np.uint8)[:, None, None]
    image[:, :, 300:] = np.array([240, 238, 236], np.uint8)[:, None, None]
    # spot x: inside tissue, straddling the edge (half / quarter glass), inside glass, at the image border
    centres = np.array([[100.0, 100.0], [300.0, 100.0], [284.0, 100.0], [500.0, 100.0], [20.0, 10.0]])
    return build_sdata(image, centres, sample="S", mpp=1.0, spot_diameter_px=30)


def test_tissue_fraction_is_the_non_glass_share_of_each_patch(half_glass):
    hd.pp.filter_background(half_glass, size=64)
    obs = half_glass.tables["table"].obs
    # the patch at x covers columns round(x - 32) .. + 63; the border spot's patch sticks out 22 rows and 12 columns
    np.testing.assert_allclose(obs["tissue_fraction"], [1.0, 0.5, 48 / 64, 0.0, 42 * 52 / 64**2])
    assert obs["in_tissue"].tolist() == [True, True, True, False, True]


def test_limits_and_threshold_change_the_call(half_glass):
    strict = hd.pp.filter_background(half_glass, size=64, max_glass_fraction=0.3, inplace=False)
    assert strict["in_tissue"].tolist() == [True, False, True, False, False]
    blind = hd.pp.filter_background(half_glass, size=64, glass_threshold=240, inplace=False)
    np.testing.assert_allclose(blind["tissue_fraction"][:4], 1.0)  # 240 is not above 240: nothing is glass


def test_not_inplace_leaves_the_data_alone_and_overwrite_is_required(half_glass):
    before = half_glass.tables["table"].obs.copy()
    result = hd.pp.filter_background(half_glass, size=64, inplace=False)
    assert list(result.columns) == ["tissue_fraction", "in_tissue"]
    assert list(result.index) == list(before.index)
    assert half_glass.tables["table"].obs.equals(before)
    hd.pp.filter_background(half_glass, size=64)
    with pytest.raises(KeyError, match="overwrite"):
        hd.pp.filter_background(half_glass, size=32)
    hd.pp.filter_background(half_glass, size=32, overwrite=True)


def test_bad_rule_is_refused_before_anything_is_read(half_glass):
    with pytest.raises(ValueError, match="glass_threshold"):
        hd.pp.filter_background(half_glass, glass_threshold=300)
    with pytest.raises(ValueError, match="max_glass_fraction"):
        hd.pp.filter_background(half_glass, max_glass_fraction=1.5)
    assert "tissue_fraction" not in half_glass.tables["table"].obs


def test_glass_mask_needs_all_three_channels_bright():
    pixels = np.array([[[230, 230, 230], [230, 230, 200], [221, 221, 221], [220, 255, 255]]], np.uint8)
    assert glass_mask(pixels).tolist() == [[True, False, True, False]]
