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
    a.uns["histodecon"] = {"samples": {"s": {"mpp": 0.5}}}
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
    fig = hd.pl.colocalization(adata, titles=["truth", "predicted"], save=path)
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
    fig = hd.pl.colocalization(adata, annotate=True)
    image = _heatmaps(fig)[1].get_images()[0]
    assert image.get_cmap().get_bad() == pytest.approx(to_rgba("lightgrey"))
    texts = [t.get_text() for t in _heatmaps(fig)[0].texts]
    assert len(texts) == 25 and len(_heatmaps(fig)[1].texts) == 25 - 9


def test_accepts_uns_keys_and_reports_missing(adata):
    adata.uns["mine"] = adata.uns.pop("pred_abund_moranR")
    fig = hd.pl.colocalization(adata, keys=["abund", "mine"])
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
