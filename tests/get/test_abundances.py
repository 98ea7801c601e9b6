import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import spatialdata
from anndata import read_h5ad
from matplotlib.colors import Normalize
from scipy.spatial import cKDTree

import histodecon as hd

#: Names spatialdata refuses as element or column names, kept as they are in `var_names`.
AWKWARD = ["T cells", "CD4+/CD8+", "tumour", "B cells", "fibroblast"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def sdata(make_slide):
    sdata = make_slide(seed=2, n_spots=120)
    table = sdata.tables["table"]
    rng = np.random.default_rng(0)
    values = table.obsm["abund"].to_numpy() * 1.3 + rng.gamma(1.0, 0.3, table.obsm["abund"].shape)
    table.obsm["pred_abund"] = pd.DataFrame(values, index=table.obs_names, columns=AWKWARD)
    hd.gr.rbf_graph(sdata, length_scale_um=150)
    return sdata


def test_anndata_of_predictions(sdata):
    table = sdata.tables["table"]
    before = table.copy()
    adata = hd.get.abundances(sdata)
    assert adata.var_names.tolist() == AWKWARD
    assert adata.X.dtype == np.float32
    np.testing.assert_allclose(adata.X, table.obsm["pred_abund"].to_numpy(), rtol=1e-6)
    pd.testing.assert_frame_equal(adata.obs, table.obs)
    np.testing.assert_array_equal(adata.obsm["spatial"], table.obsm["spatial"])
    assert set(adata.obsp) == {"rbf_connectivities", "rbf_distances"}
    assert (adata.obsp["rbf_connectivities"] != table.obsp["rbf_connectivities"]).nnz == 0
    assert adata.uns["rbf_neighbors"] == table.uns["rbf_neighbors"]
    assert "pred_abund_moranR" not in adata.uns  # no Moran's R computed yet
    hd.gr.moran_r(sdata, key="pred_abund")
    moran = hd.get.abundances(sdata).uns["pred_abund_moranR"]
    pd.testing.assert_frame_equal(moran["R"], table.uns["pred_abund_moranR"]["R"])
    # scanpy's layout: a downscaled image and the factor from full-resolution pixels to it.
    library = adata.uns["spatial"]["s2"]
    hires = library["images"]["hires"]
    full = sdata.images["s2_image"]
    assert hires.ndim == 3 and hires.shape[2] == 3 and max(hires.shape[:2]) <= 2000
    scalef = library["scalefactors"]["tissue_hires_scalef"]
    x, y = table.obsm["spatial"][0]
    np.testing.assert_array_equal(
        hires[int(y * scalef), int(x * scalef)],
        np.asarray(full[:, int(int(y * scalef) / scalef), int(int(x * scalef) / scalef)]),
    )
    assert library["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        2 * sdata.shapes["s2_spots"]["radius"].iloc[0]
    )
    # The slide is unchanged.
    assert list(table.obsm) == list(before.obsm) and list(sdata.tables) == ["table"]


def test_writes_and_reads_back(sdata, tmp_path):
    adata = hd.get.abundances(sdata, table_key_added="pred_abund")
    assert sdata.tables["pred_abund"] is adata
    adata.write_h5ad(tmp_path / "abund.h5ad")
    back = read_h5ad(tmp_path / "abund.h5ad")
    assert back.var_names.tolist() == AWKWARD
    np.testing.assert_array_equal(
        back.uns["spatial"]["s2"]["images"]["hires"], adata.uns["spatial"]["s2"]["images"]["hires"]
    )
    # The slide's own obsm DataFrame has a column "CD4+/CD8+", which zarr refuses as a key: write the
    # abundance table with the shapes it annotates.
    spatialdata.SpatialData(shapes=dict(sdata.shapes), tables={"pred_abund": adata}).write(tmp_path / "slide.zarr")
    table = spatialdata.read_zarr(tmp_path / "slide.zarr").tables["pred_abund"]
    assert table.var_names.tolist() == AWKWARD
    np.testing.assert_array_equal(table.X, adata.X)
    assert table.uns["spatialdata_attrs"] == sdata.tables["table"].uns["spatialdata_attrs"]


def test_drawn_by_squidpy_and_scanpy(sdata):
    import scanpy as sc
    import squidpy as sq

    adata = hd.get.abundances(sdata)
    expected = adata.obs_vector("CD4+/CD8+")
    for shape in (None, "circle"):
        fig, ax = plt.subplots()
        sq.pl.spatial_scatter(adata, color="CD4+/CD8+", library_id="s2", shape=shape, ax=ax)
        (spots,) = [c for c in ax.collections if c.get_array() is not None][:1]
        np.testing.assert_allclose(np.asarray(spots.get_array()), expected, rtol=1e-6)
    ax = sc.pl.spatial(adata, color="T cells", library_id="s2", show=False)[0]
    assert ax.get_images()  # the H&E is drawn behind the spots
    spots = ax.collections[0]
    # scanpy draws spots by increasing value: pair each drawn circle with its spot by position.
    scalef = adata.uns["spatial"]["s2"]["scalefactors"]["tissue_hires_scalef"]
    centres = np.array([(p.vertices.min(0) + p.vertices.max(0)) / 2 for p in spots.get_paths()])
    distance, spot = cKDTree(adata.obsm["spatial"] * scalef).query(centres)
    assert distance.max() < 1
    np.testing.assert_allclose(np.asarray(spots.get_array()), adata.obs_vector("T cells")[spot], rtol=1e-6)


def test_drawn_by_spatialdata_plot(sdata):
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    hd.get.abundances(sdata, table_key_added="pred_abund")
    fig, ax = plt.subplots()
    sdata.pl.render_shapes("s2_spots", color="CD4+/CD8+", table_name="pred_abund").pl.show(
        ax=ax, coordinate_systems="s2"
    )
    colours = ax.collections[0].get_facecolors()
    values = sdata.tables["pred_abund"].obs_vector("CD4+/CD8+")
    expected = plt.get_cmap("viridis")(Normalize(values.min(), values.max())(values))
    np.testing.assert_allclose(colours, expected, atol=1e-6)


def test_squidpy_moran_equals_moran_r_diagonal(sdata):
    import squidpy as sq

    hd.gr.moran_r(sdata, key="pred_abund")
    adata = hd.get.abundances(sdata)
    sq.gr.spatial_autocorr(
        adata, mode="moran", connectivity_key="rbf_connectivities", genes=AWKWARD, transformation=False
    )
    R = sdata.tables["table"].uns["pred_abund_moranR"]["R"]  # from float64 abundances; X is float32
    np.testing.assert_allclose(adata.uns["moranI"]["I"].loc[AWKWARD], np.diag(R.loc[AWKWARD, AWKWARD]), rtol=1e-6)


def test_anndata_input_and_errors(sdata):
    table = sdata.tables["table"]
    table.uns["spatial"] = {"s2": {"scalefactors": {"spot_diameter_fullres": 110.0}}}
    adata = hd.get.abundances(table, "abund")
    assert adata.uns["spatial"] == table.uns["spatial"] and adata.uns["spatial"] is not table.uns["spatial"]
    with pytest.raises(TypeError, match="table_key_added"):
        hd.get.abundances(table, table_key_added="x")
    with pytest.raises(KeyError, match="hd.tl.predict"):
        hd.get.abundances(sdata, "missing")
    hd.get.abundances(sdata, table_key_added="pred_abund")
    # the hint names this function's parameter (mutation: the default `key_added=` hint fails it)
    with pytest.raises(KeyError, match=r"overwrite=True`.*, or `table_key_added=` to write under another name"):
        hd.get.abundances(sdata, table_key_added="pred_abund")
    hd.get.abundances(sdata, "abund", table_key_added="pred_abund", overwrite=True)
    assert sdata.tables["pred_abund"].var_names.tolist() == table.obsm["abund"].columns.tolist()
    del table.uns["spatialdata_attrs"]
    with pytest.raises(ValueError, match="annotates no shapes"):
        hd.get.abundances(sdata, table_key_added="other")
    assert "other" not in sdata.tables
