import warnings

import numpy as np
import pytest
from scipy import sparse
from spatialdata.models import Labels2DModel
from spatialdata.transformations import Identity

import histodecon as hd
from histodecon._glass import glass_mask
from histodecon.io._build import build_sdata

#: Spot x: inside tissue, straddling the edge (half / quarter glass), inside glass, at the image border.
CENTRES = np.array([[100.0, 100.0], [300.0, 100.0], [284.0, 100.0], [500.0, 100.0], [20.0, 10.0]])


def _left_half_tissue():
    """A 200 x 600 px mask: tissue left of column 300."""
    mask = np.zeros((200, 600), bool)
    mask[:, :300] = True
    return mask


@pytest.fixture
def half_glass():
    """Tissue (pink) left of column 300, glass (near white) right of it; its mask set as one's own."""
    image = np.empty((3, 200, 600), np.uint8)
    image[:, :, :300] = np.array([200, 120, 180], np.uint8)[:, None, None]
    image[:, :, 300:] = np.array([240, 238, 236], np.uint8)[:, None, None]
    sdata = build_sdata(image, CENTRES, sample="S", mpp=1.0, spot_diameter_px=30)
    hd.pp.detect_tissue(sdata, mask=_left_half_tissue())
    return sdata


def test_tissue_fraction_is_the_tissue_share_of_each_patch(half_glass):
    hd.pp.filter_background(half_glass, size=64)
    obs = half_glass.tables["table"].obs
    # the patch at x covers columns round(x - 32) .. + 63; the border spot's patch sticks out 22 rows and 12 columns
    np.testing.assert_allclose(obs["tissue_fraction"], [1.0, 0.5, 48 / 64, 0.0, 42 * 52 / 64**2])
    assert obs["in_tissue"].tolist() == [True, True, True, False, True]
    # the same mask at a quarter of the resolution gives the same fractions where its blocks align with the patches
    hd.pp.detect_tissue(half_glass, mask=_left_half_tissue()[::4, ::4], overwrite=True)
    coarse = hd.pp.filter_background(half_glass, size=64, inplace=False)
    np.testing.assert_allclose(coarse["tissue_fraction"][:4], [1.0, 0.5, 48 / 64, 0.0])


def test_limits_and_patch_size_change_the_call(half_glass):
    strict = hd.pp.filter_background(half_glass, size=64, max_glass_fraction=0.3, inplace=False)
    assert strict["in_tissue"].tolist() == [True, False, True, False, False]
    # 16 um patches at 0.5 um/px cover 32 full-resolution px: the spot at 284 (columns 268-300) is all tissue
    small = hd.pp.filter_background(half_glass, size=32, mpp=0.5, inplace=False)
    np.testing.assert_allclose(small["tissue_fraction"][:4], [1.0, 0.5, 1.0, 0.0])


def test_own_labels_key_is_honoured(half_glass):
    right = np.zeros((200, 600), np.int32)
    right[:, 300:] = 2  # the opposite half, labelled 2 (any label above 0 is tissue)
    half_glass.labels["mine"] = Labels2DModel.parse(right, dims=("y", "x"), transformations={"S": Identity()})
    result = hd.pp.filter_background(half_glass, size=64, tissue_key="mine", inplace=False)
    np.testing.assert_allclose(result["tissue_fraction"][:4], [0.0, 0.5, 1 - 48 / 64, 1.0])
    with pytest.raises(KeyError, match=r"No labels element 'theirs'.*\['S_tissue', 'mine'\]"):
        hd.pp.filter_background(half_glass, tissue_key="theirs")


def test_the_mask_is_detected_once_and_reused(monkeypatch):
    from histodecon import _tissue

    sdata = hd.datasets.synthetic(n_spots=60)
    calls = []
    detect = _tissue.detect
    monkeypatch.setattr(_tissue, "detect", lambda *args: calls.append(args[1]) or detect(*args))
    hd.pp.filter_background(sdata, overwrite=True)
    hd.pp.filter_background(sdata, size=64, overwrite=True)
    assert calls == ["synthetic"] and "synthetic_tissue" in sdata.labels
    with pytest.raises(KeyError, match=r"labels\['synthetic_tissue'\]` already exists.*overwrite=True"):
        hd.pp.detect_tissue(sdata)
    hd.pp.detect_tissue(sdata, overwrite=True)
    assert calls == ["synthetic", "synthetic"]


def test_synthetic_tissue_flags_are_recovered():
    # the synthetic slide knows which spots are at least half on its tissue ellipse; fat (white) cells inside the
    # tissue look like glass, so a few tissue spots are missed
    sdata = hd.datasets.synthetic(n_spots=300)
    truth = sdata.tables["table"].obs["in_tissue"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counts and flags that match the image: no mismatch warning
        called = hd.pp.filter_background(sdata, size=110, inplace=False)["in_tissue"].to_numpy()
    assert (called == truth).mean() > 0.9
    assert called[~truth].mean() < 0.05 and called[truth].mean() > 0.85  # measured: 2.5 % and 88 %


def _slide_with_counts(centres, scale=1.0):
    """Counts at ``centres`` on an 800 x 600 px image whose tissue rectangle, at ``scale``, spans 200-600 x 150-450."""
    image = np.full((3, 600, 800), 243, np.uint8)
    rng = np.random.default_rng(0)
    rows, cols = slice(round(150 * scale), round(450 * scale)), slice(round(200 * scale), round(600 * scale))
    shape = (3, rows.stop - rows.start, cols.stop - cols.start)
    image[:, rows, cols] = np.array([205, 130, 185])[:, None, None] + rng.integers(-25, 25, shape)
    counts = sparse.csr_matrix(np.ones((len(centres), 3), np.float32))
    return build_sdata(image, centres, sample="M", mpp=1.0, spot_diameter_px=40, X=counts, var_names=["a", "b", "c"])


def test_spots_with_counts_on_glass_warn_of_a_mismatched_image():
    on_tissue = np.array([[x, y] for x in range(220, 600, 40) for y in range(170, 450, 40)], float)  # 10 x 7 spots
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hd.pp.filter_background(_slide_with_counts(on_tissue))
    # the image downscaled to 0.75 under the same spots: 40 of the 70 spots (x > 420 or y > 330) fall on glass
    downscaled = _slide_with_counts(on_tissue, scale=0.75)
    with pytest.warns(
        UserWarning, match=r"40 of the 70 spots flagged in tissue of sample 'M' lie on glass.*another scale"
    ):
        hd.pp.filter_background(downscaled)
    # spots the reader flagged off tissue do not count
    downscaled.tables["table"].obs["in_tissue"] = downscaled.tables["table"].obs["tissue_fraction"] > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hd.pp.filter_background(downscaled, overwrite=True)


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
    with pytest.raises(ValueError, match="max_glass_fraction"):
        hd.pp.filter_background(half_glass, max_glass_fraction=1.5)
    with pytest.raises(ValueError, match="size"):
        hd.pp.filter_background(half_glass, size=0)
    assert "tissue_fraction" not in half_glass.tables["table"].obs


def test_glass_mask_needs_all_three_channels_bright():
    pixels = np.array([[[230, 230, 230], [230, 230, 200], [221, 221, 221], [220, 255, 255]]], np.uint8)
    assert glass_mask(pixels).tolist() == [[True, False, True, False]]
