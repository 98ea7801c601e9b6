import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
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
        adata.uns["histodecon"] = {"samples": {s: {"mpp": m} for s, m in mpp.items()}}
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


@pytest.mark.parametrize("kwargs", [{"cutoff": 0}, {"cutoff": 1.0}, {"length_scale_um": -5}, {"length_scale_px": 0}])
def test_bad_parameters(kwargs):
    adata = _three_spots()
    with pytest.raises(ValueError):
        hd.gr.rbf_graph(adata, **kwargs)
    assert "rbf_connectivities" not in adata.obsp


def test_missing_mpp_and_coordinates():
    adata = _table([[0, 0], [1, 1]], ["s", "s"])
    with pytest.raises(KeyError, match="length_scale_px"):
        hd.gr.rbf_graph(adata)
    del adata.obsm["spatial"]
    with pytest.raises(KeyError, match="spatial"):
        hd.gr.rbf_graph(adata, length_scale_px=1)
