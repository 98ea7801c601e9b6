import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

import histodecon as hd
from histodecon.gr._rbf import truncation_radius
from histodecon.io._build import build_sdata


def _table(xy, samples=None, mpp=None):
    xy = np.asarray(xy, dtype=float)
    adata = AnnData(np.zeros((len(xy), 0), dtype=np.float32))
    adata.obsm["spatial"] = xy
    if samples is not None:
        adata.obs["sample"] = pd.Categorical(samples)
    if mpp is not None:
        adata.uns["histodecon"] = {"samples": {s: {"mpp": m, "spot_diameter_px": 55 / m} for s, m in mpp.items()}}
    return adata


def _three_spots():
    # mpp 0.5: spot 1 is 50 um right of spot 0, spot 2 is 150 um below it.
    return _table([[0, 0], [100, 0], [0, 300]], ["s"] * 3, {"s": 0.5})


def test_three_spot_weights_by_hand():
    adata = _three_spots()
    hd.gr.rbf_graph(adata, length_scale_um=50, cutoff=0.2)  # l = 100 px, radius 179.4 px
    w01 = np.exp(-0.5)  # d = l
    scale = 3 / (3 + 2 * w01)
    expected = scale * np.array([[1, w01, 0], [w01, 1, 0], [0, 0, 1]])
    W = adata.obsp["rbf_connectivities"]
    np.testing.assert_allclose(W.toarray(), expected)
    assert W.format == "csr"
    D = adata.obsp["rbf_distances"]
    assert D.nnz == 2
    assert D[0, 1] == D[1, 0] == pytest.approx(100)
    neighbors = adata.uns["rbf_neighbors"]
    assert neighbors["connectivities_key"] == "rbf_connectivities"
    assert neighbors["distances_key"] == "rbf_distances"
    assert neighbors["params"]["length_scale_px"] == {"s": 100}
    assert neighbors["params"]["radius_px"]["s"] == pytest.approx(100 * np.sqrt(-2 * np.log(0.2)))


def test_pixels_need_no_mpp_and_match_micrometres():
    in_um = _three_spots()
    hd.gr.rbf_graph(in_um, length_scale_um=50)
    in_px = _table(in_um.obsm["spatial"])  # no sample, no mpp record
    hd.gr.rbf_graph(in_px, length_scale_px=100)
    np.testing.assert_allclose(in_px.obsp["rbf_connectivities"].toarray(), in_um.obsp["rbf_connectivities"].toarray())
    # A larger length scale in um reaches spot 2 (150 um away) through the mpp conversion.
    hd.gr.rbf_graph(in_um, length_scale_um=100, overwrite=True)
    assert in_um.obsp["rbf_connectivities"][0, 2] > 0


def test_matches_dense_truncated_kernel():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 2000, size=(150, 2))
    adata = _table(xy, ["s"] * 150, {"s": 2.0})
    hd.gr.rbf_graph(adata, length_scale_um=300, cutoff=0.3)
    l_px = 150.0
    d = cdist(xy, xy)
    dense = np.exp(-(d**2) / (2 * l_px**2)) * (d <= truncation_radius(l_px, 0.3))
    dense *= len(xy) / dense.sum()
    W = adata.obsp["rbf_connectivities"]
    np.testing.assert_allclose(W.toarray(), dense, atol=1e-12)
    assert abs(W - W.T).max() == 0
    assert W.sum() == pytest.approx(150)
    kept = W.toarray()[dense > 0] / W.toarray().max()  # diagonal is the largest weight, exp(0)
    assert kept.min() >= 0.3 - 1e-12
    D = adata.obsp["rbf_distances"].toarray()
    off = (dense > 0) & ~np.eye(150, dtype=bool)
    np.testing.assert_allclose(D[off], d[off])
    assert D.max() <= truncation_radius(l_px, 0.3)


def test_samples_never_connected_and_use_their_own_mpp():
    # Two samples at the same pixel coordinates, different resolutions.
    xy = np.array([[0, 0], [100, 0], [0, 0], [100, 0]], dtype=float)
    adata = _table(xy, ["a", "a", "b", "b"], {"a": 1.0, "b": 0.25})
    hd.gr.rbf_graph(adata, length_scale_um=100)  # a: l = 100 px; b: l = 400 px
    W = adata.obsp["rbf_connectivities"].toarray()
    assert np.all(W[:2, 2:] == 0) and np.all(W[2:, :2] == 0)
    np.testing.assert_allclose(W[:2, :2].sum(), 2)
    np.testing.assert_allclose(W[2:, 2:].sum(), 2)
    np.testing.assert_allclose(W[0, 1] / W[0, 0], np.exp(-0.5))
    np.testing.assert_allclose(W[2, 3] / W[2, 2], np.exp(-(100**2) / (2 * 400**2)))
    assert adata.uns["rbf_neighbors"]["params"]["length_scale_px"] == {"a": 100, "b": 400}


def test_overwrite_copy_and_spatialdata():
    adata = _three_spots()
    hd.gr.rbf_graph(adata, key_added="g")
    before = adata.obsp["g_connectivities"].copy()
    with pytest.raises(KeyError, match="overwrite=True"):
        hd.gr.rbf_graph(adata, key_added="g", length_scale_um=10)
    assert (adata.obsp["g_connectivities"] != before).nnz == 0
    copied = hd.gr.rbf_graph(adata, key_added="h", copy=True)
    assert "h_connectivities" in copied.obsp and "h_connectivities" not in adata.obsp

    sdata = build_sdata(
        np.zeros((3, 64, 64), np.uint8), [[10, 10], [20, 10], [50, 50]], sample="x", mpp=1.0, spot_diameter_px=4
    )
    out = hd.gr.rbf_graph(sdata, length_scale_um=10, copy=True)
    assert "rbf_connectivities" in out.tables["table"].obsp
    assert "rbf_connectivities" not in sdata.tables["table"].obsp
    assert hd.gr.rbf_graph(sdata, length_scale_um=10) is None
    assert sdata.tables["table"].obsp["rbf_connectivities"].sum() == pytest.approx(3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cutoff": 0}, "`cutoff` must lie strictly between 0 and 1, got 0;"),
        ({"cutoff": 1.0}, "`cutoff` must lie strictly between 0 and 1, got 1.0;"),
        ({"length_scale_um": -5}, "`length_scale_um` must be a positive number .* got -5"),
        ({"length_scale_px": 0}, "`length_scale_px` must be a positive number .* got 0"),
    ],
)
def test_bad_parameters(kwargs, message):
    adata = _three_spots()
    with pytest.raises(ValueError, match=message):
        hd.gr.rbf_graph(adata, **kwargs)
    assert "rbf_connectivities" not in adata.obsp


def test_missing_mpp_and_coordinates():
    adata = _table([[0, 0], [1, 1]], ["s", "s"])
    with pytest.raises(KeyError, match="length_scale_px"):
        hd.gr.rbf_graph(adata)
    del adata.obsm["spatial"]
    with pytest.raises(KeyError, match="spatial"):
        hd.gr.rbf_graph(adata, length_scale_px=1)


def _reference_weights(xy, length_scale_px, cutoff=0.2):
    """The shortest scipy route to the weights (benchmarks/moran.py times against it)."""
    tree = cKDTree(xy)
    W = tree.sparse_distance_matrix(tree, truncation_radius(length_scale_px, cutoff), output_type="coo_matrix")
    W.data = np.exp(-(W.data**2) / (2.0 * length_scale_px**2))
    W = W.tocsr()
    W *= len(xy) / W.sum()
    return W


def _jittered_hex_grid(n, pitch, seed):
    side = int(np.ceil(np.sqrt(n)))
    rows, cols = np.divmod(np.arange(n), side)
    xy = np.stack([(cols + 0.5 * (rows % 2)) * pitch, rows * pitch * np.sqrt(3) / 2], axis=1)
    return xy + np.random.default_rng(seed).normal(scale=0.05 * pitch, size=xy.shape)


def test_weights_distances_and_moran_equal_the_scipy_reference():
    xy = _jittered_hex_grid(2000, 200.0, seed=3)  # Visium pitch (100 um) at 0.5 um/px
    abund = np.exp(np.random.default_rng(4).normal(size=(len(xy), 6)))
    adata = _table(xy, ["s"] * len(xy), {"s": 0.5})
    adata.obsm["abund"] = abund
    abund_before = abund.copy()
    hd.gr.rbf_graph(adata)  # 240 um = 480 px
    hd.gr.moran_r(adata, key="abund")
    W_ref = _reference_weights(xy, 480.0)
    W = adata.obsp["rbf_connectivities"]
    assert W.has_canonical_format and W.nnz == W_ref.nnz
    assert abs(W - W_ref).max() < 1e-12
    Z = (abund - abund.mean(axis=0)) / abund.std(axis=0)
    R_ref = Z.T @ (W_ref @ Z) / W_ref.sum()
    np.testing.assert_allclose(adata.uns["abund_moranR"]["R"].to_numpy(), R_ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(adata.obsm["abund"], abund_before)  # z-scored a copy, not the table
    D = adata.obsp["rbf_distances"]
    assert D.has_canonical_format and D.nnz == W.nnz - len(xy)
    i, j = D.nonzero()
    np.testing.assert_allclose(D.data, np.linalg.norm(xy[i] - xy[j], axis=1), rtol=1e-12)


def test_interleaved_samples_match_each_sample_alone():
    # Two samples' spots interleaved in the table, each its own block, scaled to its size.
    xy = np.concatenate([_jittered_hex_grid(300, 200.0, seed=5), _jittered_hex_grid(200, 100.0, seed=6)])
    samples = np.array(["a"] * 300 + ["b"] * 200)
    order = np.random.default_rng(7).permutation(500)
    adata = _table(xy[order], samples[order], {"a": 0.5, "b": 1.0})
    hd.gr.rbf_graph(adata)
    W = adata.obsp["rbf_connectivities"]
    for name, length_px in (("a", 480.0), ("b", 240.0)):
        rows = np.flatnonzero(samples[order] == name)
        expected = _reference_weights(xy[order][rows], length_px)
        assert abs(W[rows][:, rows] - expected).max() < 1e-12
    assert W.sum() == pytest.approx(500)


def test_badly_scaled_coordinates_refused_before_the_graph():
    # Array indices instead of pixels: every spot within the radius of every other.
    side = np.arange(60)
    xy = np.stack(np.meshgrid(side, side), -1).reshape(-1, 2) * 0.01
    adata = _table(xy, ["s"] * len(xy), {"s": 0.5})
    with pytest.raises(ValueError, match="not full-resolution pixels"):
        hd.gr.rbf_graph(adata)
    assert "rbf_connectivities" not in adata.obsp
