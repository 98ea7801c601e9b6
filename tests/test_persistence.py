"""Everything histodecon writes survives ``SpatialData.write`` / ``read_zarr`` and ``write_h5ad`` / ``read_h5ad``,
and a slide read back is still a histodecon slide: its geometry, and the results of every step, are the same."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import spatialdata
from anndata import AnnData
from PIL import Image
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel

import histodecon as hd
from histodecon._constants import Key
from histodecon._geometry import sample_geometries
from histodecon.tl._embedding._writer import write_embedding

matplotlib.use("Agg")

needs_cell2location = pytest.mark.skipif(
    importlib.util.find_spec("cell2location") is None, reason="the `deconv` extra is not installed"
)


# ------------------------------------------------------------------------------------------ helpers
def zarr_round_trip(sdata: SpatialData, folder: Path) -> SpatialData:
    path = folder / "slide.zarr"
    sdata.write(path)
    return spatialdata.read_zarr(path)


def h5ad_round_trip(table: AnnData, folder: Path) -> AnnData:
    path = folder / "table.h5ad"
    table.write_h5ad(path)
    return ad.read_h5ad(path)


def assert_same(before, after, where: str = "value") -> None:
    """Equal values; lists may come back as arrays, as anndata stores them."""
    if isinstance(before, dict):
        assert set(before) == set(after), f"{where}: keys {sorted(before)} became {sorted(after)}"
        for key in before:
            assert_same(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(before, after, obj=where)
    elif sparse.issparse(before):
        assert sparse.issparse(after), where
        np.testing.assert_array_equal(before.toarray(), after.toarray(), err_msg=where)
    elif isinstance(before, np.ndarray | list | tuple):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after), err_msg=where)
    elif isinstance(before, float) and np.isnan(before):
        assert np.isnan(after), where
    else:
        assert before == after and type(before) is type(after) or np.asarray(before) == np.asarray(after), (
            f"{where}: {before!r} became {after!r}"
        )


def assert_same_table(before: AnnData, after: AnnData) -> None:
    pd.testing.assert_frame_equal(before.obs, after.obs)
    pd.testing.assert_frame_equal(before.var, after.var)
    for attr in ("obsm", "obsp", "uns"):
        assert_same(dict(getattr(before, attr)), dict(getattr(after, attr)), attr)


def assert_round_trips(sdata: SpatialData, folder: Path) -> SpatialData:
    """Write ``sdata`` to zarr and its table to h5ad, check both come back equal, return the zarr copy."""
    table = sdata.tables["table"]
    assert_same_table(table, h5ad_round_trip(table, folder))
    back = zarr_round_trip(sdata, folder)
    assert_same_table(table, back.tables["table"])
    assert sample_geometries(back, table_key="table") == sample_geometries(sdata, table_key="table")
    return back


# ------------------------------------------------------------------------------------------ synthetic slides
@pytest.fixture(scope="module")
def processed(make_slide):
    """A synthetic slide after embed, fit / predict, rbf_graph and moran_r, with the model; written after each."""
    sdata = make_slide(seed=3, n_spots=60)
    hd.tl.embed(sdata, models=["handcrafted"])
    after_embed = sdata.tables["table"].copy()
    model = hd.tl.fit(sdata, features=["handcrafted"], hidden=(8,), max_epochs=3)
    hd.tl.predict(sdata, model)
    hd.gr.rbf_graph(sdata, length_scale_um=150)
    hd.gr.moran_r(sdata, key="pred_abund")
    return sdata, model, after_embed


def test_embed_result_round_trips(processed, tmp_path):
    _, _, table = processed
    record = table.uns["histodecon"]["embeddings"]["handcrafted"]
    assert type(record["versions"]["torch"]) is str
    assert record["name"] == "handcrafted" and record["obsm_key"] == "X_handcrafted"
    assert_same_table(table, h5ad_round_trip(table, tmp_path))


def test_processed_slide_round_trips_and_stays_a_histodecon_slide(processed, tmp_path):
    sdata, model, _ = processed
    back = assert_round_trips(sdata, tmp_path)
    table, table_back = sdata.tables["table"], back.tables["table"]

    hd.tl.predict(back, model, key_added="again")
    pd.testing.assert_frame_equal(table_back.obsm["again"], table.obsm["pred_abund"], check_names=False)
    hd.gr.rbf_graph(back, length_scale_um=150, key_added="again")
    assert (table_back.obsp["again_connectivities"] != table.obsp["rbf_connectivities"]).nnz == 0
    hd.gr.moran_r(back, key="pred_abund", connectivity_key="again_connectivities", key_added="again_moranR")
    results = [{k: v for k, v in t.uns[key].items() if k != "params"} for t, key in
               ((table, "pred_abund_moranR"), (table_back, "again_moranR"))]  # fmt: skip
    assert_same(*results, "moran_r after read-back")
    fig = hd.pl.spatial_abundance(back, "tumour", return_fig=True)
    assert len(fig.axes) > 1
    hd.tl.embed(back, models=["handcrafted"], overwrite=True)
    np.testing.assert_array_equal(table_back.obsm["X_handcrafted"], table.obsm["X_handcrafted"])


def test_timm_name_gets_a_writable_key_and_the_mapping_is_recorded(make_slide, tmp_path):
    assert Key.obsm.embedding("uni") == "X_uni"
    assert Key.obsm.embedding("timm:hf-hub:org/model") == "X_timm_hf-hub_org_model"
    assert Key.obsm.embedding("timm_hf-hub_org_model") == "X_timm_hf-hub_org_model"  # idempotent: training finds it
    sdata = make_slide(seed=4, n_spots=20)
    table = sdata.tables["table"]
    write_embedding(table, "timm:hf-hub:org/model", np.ones((20, 3), np.float32), {"dim": 3}, overwrite=False)
    record = table.uns["histodecon"]["embeddings"]["timm_hf-hub_org_model"]
    assert record == {"dim": 3, "name": "timm:hf-hub:org/model", "obsm_key": "X_timm_hf-hub_org_model"}
    assert_round_trips(sdata, tmp_path)


@pytest.mark.slow
def test_embed_many_result_round_trips(make_slide, tmp_path):
    slides = [make_slide(seed=5, n_spots=30), make_slide(seed=6, n_spots=30)]
    hd.tl.embed_many(slides, ["handcrafted"], stores=tmp_path / "stores", num_workers=1)
    for i, slide in enumerate(slides):
        folder = tmp_path / str(i)
        folder.mkdir()
        assert_round_trips(slide, folder)


@needs_cell2location
@pytest.mark.slow
def test_deconvolve_result_round_trips(make_slide, tmp_path):
    sdata = make_slide(seed=7, n_spots=30, counts=True)
    reference = hd.datasets.synthetic_reference(n_cells_per_type=20)
    hd.tl.deconvolve(sdata, reference, labels_key="cell_type", max_epochs=5, reference_epochs=5, num_samples=5,
                     key_added="c2l")  # fmt: skip
    assert_round_trips(sdata, tmp_path)


# ------------------------------------------------------------------------------------------ concatenation
def test_concatenated_slides_are_embedded_and_graphed_per_sample(make_slide, tmp_path):
    a, b = make_slide(seed=0, n_spots=40, sample="a"), make_slide(seed=1, n_spots=30, sample="b", mpp=1.0)
    joined = spatialdata.concatenate([a, b], concatenate_tables=True)
    assert Key.uns.root not in joined.tables["table"].uns  # the cache is lost; the elements keep the geometry
    for single in (a, b):
        hd.tl.embed(single, models=["handcrafted"])
        hd.gr.rbf_graph(single, length_scale_um=150)
    hd.tl.embed(joined, models=["handcrafted"])
    hd.gr.rbf_graph(joined, length_scale_um=150)

    table = joined.tables["table"]
    embeddings = np.concatenate([s.tables["table"].obsm["X_handcrafted"] for s in (a, b)])
    np.testing.assert_array_equal(table.obsm["X_handcrafted"], embeddings)  # each spot read from its own image
    graph = sparse.block_diag([s.tables["table"].obsp["rbf_connectivities"] for s in (a, b)]).tocsr()
    np.testing.assert_allclose(table.obsp["rbf_connectivities"].toarray(), graph.toarray(), rtol=1e-12)
    geometry = sample_geometries(zarr_round_trip(joined, tmp_path), table_key="table")
    assert {name: (g.mpp, g.image_key) for name, g in geometry.items()} == {
        "a": (0.5, "a_image"),
        "b": (1.0, "b_image"),
    }


# ------------------------------------------------------------------------------------------ real data
def _c2_files(her2st_dir: Path) -> tuple[Path, Path, Path]:
    (image,) = (her2st_dir / "ST-imgs" / "C" / "C2").glob("*.jpg")
    return her2st_dir / "ST-cnts" / "C2.tsv.gz", her2st_dir / "ST-spotfiles" / "C2_selection.tsv", image


def test_real_section_round_trips(her2st_dir, tmp_path):
    sdata = hd.datasets.her2st("C2", data_dir=her2st_dir.parent)
    table = sdata.tables["table"]
    table.obsm["X_handcrafted"] = np.random.default_rng(0).normal(size=(table.n_obs, 8)).astype(np.float32)
    model = hd.tl.fit(sdata, features=["handcrafted"], target="proportions", hidden=(8,), max_epochs=2)
    hd.tl.predict(sdata, model)
    hd.gr.rbf_graph(sdata)
    hd.gr.moran_r(sdata, key="pred_abund")
    back = assert_round_trips(sdata, tmp_path)
    hd.gr.rbf_graph(back, key_added="again")
    assert (back.tables["table"].obsp["again_connectivities"] != table.obsp["rbf_connectivities"]).nnz == 0
    cell_type = table.obsm["pred_abund"].columns[0]
    assert len(hd.pl.spatial_abundance(back, cell_type, keys=["proportions", "pred_abund"], return_fig=True).axes) > 1


def _spatialdata_from_models(counts: Path, spots: Path, image: Path) -> SpatialData:
    """The her2st C2 section assembled with spatialdata's models alone, as another tool would write it."""
    spot_table = pd.read_csv(spots, sep="\t")
    spot_table.index = [f"{x}x{y}" for x, y in zip(spot_table.x, spot_table.y, strict=True)]
    count_table = pd.read_csv(counts, sep="\t", index_col=0)
    ids = [i for i in spot_table.index if i in count_table.index]
    pixels = np.asarray(Image.open(image).convert("RGB"))
    circles = ShapesModel.parse(
        spot_table.loc[ids, ["pixel_x", "pixel_y"]].to_numpy(), geometry=0, radius=np.full(len(ids), 70.0),
        index=pd.Index(ids),
    )  # fmt: skip
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * len(ids)), "barcode": ids}, index=ids)
    table = AnnData(X=sparse.csr_matrix(count_table.loc[ids].to_numpy(np.float32)), obs=obs)
    return SpatialData(
        images={"he": Image2DModel.parse(np.moveaxis(pixels, -1, 0), dims=("c", "y", "x"))},
        shapes={"spots": circles},
        tables={"table": TableModel.parse(table, region="spots", region_key="region", instance_key="barcode")},
    )


def test_spatialdata_built_elsewhere_is_adopted_and_embedded_like_read_st(her2st_dir):
    files = _c2_files(her2st_dir)
    reference = hd.io.read_st(*files)
    mpp = sample_geometries(reference, table_key="table")["C2"].mpp
    foreign = _spatialdata_from_models(*files)
    adopted = hd.io.from_spatialdata(foreign, mpp=mpp, copy=True)
    assert "sample" not in foreign.tables["table"].obs  # copy=True leaves the original alone

    ours, theirs = reference.tables["table"], adopted.tables["table"]
    np.testing.assert_array_equal(theirs.obsm["spatial"], ours.obsm["spatial"])
    (geometry,) = sample_geometries(adopted, table_key="table").values()
    assert (geometry.sample, geometry.image_key, geometry.mpp) == ("spots", "he", mpp)
    assert geometry.spot_diameter_px == 140.0
    np.testing.assert_array_equal(hd.pp.spot_patches(adopted)[:], hd.pp.spot_patches(reference)[:])
    first = slice(0, 64)  # embedding every spot twice takes long; the patches of all were compared above
    adopted.tables["table"], reference.tables["table"] = theirs[first].copy(), ours[first].copy()
    # a fixed field: handcrafted's own follows the spot size, and these circles (140 px) are not read_st's 100 um
    hd.tl.embed(adopted, models=["handcrafted"], mpp=1.0)
    hd.tl.embed(reference, models=["handcrafted"], mpp=1.0)
    embeddings = [s.tables["table"].obsm["X_handcrafted"] for s in (adopted, reference)]
    np.testing.assert_array_equal(*embeddings)


def test_from_spatialdata_infers_visium_mpp_and_writes_in_place(slide_from_image, make_slide):
    source = make_slide(seed=8, n_spots=40)  # synthetic Visium: 55 um spots on a 100 um pitch at 0.5 um/px
    shapes = source.shapes["s8_spots"]
    table = source.tables["table"].copy()
    table.obs = table.obs.drop(columns=["sample"])
    del table.uns["histodecon"], table.obsm["spatial"]
    foreign = SpatialData(
        images={"he": Image2DModel.parse(source.images["s8_image"].data, dims=("c", "y", "x"))},
        shapes={
            "s8_spots": ShapesModel.parse(
                np.c_[shapes.geometry.x, shapes.geometry.y],
                geometry=0,
                radius=shapes.radius.to_numpy(),
                index=shapes.index,
            )  # fmt: skip
        },
        tables={"table": table},
    )
    assert hd.io.from_spatialdata(foreign) is None
    geometry = sample_geometries(foreign, table_key="table")["s8_spots"]
    assert geometry.image_key == "he" and geometry.mpp == pytest.approx(0.5)
    np.testing.assert_allclose(foreign.tables["table"].obsm["spatial"], source.tables["table"].obsm["spatial"])
    np.testing.assert_array_equal(hd.pp.spot_patches(foreign, size=32)[:], hd.pp.spot_patches(source, size=32)[:])


def test_samples_sharing_a_coordinate_system_are_adopted_one_at_a_time(make_slide):
    sources = {"a": make_slide(seed=0, n_spots=40), "b": make_slide(seed=1, n_spots=40)}
    images, shapes, tables = {}, {}, []
    for name, source in sources.items():
        sample = source.tables["table"].obs["sample"].iloc[0]
        images[f"{name}_he"] = Image2DModel.parse(source.images[f"{sample}_image"].data, dims=("c", "y", "x"))
        circles = source.shapes[f"{sample}_spots"]
        shapes[f"{name}_spots"] = ShapesModel.parse(
            np.c_[circles.geometry.x, circles.geometry.y], geometry=0, radius=circles.radius.to_numpy(),
            index=circles.index,
        )  # fmt: skip
        table = source.tables["table"].copy()
        table.obs = pd.DataFrame({"region": f"{name}_spots", "spot_id": table.obs_names}, index=table.obs_names)
        tables.append(AnnData(X=table.X, obs=table.obs))
    joined = ad.concat(tables)
    joined.obs["region"] = pd.Categorical(joined.obs["region"])
    table = TableModel.parse(joined, region=["a_spots", "b_spots"], region_key="region", instance_key="spot_id")
    foreign = SpatialData(images=images, shapes=shapes, tables={"table": table})  # all in "global"
    mpp = sample_geometries(sources["a"], table_key="table")["s0"].mpp

    hd.io.from_spatialdata(foreign, shapes_key="a_spots", image_key="a_he", mpp=mpp)
    for half_done in (lambda: hd.pp.spot_patches(foreign), lambda: hd.gr.rbf_graph(foreign)):
        with pytest.raises(ValueError, match=r"40 spots .* have no `obs\['sample'\]`.*shapes_key="):
            half_done()
    hd.io.from_spatialdata(foreign, shapes_key="b_spots", image_key="b_he", mpp=mpp)  # the first call's blanks
    expected = np.concatenate([hd.pp.spot_patches(source)[:] for source in sources.values()])
    np.testing.assert_array_equal(hd.pp.spot_patches(foreign)[:], expected)
