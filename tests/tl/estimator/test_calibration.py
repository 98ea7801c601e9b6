import json

import numpy as np
import pytest

import histodecon as hd
from histodecon.tl._estimator._calibration import bounds, calibration_record, check_interval, half_widths
from histodecon.tl._estimator._file import record_checksum


def test_half_width_is_the_conformal_rank_of_the_residuals():
    """Residuals 1..n: the level-p half-width is the ceil((n + 1) p)-th smallest, a known answer."""
    residuals = np.arange(1, 10, dtype=float)[:, None]  # n = 9: every rank kept
    record = calibration_record(residuals, np.zeros_like(residuals), "groups")
    assert [half_widths(record, p)[0] for p in (0.5, 0.75, 0.8, 0.9)] == [5.0, 8.0, 8.0, 9.0]
    assert half_widths(record, 0.95)[0] == 9.0  # rank 10 > n: the largest residual
    many = np.arange(1, 1001, dtype=float)[:, None]  # n = 1000: 200 ranks kept, the next kept one read
    record = calibration_record(many, np.zeros_like(many), "groups")
    assert len(record["ranks"]) == 200 and record["ranks"][-1] == 1000
    assert half_widths(record, 0.8)[0] == 805.0  # rank ceil(1001 * 0.8) = 801, kept ranks 800, 805, ...


def test_conformal_intervals_cover_exchangeable_spots_at_the_nominal_level():
    """Calibrated on one draw of noisy spots, the intervals cover fresh draws of the same noise about as often as asked."""
    rng = np.random.default_rng(0)
    scale = np.array([0.01, 0.05, 0.2])  # cell types of very different error sizes
    pred_cal = 1 + rng.random((2000, 3))  # away from 0, where the bounds are clipped
    record = calibration_record(pred_cal + rng.normal(size=(2000, 3)) * scale, pred_cal, "groups")
    pred = 1 + rng.random((5000, 3))
    truth = pred + rng.normal(size=(5000, 3)) * scale
    widths = []
    for level in (0.5, 0.8, 0.95):
        lower, upper = bounds(pred.astype(np.float32), record, level, proportions=False)
        inside = (lower <= truth) & (truth <= upper)
        np.testing.assert_allclose(inside.mean(axis=0), level, atol=0.03)  # per cell type, not only on average
        widths.append((upper - lower).mean(axis=0))
    assert (np.diff(widths, axis=0) > 0).all()  # wider at a higher level, every cell type


def test_bounds_are_clipped_to_what_the_target_can_be():
    record = calibration_record(np.full((50, 2), 0.3), np.zeros((50, 2)), "spots")
    pred = np.array([[0.1, 0.9], [np.nan, 0.5]], dtype=np.float32)
    lower, upper = bounds(pred, record, 0.8, proportions=True)
    np.testing.assert_allclose(lower[0], [0.0, 0.6], atol=1e-6)
    np.testing.assert_allclose(upper[0], [0.4, 1.0], atol=1e-6)
    assert np.isnan(lower[1, 0]) and np.isnan(upper[1, 0])  # no prediction, no interval
    _, upper = bounds(pred, record, 0.8, proportions=False)
    assert upper[0, 1] == pytest.approx(1.2)


@pytest.mark.parametrize("interval", [0, 1, -0.2, 1.5, True, float("nan"), "0.8", [0.8]])
def test_bad_interval_is_refused(interval):
    with pytest.raises(ValueError, match=r"`interval` must be a coverage level strictly between 0 and 1"):
        check_interval(interval)


def test_model_file_carries_the_calibration_and_refuses_a_forged_one(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    model = hd.tl.AbundanceRegressor(hidden=(8,), max_epochs=3).fit(
        x, np.exp(x[:, :2]), groups=np.repeat(["a", "b", "c"], 40)
    )
    assert model.calibration["n_spots"] == 120 and model.calibration["held_out"] == "groups"
    model.save(tmp_path / "m")
    loaded = hd.tl.AbundanceRegressor.load(tmp_path / "m")
    assert loaded.calibration == model.calibration
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["version"] == 4
    for edit, match in (
        (lambda c: c["residuals"][3].__setitem__(0, -1.0), r"residuals\[3\]` must hold 2 finite"),
        (lambda c: c["residuals"][5].__setitem__(1, 0.0), r"residuals\[5\]` must not be below"),
        (lambda c: c["ranks"].__setitem__(1, 1), r"calibration\.ranks` must increase strictly"),
        (lambda c: c.__setitem__("n_spots", 0), r"calibration\.n_spots` must be an integer in \[1"),
        (lambda c: c.pop("ranks"), r"calibration\.ranks` is missing"),
    ):
        forged = json.loads(json.dumps(record))
        edit(forged["calibration"])
        forged["record_sha256"] = record_checksum(forged)
        (tmp_path / "m.json").write_text(json.dumps(forged))
        with pytest.raises(ValueError, match=match):
            hd.tl.AbundanceRegressor.load(tmp_path / "m")
