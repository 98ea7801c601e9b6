import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import histodecon as hd
from histodecon._constants import Key
from histodecon.io._build import build_sdata
from histodecon.tl._estimator._collapse import RIDGE_CC_MARGIN
from histodecon.tl._estimator._inputs import InputOptions, spot_inputs
from histodecon.tl._estimator._spots import spot_table

CELL_TYPES = ["tumour", "T cells", "fibroblasts"]
SMALL = {"hidden": (32, 32, 16), "lr": 1e-2, "max_epochs": 60, "batch_size": 64, "patience": 5}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_slide(sample, n=200, seed=0, patient=None):
    """A table whose embeddings X_a (4-d) and X_b (2-d) determine the abundances nonlinearly."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6)).astype(np.float32)
    abund = np.stack([np.exp(z[:, 0]), 2 * np.maximum(z[:, 4], 0), z[:, 1] ** 2 + np.abs(z[:, 5])], axis=1)
    names = [f"{sample}_{i}" for i in range(n)]
    adata = AnnData(
        obs=pd.DataFrame({"sample": sample, "in_tissue": True, "patient": patient or sample}, index=names),
        obsm={"X_a": z[:, :4], "X_b": z[:, 4:], "abund": pd.DataFrame(abund, index=names, columns=CELL_TYPES)},
    )
    return adata


@pytest.fixture(scope="module")
def model():
    slides = [make_slide(f"s{i}", seed=i) for i in range(3)]
    return hd.tl.fit(slides, features=["a", "b"], target_scale="abundance", **SMALL)


def test_fit_beats_mean_predictor_on_a_held_out_slide(model):
    test = make_slide("held_out", seed=10)
    hd.tl.predict(test, model)
    pred, truth = test.obsm["pred_abund"], test.obsm["abund"]
    assert list(pred.columns) == CELL_TYPES and pred.index.equals(test.obs_names)
    mse_model = np.mean((pred.values - truth.values) ** 2)
    mse_mean = np.mean((truth.values - truth.values.mean(axis=0)) ** 2)
    assert mse_model < 0.1 * mse_mean
    assert hd.metrics.cc_score(truth, pred) > 0.9
    record = test.uns["histodecon"]["predictions"]["pred_abund"]
    assert record["features"] == ["a", "b"] and record["feature_dims"] == [4, 2]
    assert record["training_samples"] == ["s0", "s1", "s2"] and record["cell_types"] == CELL_TYPES


def colour_features(sdata):
    """Optical-density statistics of the centre of every spot: a tiny image encoder for tests."""
    patches = hd.pp.spot_patches(sdata, size=64)
    blocks = []
    for _, batch in patches.batches(256):
        density = -np.log(np.clip(batch.astype(np.float32) / 255, 1 / 255, 1)).reshape(len(batch), -1, 3)
        quantiles = np.quantile(density, [0.1, 0.5, 0.9], axis=1).transpose(1, 0, 2).reshape(len(batch), -1)
        blocks.append(np.hstack([density.mean(axis=1), density.std(axis=1), quantiles]))
    return np.vstack(blocks)


def test_fit_on_synthetic_slides_beats_the_mean_on_a_held_out_slide():
    """Image -> colour features -> abundances, trained on two synthetic slides, scored on a third."""
    slides = [hd.datasets.synthetic(n_spots=200, seed=s, sample=f"s{s}", counts=False) for s in range(3)]
    for sdata in slides:
        sdata.tables["table"].obsm["X_colour"] = colour_features(sdata)
    model = hd.tl.fit(slides[:2], features="colour", target_scale="abundance", **SMALL)
    hd.tl.predict(slides[2], model)
    tables = [sdata.tables["table"] for sdata in slides]
    in_tissue = [t.obs["in_tissue"].to_numpy(dtype=bool) for t in tables]
    truth = tables[2].obsm["abund"][in_tissue[2]]
    pred = tables[2].obsm["pred_abund"][in_tissue[2]]
    train_mean = pd.concat([t.obsm["abund"][keep] for t, keep in zip(tables[:2], in_tissue[:2], strict=True)]).mean()
    mean_pred = pd.DataFrame(np.broadcast_to(train_mean.values, truth.shape), index=truth.index, columns=truth.columns)
    assert np.mean((pred.values - truth.values) ** 2) < 0.3 * np.mean((mean_pred.values - truth.values) ** 2)
    assert hd.metrics.cc_score(truth, pred) > 0.7
    assert hd.metrics.l1_score(truth, pred) < 0.6 * hd.metrics.l1_score(truth, mean_pred)


def test_fit_records_features_in_order_and_groups(model):
    assert model.feature_keys == ["a", "b"] and model.feature_dims == [4, 2]
    assert model.cell_types == CELL_TYPES
    assert model.provenance["samples"] == ["s0", "s1", "s2"] and model.provenance["target"] == "abund"
    assert model.provenance["validation_split"] == "groups"  # three slides: each held out by one fold
    assert model.provenance["n_validation_spots"] == 600
    assert sorted(map(tuple, model.provenance["early_stopping"]["fold_validation_groups"])) == [
        ("s0",),
        ("s1",),
        ("s2",),
    ]


def test_only_in_tissue_spots_are_used_and_targets_aligned_by_name():
    first, second = make_slide("s0", n=10, seed=0), make_slide("s1", n=10, seed=1)
    second.obs["in_tissue"] = np.arange(10) < 6
    second.obsm["X_a"][7] = np.nan  # off tissue: ignored
    second.obsm["abund"] = second.obsm["abund"][CELL_TYPES[::-1]]
    spots = spot_table([first, second], ["b", "a"], "abund", groupby="sample", inputs=InputOptions("training"))
    x, y, groups, dims = spots.features, spots.target, spots.groups, spots.dims
    assert x.shape == (16, 6) and dims == [2, 4]
    np.testing.assert_array_equal(x[10:, :2], second.obsm["X_b"][:6])
    assert list(y.columns) == CELL_TYPES
    np.testing.assert_array_equal(y.values[10:], second.obsm["abund"][CELL_TYPES].values[:6].astype(np.float32))
    assert list(groups) == ["s0"] * 10 + ["s1"] * 6
    assert spots.samples.tolist() == groups.tolist() and spots.sample_names == ["s0", "s1"]
    assert spots.obs_names.tolist() == list(first.obs_names) + list(second.obs_names[:6])
    assert spots.feature_dims == {"b": 2, "a": 4}


def test_features_default_to_the_embeddings_every_slide_has():
    first, second = make_slide("s0", n=30, seed=0), make_slide("s1", n=30, seed=1)
    first.obsm["X_c"] = np.ones((30, 1), dtype=np.float32)  # only on the first slide: not used
    model = hd.tl.fit([first, second], hidden=(8,), max_epochs=2)
    assert model.feature_keys == ["a", "b"] and model.feature_dims == [4, 2]
    for slide in (first, second):
        del slide.obsm["X_a"], slide.obsm["X_b"]
    with pytest.raises(KeyError, match=r"no embeddings `obsm\['X_<encoder>'\]` in common.*hd.tl.embed\(sdata\)"):
        hd.tl.fit([first, second])


def test_fit_and_cross_validate_share_the_groupby_default():
    defaults = [inspect.signature(f).parameters["groupby"].default for f in (hd.tl.fit, hd.tl.cross_validate)]
    assert defaults == [Key.obs.sample, Key.obs.sample]


def test_array_target_gets_numbered_cell_types():
    slide = make_slide("s0", n=40)
    slide.obsm["abund"] = slide.obsm["abund"].to_numpy()
    model = hd.tl.fit(slide, features="a", groupby=None, hidden=(8,), max_epochs=2)
    assert model.cell_types == ["0", "1", "2"] and model.feature_keys == ["a"]


def test_fit_refuses_bad_slides():
    good = make_slide("s0", n=20)
    missing = make_slide("s1", n=20)
    del missing.obsm["X_b"]
    with pytest.raises(KeyError, match=r"no `obsm\['X_b'\]`.*hd.tl.embed\(sdata, models=\['b'\]\)"):
        hd.tl.fit([good, missing], features=["a", "b"])
    with pytest.raises(KeyError, match="hd.tl.deconvolve"):
        hd.tl.fit(good, features="a", target="q05")
    wider = make_slide("s1", n=20)
    wider.obsm["X_a"] = np.zeros((20, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="has 5 dims but the model expects 4"):
        hd.tl.fit([good, wider], features="a")
    other_types = make_slide("s1", n=20)
    other_types.obsm["abund"] = other_types.obsm["abund"].rename(columns={"tumour": "NK"})
    with pytest.raises(ValueError, match=r"missing \['tumour'\], extra \['NK'\]"):
        hd.tl.fit([good, other_types], features="a")
    nan_target = make_slide("s1", n=20)
    nan_target.obsm["abund"].iloc[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"Target `obsm\['abund'\]` of slide s1 has NaN or infinite values in 1"):
        hd.tl.fit(nan_target, features="a")
    with pytest.raises(KeyError, match="groupby=None"):
        hd.tl.fit(good, features="a", groupby="donor")
    with pytest.raises(TypeError, match="non-empty list"):
        hd.tl.fit([], features="a")
    with pytest.raises(ValueError, match="twice"):
        hd.tl.fit(good, features=["a", "a"])
    with pytest.raises(TypeError, match=r"Unknown hyperparameters \['dropout'\]"):
        hd.tl.fit(good, features="a", dropout=0.1)


def test_predict_refuses_wrong_or_missing_features(model):
    slide = make_slide("t", n=10)
    del slide.obsm["X_b"]
    with pytest.raises(KeyError, match=r"no `obsm\['X_b'\]`.*hd.tl.embed\(sdata, models=\['b'\]\)"):
        hd.tl.predict(slide, model)
    slide.obsm["X_b"] = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"`obsm\['X_b'\]` of slide t has 3 dims but the model expects 2"):
        hd.tl.predict(slide, model)
    assert "pred_abund" not in slide.obsm
    with pytest.raises(TypeError, match="AbundanceRegressor"):
        hd.tl.predict(slide, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        hd.tl.predict(make_slide("t", n=10), hd.tl.AbundanceRegressor())


def test_predict_overwrite_copy_and_nan_rows(model):
    slide = make_slide("t", n=10)
    slide.obsm["X_a"][3] = np.nan
    copied = hd.tl.predict(slide, model, copy=True)
    assert "pred_abund" not in slide.obsm
    pred = copied.obsm["pred_abund"]
    assert pred.iloc[3].isna().all() and pred.drop(index="t_3").notna().all().all()
    hd.tl.predict(slide, model, key_added="mlp")
    with pytest.raises(KeyError, match="overwrite=True"):
        hd.tl.predict(slide, model, key_added="mlp")
    hd.tl.predict(slide, model, key_added="mlp", overwrite=True)
    pd.testing.assert_frame_equal(slide.obsm["mlp"], pred)


def test_predict_on_spatialdata(model):
    adata = make_slide("sd", n=6)
    sdata = build_sdata(
        np.zeros((3, 64, 64), dtype=np.uint8),
        np.full((6, 2), 32.0),
        sample="sd",
        mpp=1.0,
        spot_diameter_px=10,
        spot_ids=adata.obs_names,
    )
    table = sdata.tables["table"]
    for key in ("X_a", "X_b"):
        table.obsm[key] = adata.obsm[key]
    copied = hd.tl.predict(sdata, model, copy=True)
    assert "pred_abund" not in table.obsm
    assert copied.images["sd_image"] is sdata.images["sd_image"]
    hd.tl.predict(sdata, model)
    pd.testing.assert_frame_equal(table.obsm["pred_abund"], copied.tables["table"].obsm["pred_abund"])
    raw = np.hstack([adata.obsm["X_a"], adata.obsm["X_b"]])
    inputs = spot_inputs(table, raw, np.ones(6, dtype=bool), model.inputs)  # standardised over the slide
    np.testing.assert_allclose(table.obsm["pred_abund"].values, model.predict(inputs))


def with_geometry(adata, mpp=2.0):
    """Spots on a 10-wide grid 100 px (``100 * mpp`` um) apart, and the sample's mpp record."""
    n = adata.n_obs
    adata.obsm["spatial"] = np.stack([np.arange(n) % 10, np.arange(n) // 10], axis=1).astype(float) * 100
    sample = str(adata.obs["sample"].iloc[0])
    adata.uns[Key.uns.root] = {Key.uns.samples: {sample: {"mpp": mpp}}}
    return adata


def test_the_returned_model_learns_a_pattern_only_a_held_out_slide_shows():
    """Every slide is held out by one early-stopping fold; the refit on every slide must learn what only one teaches."""
    names, held_out = ["s0", "s1", "s2"], "s1"
    slides = []
    for i, name in enumerate(names):
        slide = make_slide(name, seed=i)
        marker = slide.obsm["X_b"][:, 1].copy() if name == held_out else np.zeros(slide.n_obs, dtype=np.float32)
        slide.obsm["X_b"][:, 1] = marker  # the marker varies on one slide only
        slide.obsm["abund"]["fibroblasts"] = np.exp(1.5 * marker) if name == held_out else 1.0
        slides.append(slide)
    model = hd.tl.fit(slides, target_scale="abundance", feature_scaling="training", **SMALL)
    assert [held_out] in model.provenance["early_stopping"]["fold_validation_groups"]
    test = make_slide("new", seed=20)
    marker = test.obsm["X_b"][:, 1]
    hd.tl.predict(test, model)
    assert np.corrcoef(test.obsm["pred_abund"]["fibroblasts"], np.exp(1.5 * marker))[0, 1] > 0.8


def test_collapse_warning_fires_on_an_untrained_model_and_not_on_a_good_one(recwarn):
    slides = [make_slide(f"s{i}", seed=i) for i in range(3)]
    with pytest.warns(UserWarning, match="look collapsed.*below that of ridge"):
        collapsed = hd.tl.fit(slides, hidden=(8,), lr=1e-6, max_epochs=1)
    assert collapsed.validation_scores["cc"] < collapsed.validation_scores["ridge_cc"] - RIDGE_CC_MARGIN
    recwarn.clear()
    good = hd.tl.fit(slides, **SMALL)
    assert not [w for w in recwarn if "collapsed" in str(w.message)]
    assert good.validation_scores["cc"] > good.validation_scores["ridge_cc"]
    assert good.validation_scores["spread"] > 0.5


def test_target_scale_proportion_predicts_compositions_and_abundance_amounts():
    slides = [make_slide(f"s{i}", seed=i) for i in range(3)]
    test = make_slide("new", seed=20)
    for scale in ("proportion", "abundance"):
        model = hd.tl.fit(slides, target_scale=scale, **SMALL)
        hd.tl.predict(test, model, key_added=scale)
    sums = test.obsm["proportion"].sum(axis=1).to_numpy()
    np.testing.assert_allclose(sums, 1, rtol=1e-5)
    truth = test.obsm["abund"]
    assert np.corrcoef(test.obsm["abundance"].sum(axis=1), truth.sum(axis=1))[0, 1] > 0.8
    assert hd.metrics.l1_score(truth, test.obsm["proportion"]) < 0.5 * hd.metrics.l1_score(
        truth, np.broadcast_to(truth.to_numpy().mean(axis=0), truth.shape)
    )


def test_target_scale_auto_keeps_the_units_of_the_target():
    slides = [make_slide(f"s{i}", seed=i) for i in range(3)]
    assert hd.tl.fit(slides, **SMALL).hyperparameters.target_scale == "abundance"  # cells per spot
    for slide in slides:
        abund = slide.obsm["abund"]
        slide.obsm["abund"] = abund.div(abund.sum(axis=1), axis=0)
    assert hd.tl.fit(slides, **SMALL).hyperparameters.target_scale == "proportion"


def test_slide_scaling_and_neighbourhood_are_recorded_and_repeated_after_loading(tmp_path):
    slides = [with_geometry(make_slide(f"s{i}", n=100, seed=i)) for i in range(3)]
    model = hd.tl.fit(slides, context_radius=250, target_scale="proportion", **SMALL)
    assert model.inputs.context_radius == 250.0 and model.inputs.feature_scaling == "slide"
    assert model.network.n_features == 12  # 6 embedding dims and their neighbourhood mean
    model.save(tmp_path / "model")
    loaded = hd.tl.AbundanceRegressor.load(tmp_path / "model")
    assert loaded.inputs == model.inputs and loaded.hyperparameters.target_scale == "proportion"
    test = with_geometry(make_slide("new", n=100, seed=20))
    hd.tl.predict(test, model, key_added="fitted")
    hd.tl.predict(test, loaded, key_added="loaded")
    np.testing.assert_array_equal(test.obsm["fitted"].to_numpy(), test.obsm["loaded"].to_numpy())
    # a grid 200 um apart: within 250 um, a spot's neighbourhood is itself and its 2-4 grid neighbours
    x = np.arange(100, dtype=np.float32)[:, None]
    inputs = spot_inputs(test, x, np.ones(100, dtype=bool), InputOptions("training", 250))
    assert inputs[0, 1] == pytest.approx((0 + 1 + 10) / 3) and inputs[11, 1] == pytest.approx(11)
    del test.obsm["spatial"]
    with pytest.raises(KeyError, match=r"needs spot centres in `obsm\['spatial'\]`"):
        hd.tl.predict(test, loaded, key_added="again")


@pytest.mark.parametrize("flags", [["True", "False"], [True, None], [0.5, 1.0]])
def test_in_tissue_flags_that_are_not_booleans_are_refused(model, flags):
    slide = make_slide("t", n=40)
    slide.obs["in_tissue"] = pd.Series(flags * 20, index=slide.obs_names, dtype=object if None in flags else None)
    before = slide.obs.copy()
    with pytest.raises(ValueError, match=r"`obs\['in_tissue'\]` of slide t must hold True / False"):
        hd.tl.predict(slide, model)
    with pytest.raises(ValueError, match="must hold True / False"):
        hd.tl.fit([slide, make_slide("u")], features=["a", "b"], max_epochs=1)
    pd.testing.assert_frame_equal(slide.obs, before)


@pytest.mark.parametrize("flags", [np.arange(40) % 2, (np.arange(40) % 2).astype(bool)])
def test_in_tissue_flags_as_integers_or_categories_are_read(model, flags):
    plain, coded = make_slide("t", n=40), make_slide("t", n=40)
    plain.obs["in_tissue"] = flags.astype(bool)
    coded.obs["in_tissue"] = pd.Categorical(flags)
    hd.tl.predict(plain, model)
    hd.tl.predict(coded, model)
    pd.testing.assert_frame_equal(plain.obsm["pred_abund"], coded.obsm["pred_abund"])


def test_slide_scaling_falls_back_to_all_spots_without_in_tissue_ones_and_warns_on_few(model):
    slide, flagged_off = make_slide("t", n=60), make_slide("t", n=60)
    flagged_off.obs["in_tissue"] = False
    hd.tl.predict(slide, model)
    with pytest.warns(UserWarning, match="No spot of sample 't' is in tissue"):
        hd.tl.predict(flagged_off, model)
    pd.testing.assert_frame_equal(flagged_off.obsm["pred_abund"], slide.obsm["pred_abund"])
    with pytest.warns(UserWarning, match="has only 5 in-tissue spots"):
        hd.tl.predict(slide[:5].copy(), model, key_added="few")


@pytest.mark.filterwarnings("ignore:Sample .* lies outside the training slides")  # shifted on purpose
def test_predict_feeds_the_network_features_z_scored_over_each_slides_in_tissue_spots(model, monkeypatch):
    """An independent numpy z-score per sample over its in-tissue spots is what the network receives.

    The out-of-tissue spots are shifted and spread far from the others, so statistics taken
    over every spot, or over both samples together, give other inputs.
    """
    slides = [make_slide("p", n=30, seed=3), make_slide("q", n=30, seed=4)]
    for slide, shift in zip(slides, (5.0, -3.0), strict=True):
        slide.obs["in_tissue"] = np.arange(30) >= 10
        for key in ("X_a", "X_b"):
            slide.obsm[key] = slide.obsm[key] + shift
            slide.obsm[key][:10] = 40 * slide.obsm[key][:10] + 100
    table = ad.concat(slides, merge="first")
    fed = []

    def record(x, **kwargs):
        fed.append(x)
        return np.zeros((len(x), len(model.cell_types)), dtype=np.float32)

    monkeypatch.setattr(model, "predict", record)
    hd.tl.predict(table, model)
    expected = []
    for slide in slides:
        raw = np.hstack([slide.obsm["X_a"], slide.obsm["X_b"]]).astype(np.float64)
        inside = raw[slide.obs["in_tissue"].to_numpy()]
        expected.append((raw - inside.mean(axis=0)) / inside.std(axis=0))
    np.testing.assert_allclose(fed[0], np.vstack(expected), rtol=1e-4, atol=1e-4)
