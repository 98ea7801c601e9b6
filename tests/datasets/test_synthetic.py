import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from skimage.color import hed_from_rgb
from spatialdata import read_zarr
from spatialdata.transformations import get_transformation

import histodecon as hd
from histodecon.datasets._synthetic._layout import CELL_DENSITY

CELL_TYPES = ["tumour", "lymphocyte", "fibroblast", "adipocyte", "endothelial"]
PATCH_PX = 224


@pytest.fixture(scope="module")
def slide():
    return hd.datasets.synthetic(n_spots=300, seed=0)


@pytest.fixture(scope="module")
def other_slide():
    return hd.datasets.synthetic(n_spots=300, seed=1, counts=False)


@pytest.fixture(scope="module")
def reference():
    return hd.datasets.synthetic_reference(n_cells_per_type=60, seed=0)


def image_of(sdata):
    (image,) = sdata.images.values()
    return np.asarray(image.data)


def patches(sdata, spots):
    """224 px crops around spots, cut straight from the image array (c, y, x) -> (n, y, x, c)."""
    image, xy = image_of(sdata), sdata.tables["table"][spots].obsm["spatial"]
    half = PATCH_PX // 2
    return np.stack(
        [image[:, y - half : y + half, x - half : x + half].transpose(1, 2, 0) for x, y in np.rint(xy).astype(int)]
    )


def colour_features(crops):
    """Mean and standard deviation of RGB and of the HED optical densities of each patch."""
    rgb = crops.reshape(len(crops), -1, 3).astype(np.float32)
    hed = -np.log((rgb + 1) / 256) @ hed_from_rgb.astype(np.float32)
    return np.concatenate([rgb.mean(1), rgb.std(1), hed.mean(1), hed.std(1)], axis=1)


def ridge(X, Y, alpha=1.0):
    """Closed-form ridge regression on standardised features; returns the predictor."""
    mean, scale = X.mean(0), X.std(0)
    Z = (X - mean) / scale
    W = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (Y - Y.mean(0)))
    return lambda X_new: (X_new - mean) / scale @ W + Y.mean(0)


def test_layout_follows_design(slide):
    table = slide.tables["table"]
    assert set(slide.images) == {"synthetic_image"}
    assert set(slide.shapes) == {"synthetic_spots"}
    assert set(slide.tables) == {"table"}
    image = slide.images["synthetic_image"]
    assert image.dims == ("c", "y", "x")
    assert image.dtype == np.uint8 and image.shape[0] == 3

    assert table.n_obs == 300
    assert {"sample", "in_tissue", "array_row", "array_col"} <= set(table.obs)
    assert (table.obs["sample"] == "synthetic").all()
    assert table.obs["in_tissue"].dtype == bool
    assert 0.5 < table.obs["in_tissue"].mean() < 0.95  # glass around the tissue

    xy = table.obsm["spatial"]
    assert xy.shape == (300, 2)
    _, height, width = image.shape
    half = PATCH_PX // 2
    assert (xy >= half).all() and (xy[:, 0] <= width - half).all() and (xy[:, 1] <= height - half).all()
    spots = slide.shapes["synthetic_spots"]
    assert list(spots.index) == list(table.obs_names)
    np.testing.assert_allclose(np.column_stack([spots.geometry.x, spots.geometry.y]), xy)

    record = table.uns["histodecon"]["samples"]["synthetic"]
    assert record["mpp"] == 0.5
    assert record["spot_diameter_px"] == pytest.approx(110.0)
    assert (record["image_key"], record["shapes_key"]) == ("synthetic_image", "synthetic_spots")
    assert record["coordinate_system"] in get_transformation(image, get_all=True)
    np.testing.assert_allclose(spots["radius"], 55.0)
    assert table.uns["histodecon"]["synthetic"]["seed"] == 0


def test_spots_on_hexagonal_visium_grid(slide):
    xy = slide.tables["table"].obsm["spatial"]
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    np.testing.assert_allclose(distance.min(axis=1), 200.0)  # 100 um at 0.5 um/px
    assert (np.sum(np.isclose(distance, 200.0), axis=1) <= 6).all()
    obs = slide.tables["table"].obs
    assert ((obs["array_row"] + obs["array_col"]) % 2 == 0).all()  # Visium's checkerboard indices


def test_abundances_are_expected_cell_counts(slide):
    table = slide.tables["table"]
    abund = table.obsm["abund"]
    assert isinstance(abund, pd.DataFrame)
    assert list(abund.columns) == CELL_TYPES
    assert (abund.index == table.obs_names).all()
    assert abund.to_numpy().dtype == np.float64 and (abund.to_numpy() >= 0).all()
    # Area shares of the types sum to the tissue share of each spot disc: 1 inside the tissue.
    area = np.pi * 27.5**2
    share = (abund / (CELL_DENSITY * area)).sum(axis=1)
    assert share.max() <= 1 + 1e-9
    inside = table.obs["in_tissue"]
    assert share[inside].min() >= 0.5 and share[~inside].max() < 0.5
    assert share[inside].median() == pytest.approx(1.0)
    # Smooth domains: every type dominates somewhere, and neighbouring spots look alike.
    area_share = (abund / (CELL_DENSITY * area))[inside].to_numpy()
    assert (area_share.max(axis=0) > 0.6).all()
    xy = table.obsm["spatial"][inside.to_numpy()]
    i, j = np.nonzero(np.isclose(np.linalg.norm(xy[:, None] - xy[None], axis=-1), 200.0))
    for k, cell_type in enumerate(CELL_TYPES):
        assert np.corrcoef(area_share[i, k], area_share[j, k])[0, 1] > 0.7, cell_type


def test_glass_is_bright_and_tissue_is_stained(slide):
    table = slide.tables["table"]
    brightness = patches(slide, slice(None)).mean(axis=(1, 2, 3))
    inside = table.obs["in_tissue"].to_numpy()
    assert brightness[~inside].min() > brightness[inside].mean()
    image = image_of(slide)
    assert image[:, :20, :20].mean() > 230  # the corners are glass


def test_same_seed_same_slide_other_seed_other_slide():
    a = hd.datasets.synthetic(n_spots=40, seed=5)
    b = hd.datasets.synthetic(n_spots=40, seed=5)
    c = hd.datasets.synthetic(n_spots=40, seed=6)
    ta, tb, tc = (s.tables["table"] for s in (a, b, c))
    np.testing.assert_array_equal(image_of(a), image_of(b))
    pd.testing.assert_frame_equal(ta.obsm["abund"], tb.obsm["abund"])
    np.testing.assert_array_equal(ta.X.toarray(), tb.X.toarray())
    np.testing.assert_array_equal(ta.obsm["spatial"], tc.obsm["spatial"])  # same grid
    assert image_of(a).shape == image_of(c).shape
    assert np.mean(image_of(a) != image_of(c)) > 0.5
    assert np.abs(ta.obsm["abund"].to_numpy() - tc.obsm["abund"].to_numpy()).mean() > 0.5


def test_counts_do_not_change_image_or_truth():
    with_counts = hd.datasets.synthetic(n_spots=30, seed=2)
    without = hd.datasets.synthetic(n_spots=30, seed=2, counts=False)
    np.testing.assert_array_equal(image_of(with_counts), image_of(without))
    pd.testing.assert_frame_equal(with_counts.tables["table"].obsm["abund"], without.tables["table"].obsm["abund"])
    assert without.tables["table"].n_vars == 0


def test_counts_follow_abundance_times_signatures(slide, reference):
    table = slide.tables["table"]
    X = table.X.toarray() if sparse.issparse(table.X) else table.X
    assert table.n_vars == 300 and table.var_names.is_unique
    assert (X >= 0).all() and np.array_equal(X, np.round(X))
    inside = table.obs["in_tissue"].to_numpy()
    # The reference's mean profile per type is the signature: abund @ signature predicts the counts.
    ref_X = reference.X.toarray()
    signatures = np.stack([ref_X[(reference.obs["cell_type"] == t).to_numpy()].mean(0) for t in CELL_TYPES])
    expected = table.obsm["abund"].to_numpy() @ signatures
    assert np.corrcoef(np.log1p(expected[inside]).ravel(), np.log1p(X[inside]).ravel())[0, 1] > 0.9
    for cell_type, marker in zip(CELL_TYPES, ["EPCAM", "PTPRC", "COL1A1", "ADIPOQ", "PECAM1"], strict=True):
        counts = X[inside, table.var_names.get_loc(marker)]
        assert np.corrcoef(counts, table.obsm["abund"][cell_type][inside])[0, 1] > 0.8, marker


def test_reference_has_labels_and_same_genes(slide, reference):
    assert reference.n_obs == 5 * 60
    assert list(reference.obs["cell_type"].cat.categories) == CELL_TYPES
    assert (reference.obs["cell_type"].value_counts() == 60).all()
    assert list(reference.var_names) == list(slide.tables["table"].var_names)
    X = reference.X.toarray()
    assert (X >= 0).all() and np.array_equal(X, np.round(X))
    labels = reference.obs["cell_type"].to_numpy()
    for cell_type, marker in zip(CELL_TYPES, ["EPCAM", "PTPRC", "COL1A1", "ADIPOQ", "PECAM1"], strict=True):
        column = X[:, reference.var_names.get_loc(marker)]
        assert column[labels == cell_type].mean() > 10 * column[labels != cell_type].mean(), marker
    # Signatures are fixed biology: another reference seed draws other cells of the same types.
    again = hd.datasets.synthetic_reference(n_cells_per_type=60, seed=1).X.toarray()
    assert not np.array_equal(X, again)
    assert np.corrcoef(np.log1p(X.mean(0)), np.log1p(again.mean(0)))[0, 1] > 0.99


def test_colour_statistics_predict_abundance_on_another_slide(slide, other_slide):
    """Ridge regression on simple colour statistics, trained on one slide, works on a second."""

    def data(sdata):
        table = sdata.tables["table"]
        inside = table.obs["in_tissue"].to_numpy()
        return colour_features(patches(sdata, inside)), table.obsm["abund"].to_numpy()[inside]

    (X_train, Y_train), (X_test, Y_test) = data(slide), data(other_slide)
    predicted = ridge(X_train, Y_train)(X_test)
    cc = [np.corrcoef(predicted[:, k], Y_test[:, k])[0, 1] for k in range(len(CELL_TYPES))]
    assert np.mean(cc) > 0.5, dict(zip(CELL_TYPES, cc, strict=True))
    assert min(cc) > 0.3, dict(zip(CELL_TYPES, cc, strict=True))


def test_resolution_and_spot_size(tmp_path):
    sdata = hd.datasets.synthetic(n_spots=20, seed=3, mpp=1.0, spot_diameter_um=65.0, sample="s1", counts=False)
    table = sdata.tables["table"]
    assert set(sdata.images) == {"s1_image"} and set(sdata.shapes) == {"s1_spots"}
    record = table.uns["histodecon"]["samples"]["s1"]
    assert record["mpp"] == 1.0 and record["spot_diameter_px"] == pytest.approx(65.0)
    xy = table.obsm["spatial"]
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    np.testing.assert_allclose(distance.min(axis=1), 100.0)
    # The truth lives in micrometres: the same slide at another resolution has the same abundances.
    finer = hd.datasets.synthetic(n_spots=20, seed=3, mpp=0.5, spot_diameter_um=65.0, counts=False)
    pd.testing.assert_frame_equal(finer.tables["table"].obsm["abund"], table.obsm["abund"])
    assert image_of(finer).shape[1] == pytest.approx(2 * image_of(sdata).shape[1], abs=1)
    # Written to zarr and read back, the truth survives.
    sdata.write(tmp_path / "slide.zarr")
    back = read_zarr(tmp_path / "slide.zarr").tables["table"]
    np.testing.assert_allclose(np.asarray(back.obsm["abund"]), table.obsm["abund"].to_numpy())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_spots": 0}, ValueError, "n_spots"),
        ({"n_spots": 2.5}, TypeError, "n_spots"),
        ({"seed": -1}, ValueError, "seed"),
        ({"mpp": 0}, ValueError, "mpp"),
        ({"spot_diameter_um": 150.0}, ValueError, "spot_diameter_um"),
        ({"sample": ""}, ValueError, "sample"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, error, match):
    with pytest.raises(error, match=match):
        hd.datasets.synthetic(**kwargs)


def test_reference_bad_arguments():
    with pytest.raises(ValueError, match="n_cells_per_type"):
        hd.datasets.synthetic_reference(n_cells_per_type=0)
