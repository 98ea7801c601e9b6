import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.colors import to_rgba
from matplotlib.image import AxesImage, imread
from scipy.ndimage import gaussian_filter

import histodecon as hd
from histodecon.pl._colocalization import cluster_order

TYPES = ["tumour", "immune", "stroma", "fat", "vessel"]


@pytest.fixture
def adata(monkeypatch):
    rng = np.random.default_rng(0)
    side = 14
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 200.0
    fields = np.stack([gaussian_filter(f, 2, mode="wrap").ravel() for f in rng.normal(size=(5, side, side))], 1)
    fields[:, 1] += fields[:, 0]  # immune with tumour
    fields[:, 4] += fields[:, 2]  # vessel with stroma
    a = AnnData(np.zeros((len(xy), 0), dtype=np.float32))
    a.obs["sample"] = pd.Categorical(["s"] * len(xy))
    a.obsm["spatial"] = xy
    a.uns["histodecon"] = {"samples": {"s": {"mpp": 0.5, "spot_diameter_px": 100.0}}}
    a.obsm["abund"] = pd.DataFrame(np.exp(fields), index=a.obs_names, columns=TYPES)
    pred = np.exp(fields + rng.normal(0, 0.3, fields.shape))
    a.obsm["pred_abund"] = pd.DataFrame(pred[:, ::-1], index=a.obs_names, columns=TYPES[::-1])
    monkeypatch.setattr(hd.settings, "verbosity", 1)
    hd.gr.rbf_graph(a, length_scale_um=120)
    hd.gr.moran_r(a, key="abund")
    hd.gr.moran_r(a, key="pred_abund")
    return a


def _heatmaps(fig):
    return [ax for ax in fig.axes if any(isinstance(im, AxesImage) for im in ax.get_images())]


def test_panels_order_and_shared_scale(adata, tmp_path):
    path = tmp_path / "coloc.png"
    fig = hd.pl.colocalization(adata, titles=["truth", "predicted"], save=path, return_fig=True)
    heatmaps = _heatmaps(fig)
    assert len(heatmaps) == 2
    images = [ax.get_images()[0] for ax in heatmaps]
    # One colour scale, symmetric about 0, spanning the off-diagonal R of both panels; one colour bar.
    clims = {im.get_clim() for im in images}
    assert len(clims) == 1
    vmin, vmax = clims.pop()
    assert vmin == -vmax
    off = ~np.eye(5, dtype=bool)
    expected = max(np.abs(adata.uns[k]["R"].to_numpy()[off]).max() for k in ("abund_moranR", "pred_abund_moranR"))
    assert vmax == pytest.approx(expected)
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    # The truth's clustering order is reused for the prediction, whose columns came in reverse.
    order, _ = cluster_order(adata.uns["abund_moranR"]["R"], "average")
    for ax, key in zip(heatmaps, ("abund_moranR", "pred_abund_moranR"), strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == order
        np.testing.assert_allclose(ax.get_images()[0].get_array(), adata.uns[key]["R"].loc[order, order].to_numpy())
    assert [t.get_text() for t in heatmaps[0].get_yticklabels()] == order
    assert {ax.get_title() for ax in fig.axes} >= {"truth", "predicted"}
    # Colocalised pairs sit next to each other.
    assert abs(order.index("tumour") - order.index("immune")) == 1
    assert abs(order.index("stroma") - order.index("vessel")) == 1
    pixels = imread(path)
    assert pixels.shape[1] > pixels.shape[0] > 300 and pixels.std() > 0.05


def test_nan_is_grey_and_annotations(adata):
    pred = adata.obsm["pred_abund"].copy()
    pred["fat"] = 1.0
    adata.obsm["pred_abund"] = pred
    with pytest.warns(UserWarning, match="fat"):
        hd.gr.moran_r(adata, key="pred_abund", overwrite=True)
    fig = hd.pl.colocalization(adata, annotate=True, return_fig=True)
    image = _heatmaps(fig)[1].get_images()[0]
    assert image.get_cmap().get_bad() == pytest.approx(to_rgba("lightgrey"))
    texts = [t.get_text() for t in _heatmaps(fig)[0].texts]
    assert len(texts) == 25 and len(_heatmaps(fig)[1].texts) == 25 - 9


def test_accepts_uns_keys_and_reports_missing(adata):
    adata.uns["mine"] = adata.uns.pop("pred_abund_moranR")
    fig = hd.pl.colocalization(adata, keys=["abund", "mine"], return_fig=True)
    assert len(_heatmaps(fig)) == 2
    with pytest.raises(KeyError, match=r"hd.gr.moran_r\(data, key='pred_abund'\)"):
        hd.pl.colocalization(adata)
    with pytest.raises(ValueError, match="one title per key"):
        hd.pl.colocalization(adata, keys=["abund", "mine"], titles=["x"])
    adata.obsm["few"] = adata.obsm["abund"].iloc[:, :3]
    hd.gr.moran_r(adata, key="few")
    with pytest.raises(ValueError, match=r"only in 'abund' \['fat', 'vessel'\]"):
        hd.pl.colocalization(adata, keys=["abund", "few"])


def test_cluster_order_known_blocks():
    names = ["a", "b", "c", "d"]
    R = pd.DataFrame(
        [[1.0, -0.1, 0.5, -0.2], [-0.1, 1.0, -0.2, 0.6], [0.5, -0.2, 1.0, -0.1], [-0.2, 0.6, -0.1, 1.0]],
        index=names,
        columns=names,
    )
    order, link = cluster_order(R, "average")
    assert {frozenset(order[:2]), frozenset(order[2:])} == {frozenset("ac"), frozenset("bd")}
    assert link[0, 2] == pytest.approx(0)  # b-d, the most colocalised pair, joins first


@pytest.fixture(scope="module")
def squidpy_slide():
    """A synthetic slide's abundances with squidpy's three cluster statistics on the dominant cell type."""
    import squidpy as sq

    sdata = hd.datasets.synthetic(n_spots=300, seed=3, counts=False)
    hd.gr.rbf_graph(sdata, length_scale_um=150)
    hd.gr.moran_r(sdata, key="abund")
    adata = hd.get.abundances(sdata, "abund")
    adata.obs["dominant"] = adata.to_df().idxmax(axis=1).astype("category")
    sq.gr.nhood_enrichment(adata, cluster_key="dominant", connectivity_key="rbf", n_perms=100, seed=0)
    sq.gr.co_occurrence(adata, cluster_key="dominant", interval=np.array([0.0, 150.0, 300.0, 600.0]))
    sq.gr.interaction_matrix(adata, cluster_key="dominant", connectivity_key="rbf")
    return adata


def test_squidpy_panels_matched_by_name_with_one_scale_per_kind(squidpy_slide):
    adata = squidpy_slide
    keys = ["abund", "dominant_nhood_enrichment", "dominant_co_occurrence", "dominant_interactions"]
    fig = hd.pl.colocalization(adata, keys=keys, distance=280, return_fig=True)
    heatmaps = _heatmaps(fig)
    assert len(heatmaps) == 4
    order, _ = cluster_order(adata.uns["abund_moranR"]["R"], "average")
    for ax in heatmaps:  # one row / column order for all, clustered on Moran's R
        assert [t.get_text() for t in ax.get_xticklabels()] == order
    clusters = adata.obs["dominant"].cat.categories.astype(str)
    expected = {
        1: adata.uns["dominant_nhood_enrichment"]["zscore"],
        2: adata.uns["dominant_co_occurrence"]["occ"][:, :, 1],  # radius 300, the nearest to 280
        3: adata.uns["dominant_interactions"],
    }
    for panel, values in expected.items():
        frame = pd.DataFrame(values, index=clusters, columns=clusters).reindex(index=order, columns=order)
        np.testing.assert_allclose(heatmaps[panel].get_images()[0].get_array().filled(np.nan), frame.to_numpy())
    assert any("d ≤ 300" in ax.get_title() for ax in fig.axes)
    # One colour bar per kind, each with its own scale: R and z about 0, the ratio about 1, counts from 0.
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 4
    norms = [ax.get_images()[0].norm for ax in heatmaps]
    assert norms[0].vmin == -norms[0].vmax and norms[1].vmin == -norms[1].vmax
    assert norms[2].vmin + norms[2].vmax == pytest.approx(2.0)
    assert norms[3].vmin == 0
    assert len({(n.vmin, n.vmax) for n in norms}) == 4


def test_cluster_panel_lacking_a_type_is_grey_and_unknown_labels_refused(squidpy_slide):
    import squidpy as sq

    adata = squidpy_slide.copy()
    # Fold the tumour spots into another cluster: tumour is then never a cluster, its row and column grey.
    merged = adata.obs["dominant"].astype(str).replace("tumour", "lymphocyte")
    adata.obs["merged"] = merged.astype("category")
    sq.gr.nhood_enrichment(adata, cluster_key="merged", connectivity_key="rbf", n_perms=20, seed=0)
    fig = hd.pl.colocalization(adata, keys=["abund", "merged_nhood_enrichment"], return_fig=True)
    z = _heatmaps(fig)[1].get_images()[0].get_array()
    types = [t.get_text() for t in _heatmaps(fig)[1].get_xticklabels()]
    tumour = types.index("tumour")
    assert z.mask[tumour].all() and z.mask[:, tumour].all()
    clusters = adata.obs["merged"].cat.categories
    frame = pd.DataFrame(adata.uns["merged_nhood_enrichment"]["zscore"], index=clusters, columns=clusters)
    expected = frame.reindex(index=types, columns=types).to_numpy()
    np.testing.assert_allclose(z.filled(np.nan), np.where(np.isfinite(expected), expected, np.nan))  # inf: grey
    adata.obs["dominant"] = adata.obs["dominant"].cat.rename_categories(lambda c: f"cluster {c}")
    with pytest.raises(ValueError, match="matched by name"):
        hd.pl.colocalization(adata, keys=["abund", "dominant_nhood_enrichment"])
    with pytest.raises(ValueError, match="distance="):
        hd.pl.colocalization(squidpy_slide, keys=["abund", "dominant_co_occurrence"])
    with pytest.raises(KeyError, match="not a squidpy result"):
        hd.pl.colocalization(squidpy_slide, keys=["abund", "dominant_centrality_scores"])


def test_scanpy_style_arguments(adata, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import scanpy as sc

    fig, axes = plt.subplots(1, 2)
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    drawn = hd.pl.colocalization(adata, ax=axes)  # into the caller's Axes: not shown, the Axes returned
    assert drawn == list(axes) and _heatmaps(fig) == list(axes) and shown == []
    assert hd.pl.colocalization(adata, show=True) is None and shown == [True]
    figdir, file_format = sc.settings.figdir, sc.settings.file_format_figs
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path, "png"
    try:
        hd.pl.colocalization(adata, save=True)
    finally:
        sc.settings.figdir, sc.settings.file_format_figs = figdir, file_format
    assert imread(tmp_path / "colocalization.png").std() > 0.05
    with pytest.raises(ValueError, match="one per panel"):
        hd.pl.colocalization(adata, ax=axes[:1])
