import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import pearsonr

import histodecon as hd

finite = st.floats(0, 100, allow_nan=False, allow_infinity=False)
positive = st.floats(0.1, 10, allow_nan=False, allow_infinity=False)


@st.composite
def abundances(draw, min_spots=3):
    n = draw(st.integers(min_spots, 20))
    k = draw(st.integers(1, 6))
    return draw(arrays(np.float64, (n, k), elements=finite))


def varying(y):
    return np.ptp(y, axis=0) > 0


def test_cc_known_answer_matches_scipy():
    rng = np.random.default_rng(0)
    truth, pred = rng.random((30, 4)), rng.random((30, 4))
    expected = np.mean([pearsonr(truth[:, k], pred[:, k]).statistic for k in range(4)])
    assert hd.metrics.cc_score(truth, pred) == pytest.approx(expected, abs=1e-12)
    assert hd.metrics.cc_score(np.array([[1.0], [2.0], [3.0]]), np.array([[3.0], [2.0], [1.0]])) == pytest.approx(-1)


def test_cc_leaves_out_constant_types():
    truth = np.array([[1.0, 5.0, 0.0], [2.0, 5.0, 1.0], [4.0, 5.0, 0.0]])
    pred = np.array([[1.0, 1.0, 2.0], [2.0, 2.0, 2.0], [3.0, 0.0, 2.0]])
    per_type = hd.metrics.cc_score(truth, pred, per_type=True)
    assert np.isnan(per_type.iloc[1]) and np.isnan(per_type.iloc[2])  # constant truth, constant prediction
    assert hd.metrics.cc_score(truth, pred) == pytest.approx(pearsonr(truth[:, 0], pred[:, 0]).statistic)
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(hd.metrics.cc_score(truth[:, 1:], pred[:, 1:]))


@given(abundances())
def test_cc_of_y_with_itself_is_one(y):
    if varying(y).any():
        assert hd.metrics.cc_score(y, y) == pytest.approx(1.0)


@settings(max_examples=50)
@given(abundances(), st.data())
def test_cc_invariant_to_affine_rescaling_per_type(y, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    pred = y + rng.normal(size=y.shape)
    scale = np.array(data.draw(st.lists(positive, min_size=y.shape[1], max_size=y.shape[1])))
    shift = rng.normal(size=y.shape[1]) * 10
    before = hd.metrics.cc_score(y, pred, per_type=True)
    after = hd.metrics.cc_score(y, pred * scale + shift, per_type=True)
    np.testing.assert_allclose(after, before, atol=1e-9)
    assert (np.abs(before.dropna()) <= 1).all()


@given(abundances())
def test_cc_is_symmetric(y):
    pred = y[::-1] + np.arange(len(y))[:, None]
    np.testing.assert_allclose(
        hd.metrics.cc_score(y, pred, per_type=True), hd.metrics.cc_score(pred, y, per_type=True), atol=1e-12
    )


def test_l1_known_answers():
    assert hd.metrics.l1_score(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])) == pytest.approx(1.0)
    assert hd.metrics.l1_score(np.array([[1.0, 0.0]]), np.array([[0.0, 3.0]])) == pytest.approx(2.0)
    # negative predictions are clipped at 0: (2, -5) -> (1, 0) against (0.5, 0.5)
    assert hd.metrics.l1_score(np.array([[1.0, 1.0]]), np.array([[2.0, -5.0]])) == pytest.approx(1.0)
    # mean over spots: 0 and 2
    truth, pred = np.array([[1.0, 0.0], [0.0, 4.0]]), np.array([[2.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(hd.metrics.l1_score(truth, pred, per_spot=True), [0.0, 2.0])
    assert hd.metrics.l1_score(truth, pred) == pytest.approx(1.0)


def test_l1_rows_summing_to_zero():
    truth = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pred = np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, 0.0]])
    per_spot = hd.metrics.l1_score(truth, pred, per_spot=True)
    assert np.isnan(per_spot[0])  # no true composition: left out
    assert per_spot[1] == pytest.approx(2 / 3 + 1 / 3 + 1 / 3)  # all-zero prediction scored as uniform
    assert hd.metrics.l1_score(truth, pred) == pytest.approx(per_spot[1])
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(hd.metrics.l1_score(truth[:1], pred[:1]))


@given(abundances(min_spots=1), st.data())
def test_l1_bounds_identity_and_row_scale_invariance(y, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    pred = rng.normal(size=y.shape) * 10
    score = hd.metrics.l1_score(y, pred, per_spot=True)
    defined = y.sum(axis=1) > 0
    assert np.isnan(score[~defined]).all()
    assert ((score[defined] >= 0) & (score[defined] <= 2 + 1e-12)).all()
    np.testing.assert_allclose(hd.metrics.l1_score(y, y, per_spot=True)[defined], 0, atol=1e-12)
    row_scale = rng.uniform(0.1, 10, size=(len(y), 1))
    rescaled = hd.metrics.l1_score(y * row_scale, pred * row_scale[::-1], per_spot=True)
    np.testing.assert_allclose(rescaled, score, atol=1e-9)


def test_dataframes_are_aligned_by_name():
    rng = np.random.default_rng(1)
    truth = pd.DataFrame(rng.random((10, 3)), columns=["T", "B", "Fib"], index=[f"s{i}" for i in range(10)])
    pred = pd.DataFrame(rng.random((10, 3)), columns=["T", "B", "Fib"], index=truth.index)
    shuffled = pred.iloc[::-1][["Fib", "T", "B"]]
    assert hd.metrics.cc_score(truth, shuffled) == pytest.approx(hd.metrics.cc_score(truth.values, pred.values))
    assert hd.metrics.l1_score(truth, shuffled) == pytest.approx(hd.metrics.l1_score(truth.values, pred.values))
    per_type = hd.metrics.cc_score(truth, shuffled, per_type=True)
    assert list(per_type.index) == ["T", "B", "Fib"]
    assert list(hd.metrics.l1_score(truth, pred, per_spot=True).index) == list(truth.index)


def test_bad_inputs_are_refused_clearly():
    truth = pd.DataFrame(np.ones((3, 2)), columns=["T", "B"])
    with pytest.raises(ValueError, match=r"only in y_true \['B'\], only in y_pred \['NK'\]"):
        hd.metrics.cc_score(truth, pd.DataFrame(np.ones((3, 2)), columns=["T", "NK"]))
    with pytest.raises(ValueError, match="different spots"):
        hd.metrics.cc_score(truth, pd.DataFrame(np.ones((3, 2)), columns=["T", "B"], index=[5, 6, 7]))
    with pytest.raises(ValueError, match="shape"):
        hd.metrics.l1_score(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="reshape"):
        hd.metrics.cc_score(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        hd.metrics.l1_score(np.ones((3, 2)), np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="negative"):
        hd.metrics.l1_score(-np.ones((3, 2)), np.ones((3, 2)))


def test_cc_survives_tiny_and_huge_magnitudes():
    rng = np.random.default_rng(2)
    truth, pred = rng.random((20, 3)), rng.random((20, 3))
    expected = hd.metrics.cc_score(truth, pred)
    for scale in (1e-310, 1e-160, 1e160, 1e300):  # sums of squares would under- or overflow
        assert hd.metrics.cc_score(truth * scale, pred * scale) == pytest.approx(expected, abs=1e-12)
