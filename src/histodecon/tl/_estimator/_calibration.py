"""Per-spot prediction intervals by split conformal prediction on the early-stopping folds' held-out spots.

Every early-stopping fold's network predicts the spots it did not train on (whole held-out
slides when the fit had several). The absolute residuals ``|truth - prediction|`` of those
``n`` out-of-fold spots, per cell type, are the conformity scores: the interval at level ``p``
of a new spot is its prediction +- the ``ceil((n + 1) p)``-th smallest score, which covers
the truth of a spot exchangeable with the calibration spots with probability >= ``p`` (Vovk
et al. 2005; Angelopoulos & Bates 2021). The record keeps at most :data:`MAX_RANKS` order
statistics per cell type, every one up to that many spots, evenly spaced ranks beyond, so a
model file stays small whatever the number of training spots; a rank that is not kept is
read as the next kept one (more conservative by at most ``n / MAX_RANKS`` ranks).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

#: What the record's scores are, for the model file and the predictions' provenance.
METHOD = "split conformal: absolute out-of-fold residuals per cell type"
#: Order statistics kept per cell type.
MAX_RANKS = 200


def calibration_record(truth: np.ndarray, pred: np.ndarray, held_out: str) -> dict[str, Any]:
    """The calibration a model file carries: quantiles of the out-of-fold absolute residuals per cell type.

    ``truth`` and ``pred`` are the out-of-fold spots' targets and predictions (spots x cell
    types, in the model's output units); ``held_out`` says what the folds held out
    (``"groups"`` or ``"spots"``).
    """
    scores = np.sort(np.abs(truth.astype(np.float64) - pred.astype(np.float64)), axis=0)
    n = len(scores)
    ranks = np.unique(np.ceil(np.arange(1, MAX_RANKS + 1) * n / MAX_RANKS).astype(int)) if n > MAX_RANKS else None
    ranks = np.arange(1, n + 1) if ranks is None else ranks
    return {
        "method": METHOD,
        "held_out": held_out,
        "n_spots": int(n),
        "ranks": ranks.tolist(),
        "residuals": scores[ranks - 1].tolist(),
    }


def check_interval(interval: Any) -> float | None:
    """``interval`` as a float in (0, 1), or ``None``; a clear error otherwise."""
    if interval is None:
        return None
    if isinstance(interval, bool) or not isinstance(interval, Real) or not 0 < float(interval) < 1:
        raise ValueError(
            f"`interval` must be a coverage level strictly between 0 and 1 (e.g. 0.8), or None for no interval; "
            f"got {interval!r}."
        )
    return float(interval)


def check_calibrated(calibration: dict[str, Any] | None) -> None:
    """Refuse intervals from a model without calibration (saved before model file version 4), naming the fix."""
    if calibration is None:
        raise ValueError(
            "This model carries no calibration for prediction intervals: it was saved by an earlier histodecon "
            "(model file version 3 or older). Fit it again with `hd.tl.fit` of this version and save it, or "
            "predict with `interval=None`."
        )


def half_widths(record: dict[str, Any], interval: float) -> np.ndarray:
    """Per cell type, the half-width of the conformal interval at level ``interval``.

    The ``ceil((n + 1) interval)``-th smallest residual, or the next one kept; with fewer
    calibration spots than ``interval / (1 - interval)`` that rank is past the last, and the
    interval is the largest residual seen (coverage then below ``interval`` is possible).
    """
    rank = math.ceil((record["n_spots"] + 1) * interval)
    index = min(int(np.searchsorted(record["ranks"], rank)), len(record["ranks"]) - 1)
    return np.asarray(record["residuals"][index], dtype=np.float64)


def bounds(
    pred: np.ndarray, record: dict[str, Any], interval: float, *, proportions: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of every spot's prediction at level ``interval``.

    Bounds are clipped to what the target can be: >= 0, and <= 1 for compositions.
    """
    width = half_widths(record, interval).astype(np.float32)
    lower = np.maximum(pred - width, 0.0)
    upper = pred + width
    if proportions:
        upper = np.minimum(upper, 1.0)
    return lower.astype(np.float32), upper.astype(np.float32)
