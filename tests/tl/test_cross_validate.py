import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import histodecon as hd
from histodecon.tl._cross_validate import configurations

CELL_TYPES = ["tumour", "T cells", "fibroblasts"]
SMALL = {"hidden": (32, 16), "lr": 1e-2, "max_epochs": 40, "batch_size": 64, "patience": 5}


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
    assert list(summary.columns) == ["configuration", "fold", "sample", "cc", "l1", "n_spots"]
    assert list(scores.columns) == ["configuration", "fold", "sample", "cell_type", "cc", "l1"]
    assert summary["configuration"].unique().tolist() == ["a+b", "b"]
    full = summary[summary["configuration"] == "a+b"]
    assert list(zip(full["fold"], full["sample"], strict=True)) == [("A", "A1"), ("B", "B1"), ("B", "B2"), ("C", "C1")]
    assert (summary["n_spots"] == 120).all()
    assert len(scores) == len(summary) * 3 and set(scores["cell_type"]) == set(CELL_TYPES)
    # the summary is the mean over cell types of the per-type scores, with the same L1
    per_slide = scores.groupby(["configuration", "sample"], sort=False).agg(cc=("cc", "mean"), l1=("l1", "first"))
    np.testing.assert_allclose(per_slide["cc"].to_numpy(), summary["cc"].to_numpy())
    np.testing.assert_allclose(per_slide["l1"].to_numpy(), summary["l1"].to_numpy())


def test_scores_match_the_metrics_on_the_kept_predictions(result, slides):
    for configuration in ("a+b", "b"):
        predictions = result.predictions[configuration]
        assert predictions.index.names == ["sample", "spot"] and list(predictions.columns) == CELL_TYPES
        for slide in slides:
            sample = slide.obs["sample"].iloc[0]
            pred = predictions.loc[sample]
            row = result.summary.query("configuration == @configuration and sample == @sample").iloc[0]
            assert row["cc"] == pytest.approx(hd.metrics.cc_score(slide.obsm["abund"], pred))
            assert row["l1"] == pytest.approx(hd.metrics.l1_score(slide.obsm["abund"], pred))


def test_learnable_signal_is_learnt_and_missing_features_cost(result):
    means = result.summary.groupby("configuration")["cc"].mean()
    assert means["a+b"] > 0.9  # all three types are predictable from a+b
    assert means["b"] < means["a+b"] - 0.3  # b alone explains only the T cells and part of fibroblasts
    assert ((result.summary["l1"] >= 0) & (result.summary["l1"] <= 2)).all()


def test_test_group_never_trains_a_fold(slides, monkeypatch):
    seen = []
    fit = hd.tl.AbundanceRegressor.fit

    def spy(self, x, y, *, groups=None, feature_dims=None):
        seen.append((set(groups), feature_dims))
        return fit(self, x, y, groups=groups, feature_dims=feature_dims)

    monkeypatch.setattr(hd.tl.AbundanceRegressor, "fit", spy)
    cv = hd.tl.cross_validate(slides, groupby="patient", features=["b", "a"], hidden=(4,), max_epochs=1)
    assert seen == [({"B", "C"}, {"b": 2, "a": 3}), ({"A", "C"}, {"b": 2, "a": 3}), ({"A", "B"}, {"b": 2, "a": 3})]
    assert cv.summary["fold"].tolist() == ["A", "B", "B", "C"]


def test_cross_dataset_mode(slides):
    cv = hd.tl.cross_validate(train=slides[:3], test=slides[3], features="a", groupby="sample", **SMALL)
    assert cv.summary[["fold", "sample"]].values.tolist() == [["test", "C1"]]
    assert cv.summary["cc"].iloc[0] > 0.5  # a explains tumour and part of fibroblasts, not T cells
    assert cv.predictions == {}


def test_bad_calls_are_refused(slides):
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
