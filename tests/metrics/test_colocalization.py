import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import cosine as cosine_distance

from histodecon.metrics import colocalization_similarity

TYPES = ["T", "B", "Fib", "Endo"]


def _symmetric(seed, names=TYPES):
    a = np.random.default_rng(seed).normal(size=(len(names), len(names)))
    return pd.DataFrame(a + a.T, index=names, columns=names)


def test_known_answer_without_and_with_diagonal():
    true, pred = _symmetric(0), _symmetric(1)
    scores = colocalization_similarity(true, pred)
    assert list(scores.index) == TYPES and list(scores.columns) == ["cosine", "pearson"]
    for i, name in enumerate(TYPES):
        others = [j for j in range(4) if j != i]
        t, p = true.to_numpy()[i, others], pred.to_numpy()[i, others]
        assert scores.loc[name, "cosine"] == pytest.approx(1 - cosine_distance(t, p))
        assert scores.loc[name, "pearson"] == pytest.approx(stats.pearsonr(t, p).statistic)
    with_diag = colocalization_similarity(true, pred, diagonal=True)
    t, p = true.to_numpy()[0], pred.to_numpy()[0]
    assert with_diag.loc["T", "cosine"] == pytest.approx(1 - cosine_distance(t, p))
    assert with_diag.loc["T", "pearson"] == pytest.approx(stats.pearsonr(t, p).statistic)
    pd.testing.assert_series_equal(scores.attrs["mean"], scores.mean())


def test_identical_negated_and_scaled():
    true = _symmetric(2)
    same = colocalization_similarity(true, true * 3)
    np.testing.assert_allclose(same.to_numpy(), 1)
    assert same.attrs["mean"]["cosine"] == pytest.approx(1)
    opposite = colocalization_similarity(true, -true)
    np.testing.assert_allclose(opposite.to_numpy(), -1)


def test_aligns_cell_types_by_name():
    true, pred = _symmetric(3), _symmetric(4)
    order = ["Endo", "T", "Fib", "B"]
    shuffled = pred.loc[order, order]
    pd.testing.assert_frame_equal(colocalization_similarity(true, shuffled), colocalization_similarity(true, pred))


def test_diagonal_is_excluded_by_default():
    true, pred = _symmetric(5), _symmetric(5)
    pred.iloc[0, 0] += 100  # only the self-pair of T differs
    assert colocalization_similarity(true, pred).loc["T", "cosine"] == pytest.approx(1)
    assert colocalization_similarity(true, pred, diagonal=True).loc["T", "cosine"] < 0.9


def test_nan_entries_skipped_and_all_nan_rows():
    true, pred = _symmetric(6), _symmetric(7)
    true.loc["Fib", :] = np.nan
    true.loc[:, "Fib"] = np.nan
    scores = colocalization_similarity(true, pred)
    assert scores.loc["Fib"].isna().all()
    t, p = true.loc["T", ["B", "Endo"]].to_numpy(), pred.loc["T", ["B", "Endo"]].to_numpy()
    assert scores.loc["T", "cosine"] == pytest.approx(1 - cosine_distance(t, p))
    assert scores.attrs["mean"]["cosine"] == pytest.approx(scores["cosine"].drop("Fib").mean())


def test_accepts_moran_r_results():
    true, pred = _symmetric(8), _symmetric(9)
    from_dicts = colocalization_similarity({"R": true, "z": true}, {"R": pred})
    pd.testing.assert_frame_equal(from_dicts, colocalization_similarity(true, pred))


def test_mismatched_or_malformed_inputs():
    true = _symmetric(0)
    other = _symmetric(1, names=["T", "B", "Fib", "Myeloid"])
    with pytest.raises(ValueError, match=r"only in R_true \['Endo'\].*only in R_pred \['Myeloid'\]"):
        colocalization_similarity(true, other)
    with pytest.raises(ValueError, match="square"):
        colocalization_similarity(true, true.iloc[:, :3])
    with pytest.raises(TypeError, match="DataFrame"):
        colocalization_similarity(true.to_numpy(), true)
