import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import histodecon as hd
from histodecon.tl._cross_validate import configurations
from histodecon.tl._estimator._baselines import RIDGE_ALPHAS, MeanBaseline, RidgeBaseline
from histodecon.tl._estimator._spots import spot_table

CELL_TYPES = ["tumour", "T cells", "fibroblasts"]
# the toy targets are abundances, so the network predicts them as such
SMALL = {"hidden": (32, 16), "lr": 1e-2, "max_epochs": 40, "batch_size": 64, "patience": 5, "target_scale": "abundance"}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_slide(sample, patient, n=120, seed=0):
    """Embeddings X_a (3-d) and X_b (2-d) that determine three abundances nonlinearly."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5)).astype(np.float32)
    abund = np.stack([np.exp(z[:, 0]), 2 * np.maximum(z[:, 3], 0), z[:, 1] ** 2 + np.abs(z[:, 4])], axis=1)
    names = [f"spot{i}" for i in range(n)]  # the same spot names on every slide
    return AnnData(
        obs=pd.DataFrame({"sample": sample, "patient": patient, "in_tissue": True}, index=names),
        obsm={"X_a": z[:, :3], "X_b": z[:, 3:], "abund": pd.DataFrame(abund, index=names, columns=CELL_TYPES)},
    )


@pytest.fixture(scope="module")
def slides():
    # patient B has two sections, as her2st patient C
    return [make_slide("A1", "A", seed=0), make_slide("B1", "B", seed=1), make_slide("B2", "B", seed=2)] + [
        make_slide("C1", "C", seed=3)
    ]


@pytest.fixture(scope="module")
def result(slides):
    return hd.tl.cross_validate(slides, groupby="patient", features=[["a", "b"], "b"], keep_predictions=True, **SMALL)


def test_configurations():
    assert configurations("uni") == [["uni"]]
    assert configurations(("conch", "uni")) == [["conch", "uni"]]
    assert configurations(["conch", "uni", ["conch", "uni"]]) == [["conch"], ["uni"], ["conch", "uni"]]


def test_leave_one_patient_out_tables(result):
    summary, scores = result.summary, result.scores
    assert list(summary.columns[:7]) == ["configuration", "model", "fold", "sample", "cc", "l1", "n_spots"]
    assert list(scores.columns) == ["configuration", "model", "fold", "sample", "cell_type", "cc", "l1"]
    assert summary["configuration"].unique().tolist() == ["a+b", "b"]
    assert summary["model"].unique().tolist() == ["mlp", "mean", "ridge"]
    for model in ("mlp", "mean", "ridge"):
        rows = summary[(summary["configuration"] == "a+b") & (summary["model"] == model)]
        assert list(zip(rows["fold"], rows["sample"], strict=True)) == [
            ("A", "A1"),
            ("B", "B1"),
            ("B", "B2"),
            ("C", "C1"),
        ]
    assert len(summary) == 2 * 3 * 4 and (summary["n_spots"] == 120).all()
    assert len(scores) == len(summary) * 3 and set(scores["cell_type"]) == set(CELL_TYPES)
    # the summary is the mean over cell types of the per-type scores, with the same L1
    keys = ["configuration", "model", "fold", "sample"]
    per_slide = scores.groupby(keys, sort=False).agg(cc=("cc", "mean"), l1=("l1", "first")).reset_index()
    pd.testing.assert_frame_equal(per_slide[keys], summary[keys])
    np.testing.assert_allclose(per_slide["cc"].to_numpy(), summary["cc"].to_numpy())
    np.testing.assert_allclose(per_slide["l1"].to_numpy(), summary["l1"].to_numpy())
    # a constant prediction has no correlation
    assert summary.loc[summary["model"] == "mean", "cc"].isna().all()


def test_scores_match_the_metrics_on_the_kept_predictions(result, slides):
    assert set(result.predictions) == {(c, m) for c in ("a+b", "b") for m in ("mlp", "mean", "ridge")}
    for (configuration, model), predictions in result.predictions.items():
        assert predictions.index.names == ["sample", "spot"] and list(predictions.columns) == CELL_TYPES
        for slide in slides:
            sample = slide.obs["sample"].iloc[0]
            pred = predictions.loc[sample]
            summary = result.summary
            row = summary[(summary["configuration"] == configuration) & (summary["model"] == model)]
            row = row[row["sample"] == sample]
            assert row["l1"].item() == pytest.approx(hd.metrics.l1_score(slide.obsm["abund"], pred))
            if model != "mean":
                assert row["cc"].item() == pytest.approx(hd.metrics.cc_score(slide.obsm["abund"], pred))


def test_baselines_are_fitted_on_exactly_the_training_folds(result, slides):
    # the same inputs as the regressor's (the embeddings as `fit` prepares them), slide by slide
    spots = spot_table(slides, ["a", "b"], "abund", groupby="patient")
    for test in ("A1", "B2"):
        held_out = spots.groups == spots.groups[spots.samples == test][0]
        x, y = spots.features[~held_out], spots.target.to_numpy()[~held_out]
        mean = result.predictions["a+b", "mean"].loc[test].to_numpy()
        np.testing.assert_allclose(mean, np.tile(y.mean(0), (120, 1)), rtol=1e-6)
        ridge = RidgeBaseline.fit(x, y, groups=spots.groups[~held_out])
        expected = ridge.predict(spots.features[spots.samples == test])
        np.testing.assert_allclose(result.predictions["a+b", "ridge"].loc[test], expected, rtol=1e-5)


def test_learnable_signal_is_learnt_and_missing_features_cost(result):
    mlp = result.summary[result.summary["model"] == "mlp"]
    means = mlp.groupby("configuration")["cc"].mean()
    assert means["a+b"] > 0.9  # all three types are predictable from a+b
    assert means["b"] < means["a+b"] - 0.3  # b alone explains only the T cells and part of fibroblasts
    assert ((result.summary["l1"] >= 0) & (result.summary["l1"] <= 2)).all()
    # the abundances are nonlinear in the features: the MLP beats ridge, and ridge the mean
    by_model = result.summary[result.summary["configuration"] == "a+b"].groupby("model")[["cc", "l1"]].mean()
    assert by_model.loc["mlp", "cc"] > by_model.loc["ridge", "cc"] + 0.1
    assert by_model.loc["mlp", "l1"] < by_model.loc["ridge", "l1"] < by_model.loc["mean", "l1"]


def test_mean_baseline_predicts_the_training_mean():
    y = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, 7.0]])
    np.testing.assert_array_equal(MeanBaseline.fit(y).predict(np.zeros((2, 5))), [[2.0, 3.0], [2.0, 3.0]])


def test_ridge_baseline_is_the_closed_form_solution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)) * [1.0, 10.0, 0.1, 1.0] + 5.0
    x[:, 3] = 2.0  # a constant feature
    y = x[:, :2] @ [[1.0, -2.0], [0.3, 0.5]] + rng.normal(size=(40, 2))
    x_new = rng.normal(size=(7, 4)) + 5.0
    centre, scale = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
    z = (x - centre) / scale
    for alpha in (0.1, 30.0):
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(4), z.T @ (y - y.mean(0)))
        expected = (x_new - centre) / scale @ coef + y.mean(0)
        ridge = RidgeBaseline.fit(x, y, alphas=[alpha])
        assert ridge.alpha == alpha
        np.testing.assert_allclose(ridge.predict(x_new), expected, rtol=1e-10)


def test_ridge_penalty_minimises_the_leave_one_group_out_error():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8))
    y = x[:, :1] * 0.5 + rng.normal(size=(60, 1)) * 2.0  # noisy: a strong penalty should win
    groups = np.repeat(["g1", "g2", "g3"], 20)
    errors = []
    for alpha in RIDGE_ALPHAS:
        error = 0.0
        for g in ("g1", "g2", "g3"):
            held_out = groups == g
            fitted = RidgeBaseline.fit(x[~held_out], y[~held_out], alphas=[alpha])
            error += ((fitted.predict(x[held_out]) - y[held_out]) ** 2).sum()
        errors.append(error)
    ridge = RidgeBaseline.fit(x, y, groups=groups)
    assert ridge.alpha == RIDGE_ALPHAS[int(np.argmin(errors))]
    assert ridge.alpha > RIDGE_ALPHAS[0]
    # without groups, random folds choose it: strong for noise, the weakest for an exact linear signal
    assert RidgeBaseline.fit(x, y).alpha >= 10
    exact = x[:, :2] @ [[1.0], [2.0]] + 0.01 * rng.normal(size=(60, 1))
    assert RidgeBaseline.fit(x, exact).alpha == RIDGE_ALPHAS[0]


@pytest.mark.filterwarnings("ignore:The regressor's predictions on the validation spots look collapsed")
def test_test_group_never_trains_a_fold(slides, monkeypatch):
    seen = []
    fit = hd.tl.AbundanceRegressor.fit

    def spy(self, x, y, *, groups=None, feature_dims=None):
        seen.append((set(groups), feature_dims))
        return fit(self, x, y, groups=groups, feature_dims=feature_dims)

    monkeypatch.setattr(hd.tl.AbundanceRegressor, "fit", spy)
    cv = hd.tl.cross_validate(slides, groupby="patient", features=["b", "a"], baselines=(), hidden=(4,), max_epochs=1)
    assert seen == [({"B", "C"}, {"b": 2, "a": 3}), ({"A", "C"}, {"b": 2, "a": 3}), ({"A", "B"}, {"b": 2, "a": 3})]
    assert cv.summary["fold"].tolist() == ["A", "B", "B", "C"]


def test_cross_dataset_mode(slides):
    cv = hd.tl.cross_validate(
        train=slides[:3], test=slides[3], features="a", groupby="sample", baselines="ridge", **SMALL
    )
    assert cv.summary[["model", "fold", "sample"]].values.tolist() == [["mlp", "test", "C1"], ["ridge", "test", "C1"]]
    assert cv.summary["cc"].iloc[0] > 0.5  # a explains tumour and part of fibroblasts, not T cells
    assert cv.predictions == {}


def test_bad_calls_are_refused(slides):
    with pytest.raises(ValueError, match=r"Unknown baselines \['lasso'\]"):
        hd.tl.cross_validate(slides, groupby="patient", features="a", baselines=["ridge", "lasso"])
    with pytest.raises(ValueError, match="not a mix"):
        hd.tl.cross_validate(slides, train=slides, test=slides, features="a")
    with pytest.raises(ValueError, match="both `train=` and `test=`"):
        hd.tl.cross_validate(train=slides, features="a")
    with pytest.raises(ValueError, match="at least two values"):
        hd.tl.cross_validate(slides[1:3], groupby="patient", features="a")
    with pytest.raises(KeyError, match="donor"):
        hd.tl.cross_validate(slides, groupby="donor", features="a")
    narrower = make_slide("D1", "D", n=20)
    narrower.obsm["X_a"] = narrower.obsm["X_a"][:, :2]
    with pytest.raises(ValueError, match=r"`obsm\['X_a'\]` of slide D1 has 2 dims but the model expects 3"):
        hd.tl.cross_validate(train=slides[:1], test=narrower, features="a", groupby=None)
    other = make_slide("D1", "D", n=20)
    other.obsm["abund"] = other.obsm["abund"].rename(columns={"tumour": "NK"})
    with pytest.raises(ValueError, match="only in training"):
        hd.tl.cross_validate(train=slides[:1], test=other, features="a", groupby=None)
