import warnings

import anndata as ad
import esda
import libpysal
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse, stats
from scipy.ndimage import gaussian_filter

import histodecon as hd


def _smooth_fields(rng, side, k, sigma=2.0):
    noise = rng.normal(size=(k, side, side))
    return np.stack([gaussian_filter(f, sigma, mode="wrap").ravel() for f in noise], axis=1)


def _slide(seed=0, side=15, samples=("s",), k=4):
    """A square grid (100 um pitch at 0.5 um/px) per sample, smooth abundances, types 0 and 1 colocalised."""
    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 200.0
    tables = []
    for sample in samples:
        fields = _smooth_fields(rng, side, k)
        fields[:, 1] += 0.8 * fields[:, 0]
        t = AnnData(np.zeros((len(xy), 0), dtype=np.float32))
        t.obs_names = [f"{sample}_{i}" for i in range(len(xy))]
        t.obs["sample"] = sample
        t.obsm["spatial"] = xy.copy()
        t.obsm["abund"] = pd.DataFrame(np.exp(fields), index=t.obs_names, columns=[f"type{j}" for j in range(k)])
        tables.append(t)
    adata = ad.concat(tables)
    adata.obs["sample"] = pd.Categorical(adata.obs["sample"])
    adata.uns["histodecon"] = {"samples": {s: {"mpp": 0.5, "spot_diameter_px": 110.0} for s in samples}}
    hd.gr.rbf_graph(adata, length_scale_um=120)
    return adata


def _spatialdm_reference(X, W):
    """SpatialDM's Moran_R and Moran_R_std (non-trace form), pair by pair, as published."""
    k, N = X.shape[1], W.shape[0]
    Xs = (X - X.mean(axis=0)) / X.std(axis=0)
    nm = N**2 * W.multiply(W.T).sum() - 2 * N * (W.sum(0) @ W.sum(1)).sum() + W.sum() ** 2
    std = np.sqrt(nm / (N**2 * (N - 1) ** 2))
    R = np.empty((k, k))
    for a in range(k):
        for b in range(k):
            R[a, b] = (W @ Xs[:, [a]] * Xs[:, [b]]).sum() / W.sum()
    return R, R / std


def _result(adata, key="abund_moranR"):
    return adata.uns[key]


def test_equals_spatialdm_reference():
    adata = _slide()
    hd.gr.moran_r(adata, key="abund")
    res = _result(adata)
    R_ref, z_ref = _spatialdm_reference(adata.obsm["abund"].to_numpy(), adata.obsp["rbf_connectivities"])
    np.testing.assert_allclose(res["R"].to_numpy(), R_ref, rtol=1e-10, atol=1e-12)
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(res["z"].to_numpy()[off], z_ref[off], rtol=1e-10)
    np.testing.assert_allclose(res["pval"].to_numpy()[off], stats.norm.sf(z_ref[off]), rtol=1e-8)
    assert list(res["R"].index) == list(res["R"].columns) == [f"type{j}" for j in range(4)]
    np.testing.assert_allclose(res["R"], res["R"].T, atol=1e-12)
    assert res["R"].loc["type0", "type1"] > 0.3 and res["pval"].loc["type0", "type1"] < 1e-3


def test_equals_esda_moran_bv_and_moran():
    adata = _slide()
    X = adata.obsm["abund"].to_numpy()
    W = adata.obsp["rbf_connectivities"]
    w = libpysal.weights.W.from_sparse(W)  # our W sums to n, so esda's "o" (original) matches R = Z'WZ / sum(W)
    hd.gr.moran_r(adata, key="abund")
    R = _result(adata)["R"].to_numpy()
    for a in range(4):
        assert R[a, a] == pytest.approx(esda.Moran(X[:, a], w, transformation="o", permutations=0).I, rel=1e-10)
        for b in range(4):
            if a != b:
                bv = esda.Moran_BV(X[:, a], X[:, b], w, transformation="o", permutations=0)
                assert R[a, b] == pytest.approx(bv.I, rel=1e-10)

    # Row-standardised weights (esda's default "r") give an asymmetric R = esda's Moran_BV(x=a, y=b).
    rows = np.asarray(W.sum(axis=1)).ravel()
    adata.obsp["row_std"] = sparse.diags(1 / rows) @ W
    hd.gr.moran_r(adata, key="abund", connectivity_key="row_std", key_added="r")
    R_r = _result(adata, "r")["R"].to_numpy()
    w_r = libpysal.weights.W.from_sparse(W)
    for a, b in [(0, 1), (1, 0), (2, 3), (3, 2), (0, 3)]:
        assert R_r[a, b] == pytest.approx(
            esda.Moran_BV(X[:, a], X[:, b], w_r, transformation="r", permutations=0).I, rel=1e-10
        )
    assert R_r[0, 1] != pytest.approx(R_r[1, 0], rel=1e-6)


def test_diagonal_null_matches_esda_normality_without_self_weights():
    adata = _slide()
    W = adata.obsp["rbf_connectivities"].tolil()
    W.setdiag(0)
    W = sparse.csr_matrix(W)
    W *= W.shape[0] / W.sum()
    adata.obsp["no_self"] = W
    hd.gr.moran_r(adata, key="abund", connectivity_key="no_self")
    z = _result(adata)["z"].to_numpy()
    w = libpysal.weights.W.from_sparse(W)
    X = adata.obsm["abund"].to_numpy()
    for a in range(4):
        m = esda.Moran(X[:, a], w, transformation="o", permutations=0)
        assert z[a, a] == pytest.approx(m.z_norm, rel=1e-8)


def test_analytic_pvalues_uniform_under_permuted_null():
    rng = np.random.default_rng(3)
    adata = _slide(side=20)
    # 40 columns, each a random shuffle of a skewed value vector: no spatial structure, no pairing.
    values = np.exp(rng.normal(size=adata.n_obs))
    cols = np.stack([rng.permutation(values) for _ in range(40)], axis=1)
    adata.obsm["null"] = pd.DataFrame(cols, index=adata.obs_names, columns=[f"c{i}" for i in range(40)])
    hd.gr.moran_r(adata, key="null")
    res = _result(adata, "null_moranR")
    upper = np.triu_indices(40, 1)
    p = res["pval"].to_numpy()[upper]
    assert stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.02 < (p < 0.05).mean() < 0.09
    z_diag = np.diag(res["z"].to_numpy())
    assert abs(z_diag.mean()) < 0.5 and 0.6 < z_diag.std() < 1.5


def _iid_abundances(adata, seed):
    """Spatially random columns (the analytic null's assumption), two pairs associated within spots."""
    X = np.random.default_rng(seed).normal(size=(adata.n_obs, 5))
    X[:, 1] += 0.6 * X[:, 0]
    X[:, 3] -= 0.3 * X[:, 2]
    return pd.DataFrame(np.exp(X / 2), index=adata.obs_names, columns=list("abcde"))


def test_permutation_pvalues_agree_with_analytic():
    adata = _slide(side=18)
    adata.obsm["iid"] = _iid_abundances(adata, seed=0)
    hd.gr.moran_r(adata, key="iid", n_perms=1000, seed=1)
    res = _result(adata, "iid_moranR")
    perm, analytic = res["pval_perm"].to_numpy(), res["pval"].to_numpy()
    np.testing.assert_allclose(perm, perm.T)
    assert np.all((perm >= 1 / 1001) & (perm <= 1))
    assert np.abs(perm - analytic).max() < 0.08  # Monte Carlo sd <= 0.016
    assert perm[0, 1] == pytest.approx(1 / 1001)  # associated within spots: no permutation reaches it
    assert perm[2, 3] > 0.95  # negative association: one-sided p near 1
    assert res["params"]["n_perms"] == 1000
    again = _slide(side=18)
    again.obsm["iid"] = _iid_abundances(again, seed=0)
    hd.gr.moran_r(again, key="iid", n_perms=1000, seed=1)
    np.testing.assert_array_equal(_result(again, "iid_moranR")["pval_perm"], perm)


def test_constant_column_gives_nan_and_warning():
    adata = _slide()
    abund = adata.obsm["abund"].copy()
    abund["type2"] = 3.0
    adata.obsm["abund"] = abund
    with pytest.warns(UserWarning, match="type2"):
        hd.gr.moran_r(adata, key="abund", n_perms=20)
    res = _result(adata)
    for name in ("R", "z", "pval", "pval_perm"):
        frame = res[name]
        assert frame.loc["type2"].isna().all() and frame["type2"].isna().all()
        assert np.isfinite(frame.drop(index="type2", columns="type2").to_numpy()).all()
    reference = _slide()
    reference.obsm["abund"] = reference.obsm["abund"].drop(columns="type2")
    hd.gr.moran_r(reference, key="abund")
    np.testing.assert_allclose(res["R"].drop(index="type2", columns="type2"), _result(reference)["R"])


def test_pooled_samples_z_scored_per_sample():
    adata = _slide(samples=("a", "b"))
    hd.gr.moran_r(adata, key="abund")
    pooled = _result(adata)["R"].to_numpy()
    W = adata.obsp["rbf_connectivities"]
    parts = []
    for s in ("a", "b"):
        hd.gr.moran_r(adata, key="abund", sample=s, key_added=s)
        mask = (adata.obs["sample"] == s).to_numpy()
        parts.append(W[mask][:, mask].sum() * _result(adata, s)["R"].to_numpy())
        assert _result(adata, s)["params"]["n_spots"] == mask.sum()
    np.testing.assert_allclose(pooled, sum(parts) / W.sum(), rtol=1e-10)
    # A per-sample shift or scale of the abundances changes nothing.
    shifted = adata.obsm["abund"].copy()
    shifted.loc[(adata.obs["sample"] == "b").to_numpy()] *= 5
    shifted.loc[(adata.obs["sample"] == "b").to_numpy()] += 2
    adata.obsm["shifted"] = shifted
    hd.gr.moran_r(adata, key="shifted")
    np.testing.assert_allclose(_result(adata, "shifted_moranR")["R"].to_numpy(), pooled, rtol=1e-10)


def test_errors_leave_data_untouched():
    adata = _slide(samples=("a", "b"))
    with pytest.raises(KeyError, match="rbf_graph"):
        hd.gr.moran_r(adata, key="abund", connectivity_key="missing")
    with pytest.raises(KeyError, match="obsm"):
        hd.gr.moran_r(adata, key="pred_abund")
    with pytest.raises(KeyError, match="known samples"):
        hd.gr.moran_r(adata, key="abund", sample="zzz")
    adata.obsp["dense"] = sparse.csr_matrix(np.ones((adata.n_obs, adata.n_obs)))
    with pytest.raises(ValueError, match="different samples"):
        hd.gr.moran_r(adata, key="abund", connectivity_key="dense")
    with pytest.raises(ValueError, match="n_perms"):
        hd.gr.moran_r(adata, key="abund", n_perms=0)
    bad = adata.obsm["abund"].copy()
    bad.iloc[0, 1] = np.nan
    adata.obsm["bad"] = bad
    with pytest.raises(ValueError, match="type1"):
        hd.gr.moran_r(adata, key="bad")
    assert not any(key.endswith("moranR") for key in adata.uns)
    hd.gr.moran_r(adata, key="abund")
    first = _result(adata)["R"].copy()
    with pytest.raises(KeyError, match="overwrite=True"):
        hd.gr.moran_r(adata, key="abund", sample="a")
    pd.testing.assert_frame_equal(_result(adata)["R"], first)
    copied = hd.gr.moran_r(adata, key="abund", sample="a", overwrite=True, copy=True)
    pd.testing.assert_frame_equal(_result(adata)["R"], first)
    assert copied.uns["abund_moranR"]["params"]["sample"] == "a"


def test_plain_array_and_spatialdata():
    sdata = hd.datasets.synthetic(n_spots=60, counts=False, seed=2)
    table = sdata.tables["table"]
    table.obsm["arr"] = table.obsm["abund"].to_numpy()
    hd.gr.rbf_graph(sdata, length_scale_um=150)
    hd.gr.moran_r(sdata, key="arr")
    hd.gr.moran_r(sdata, key="abund")
    np.testing.assert_allclose(table.uns["arr_moranR"]["R"].to_numpy(), table.uns["abund_moranR"]["R"].to_numpy())
    assert list(table.uns["arr_moranR"]["R"].columns) == [str(i) for i in range(table.obsm["arr"].shape[1])]


def test_sparse_obsm_equals_dense():
    adata = _slide(seed=3)
    adata.obsm["sparse"] = sparse.csr_matrix(adata.obsm["abund"].to_numpy())
    hd.gr.moran_r(adata, key="abund")
    hd.gr.moran_r(adata, key="sparse")
    np.testing.assert_allclose(_result(adata, "sparse_moranR")["R"].to_numpy(), _result(adata)["R"].to_numpy())


def test_unused_sample_categories_are_skipped():
    adata = _slide(seed=4)
    reference = hd.gr.moran_r(adata, key="abund", copy=True).uns["abund_moranR"]["R"]
    adata.obs["sample"] = adata.obs["sample"].cat.add_categories(["gone"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        hd.gr.rbf_graph(adata, length_scale_um=120, overwrite=True)
    hd.gr.moran_r(adata, key="abund")
    pd.testing.assert_frame_equal(_result(adata)["R"], reference)


@pytest.mark.data
def test_her2st_serial_sections_colocalise_alike(her2st_dir):
    """Stereoscope proportions: serial sections C2/C3 share their colocalisation, patient B differs."""
    R = {}
    for section in ("C2", "C3", "B4"):
        sdata = hd.datasets.her2st(section, data_dir=her2st_dir)
        hd.gr.rbf_graph(sdata)
        table = sdata.tables["table"]
        assert 8 < table.obsp["rbf_connectivities"].nnz / table.n_obs < 14  # ST grid, 430 um reach
        hd.gr.moran_r(sdata, key="proportions")
        R[section] = table.uns["proportions_moranR"]
    serial = hd.metrics.colocalization_similarity(R["C2"], R["C3"]).attrs["mean"]
    other = hd.metrics.colocalization_similarity(R["C2"], R["B4"]).attrs["mean"]
    assert serial["cosine"] > 0.85 and serial["pearson"] > 0.85
    assert other["cosine"] < serial["cosine"] - 0.3
    assert R["C2"]["R"].loc["Epithelial", "T-cells"] < 0 and R["C2"]["pval"].loc["Epithelial", "Epithelial"] < 1e-6


def test_nan_spots_named_or_omitted_with_their_graph_edges(caplog):
    adata = _slide(samples=("a", "b"))
    abund = adata.obsm["abund"].copy()
    holes = [3, 40, 230]  # two spots of sample a, one of b
    abund.iloc[holes[:2], 1] = np.nan
    abund.iloc[holes[2], 2] = np.inf
    adata.obsm["holes"] = abund
    named = [adata.obs_names[i] for i in holes]
    with pytest.raises(ValueError, match=r"3 spots have missing .* \(columns \['type1', 'type2'\]\), e\.g\. \['a_3'"):
        hd.gr.moran_r(adata, key="holes")
    with caplog.at_level("WARNING", logger="histodecon"):
        hd.gr.moran_r(adata, key="holes", nan_policy="omit", n_perms=30)
    assert "Omitting 3 spots" in caplog.text and all(name in caplog.text for name in named)
    # the reference: the same table without those spots, whose graph (obsp) is sliced alike;
    # mutation: keeping the omitted spots in W (or dropping only the data rows) changes R and z
    kept = adata[~adata.obs_names.isin(named)].copy()
    hd.gr.moran_r(kept, key="holes", n_perms=30, overwrite=True)
    omitted, reference = _result(adata, "holes_moranR"), _result(kept, "holes_moranR")
    for name in ("R", "z", "pval", "pval_perm"):
        pd.testing.assert_frame_equal(omitted[name], reference[name])
    assert omitted["params"]["n_spots"] == adata.n_obs - 3 and omitted["params"]["n_omitted"] == 3
    # spots of another sample do not count when one sample is analysed
    hd.gr.moran_r(adata, key="holes", sample="b", nan_policy="omit", key_added="b_only")
    assert _result(adata, "b_only")["params"]["n_omitted"] == 1
    with pytest.raises(ValueError, match="`nan_policy` must be 'raise' or 'omit'"):
        hd.gr.moran_r(adata, key="holes", nan_policy="drop", key_added="other")
