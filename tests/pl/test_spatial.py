import dask.array as da
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import EllipseCollection
from matplotlib.image import imread
from spatialdata import SpatialData

import histodecon as hd


@pytest.fixture(scope="module")
def sdata(make_slide):
    sdata = make_slide(seed=1, n_spots=60)
    table = sdata.tables["table"]
    rng = np.random.default_rng(0)
    table.obsm["pred_abund"] = table.obsm["abund"] * 1.5 + rng.gamma(1.0, 0.5, table.obsm["abund"].shape)
    return sdata


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_grid_shared_column_scales_and_file(sdata, tmp_path):
    path = tmp_path / "spatial.png"
    types = ["tumour", "lymphocyte", "fibroblast"]
    fig = hd.pl.spatial_abundance(
        sdata, types, titles=["truth", "predicted"], max_image_px=400, save=path, return_fig=True
    )
    panels = np.array(_panels(fig)).reshape(2, 3)
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 3  # one per cell type
    table = sdata.tables["table"]
    for col, name in enumerate(types):
        assert panels[0, col].get_title() == name
        spots = [next(c for c in ax.collections if isinstance(c, EllipseCollection)) for ax in panels[:, col]]
        assert spots[0].norm is spots[1].norm
        both = np.concatenate([table.obsm["abund"][name], table.obsm["pred_abund"][name]])
        assert spots[0].norm.vmin == 0 and spots[0].norm.vmax == pytest.approx(both.max())
        np.testing.assert_allclose(spots[0].get_array(), table.obsm["abund"][name])
        np.testing.assert_allclose(spots[1].get_array(), table.obsm["pred_abund"][name])
        np.testing.assert_allclose(spots[0].get_offsets(), table.obsm["spatial"])
    assert [ax.get_ylabel() for ax in panels[:, 0]] == ["truth", "predicted"]
    image = panels[0, 0].get_images()[0]
    assert max(image.get_array().shape[:2]) <= 400
    pixels = imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels.std() > 0.05


def test_multiscale_image_is_aligned_with_spots(slide_from_image):
    # A white square at x, y in [1000, 1200) x [2000, 2200) full-resolution px of a 4400 px image (a pyramid).
    ys, xs = da.arange(4400, chunks=1024)[:, None], da.arange(4400, chunks=1024)[None, :]
    square = ((xs >= 1000) & (xs < 1200) & (ys >= 2000) & (ys < 2200)).astype(np.uint8) * 255
    image = da.broadcast_to(square, (3, 4400, 4400)).rechunk((3, 1024, 1024))
    centres = np.array([[1100.0, 2100.0], [1500.0, 2500.0], [700.0, 1700.0]])
    sdata = slide_from_image(image, centres, sample="big", mpp=1.0, spot_diameter_px=50)
    table = sdata.tables["table"]
    table.obsm["abund"] = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=table.obs_names)
    fig = hd.pl.spatial_abundance(sdata, "x", keys="abund", max_image_px=120, return_fig=True)
    (panel,) = _panels(fig)
    drawn = panel.get_images()[0]
    pixels = drawn.get_array()
    assert max(pixels.shape[:2]) <= 120
    left, right, bottom, top = drawn.get_extent()
    rows, cols = pixels.shape[:2]

    def value_at(x, y):
        return pixels[int((y - top) / (bottom - top) * rows), int((x - left) / (right - left) * cols), 0]

    assert value_at(1100, 2100) == 255
    assert value_at(1500, 2500) == 0 and value_at(700, 1700) == 0
    assert left <= 700 - 50 and right >= 1500 + 50


def test_spots_without_a_prediction_are_grey_and_leave_the_scale_alone(sdata):
    table = sdata.tables["table"].copy()
    table.obsm["pred_abund"] = table.obsm["pred_abund"].copy()
    table.obsm["pred_abund"].iloc[:5, 0] = np.nan  # e.g. spots whose embeddings were NaN
    slide = SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": table})
    fig = hd.pl.spatial_abundance(slide, "tumour", max_image_px=200, return_fig=True)
    spots = [next(c for c in ax.collections if isinstance(c, EllipseCollection)) for ax in _panels(fig)]
    finite = np.concatenate([table.obsm["abund"]["tumour"], table.obsm["pred_abund"]["tumour"].iloc[5:]])
    assert spots[1].norm.vmin == 0 and spots[1].norm.vmax == pytest.approx(finite.max())
    colours = spots[1].to_rgba(spots[1].get_array())
    np.testing.assert_allclose(colours[:5], [[0.827, 0.827, 0.827, 1.0]] * 5, atol=1e-3)  # lightgrey
    assert not np.allclose(colours[5:, :3], 0.827, atol=1e-3)


def test_errors(sdata):
    with pytest.raises(TypeError, match="SpatialData"):
        hd.pl.spatial_abundance(sdata.tables["table"], "tumour")
    with pytest.raises(KeyError, match="no cell types"):
        hd.pl.spatial_abundance(sdata, ["tumour", "neuron"])
    with pytest.raises(KeyError, match="obsm"):
        hd.pl.spatial_abundance(sdata, "tumour", keys=["abund", "missing"])
    two = SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": sdata.tables["table"].copy()}
    )
    table = two.tables["table"]
    table.obs["sample"] = pd.Categorical(["a", "b"] * (table.n_obs // 2))
    with pytest.raises(ValueError, match="sample="):
        hd.pl.spatial_abundance(two, "tumour")


def test_scanpy_style_arguments(sdata):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2)
    drawn = hd.pl.spatial_abundance(sdata, ["tumour", "fibroblast"], ax=axes, max_image_px=200)
    assert drawn == list(axes.ravel())
    assert [ax.get_title() for ax in drawn[:2]] == ["tumour", "fibroblast"]
    spots = next(c for c in drawn[3].collections if isinstance(c, EllipseCollection))
    np.testing.assert_allclose(spots.get_array(), sdata.tables["table"].obsm["pred_abund"]["fibroblast"])
    with pytest.raises(ValueError, match="one per key and cell type"):
        hd.pl.spatial_abundance(sdata, "tumour", ax=axes)
