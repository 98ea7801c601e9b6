"""Checks of a trained regressor on its validation spots: compositions, spread and the collapse warning."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from histodecon.metrics._scores import cc_score, l1_score

#: Predictions whose spread on the validation spots is below this fraction of the truth's have collapsed.
COLLAPSE_SPREAD = 0.1
#: Predictions whose CC on the validation spots is below ridge regression's by more than this are flagged
#: (a near-tie is not: on the synthetic demo the two differ by 0.003 from fold to fold).
RIDGE_CC_MARGIN = 0.05


def compositions(y: np.ndarray) -> np.ndarray:
    """Every row divided by its sum; a row summing to 0 becomes the uniform composition."""
    sums = y.sum(axis=1, keepdims=True)
    return np.where(sums > 0, y / np.where(sums > 0, sums, 1), 1 / y.shape[1]).astype(np.float32)


def spread(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean over cell types whose truth varies of sd(prediction) / sd(truth)."""
    sd = truth.std(axis=0)
    varies = sd > 0
    return float(np.mean(pred.std(axis=0)[varies] / sd[varies])) if varies.any() else float("nan")


def warn_if_collapsed(scores: Mapping[str, float]) -> None:
    """Warn when the validation predictions barely vary, or correlate worse than ridge regression."""
    problems = []
    if scores["spread"] < COLLAPSE_SPREAD:
        problems.append(
            f"their spread is {scores['spread']:.2f} of the truth's (per cell type, on average): "
            "they barely move from the mean"
        )
    if scores["cc"] < scores["ridge_cc"] - RIDGE_CC_MARGIN:
        problems.append(
            f"their CC ({scores['cc']:.3f}) is below that of ridge regression on the same features "
            f"({scores['ridge_cc']:.3f})"
        )
    if problems:
        warnings.warn(
            "The regressor's predictions on the validation spots look collapsed: "
            + "; ".join(problems)
            + ". Train on more slides or spots, or try a smaller `hidden`, another `weight_decay` or `lr`; "
            "compare with `hd.tl.cross_validate(..., baselines=('mean', 'ridge'))`.",
            UserWarning,
            stacklevel=3,
        )


def validation_scores(truth: np.ndarray, pred: np.ndarray, ridge_pred: np.ndarray, loss: float) -> dict[str, float]:
    """Scores of the early-stopped networks' out-of-fold predictions, beside ridge fitted on the same training spots."""
    return {
        "loss": loss,
        "cc": cc_score(truth, pred),
        "l1": l1_score(truth, pred),
        "spread": spread(truth, pred),
        "ridge_cc": cc_score(truth, ridge_pred),
    }
