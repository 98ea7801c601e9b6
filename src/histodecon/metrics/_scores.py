"""CC and L1 scores: how well predicted cell-type abundances match the truth on one slide."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def _as_matrix(values: np.ndarray | pd.DataFrame, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(
            f"`{name}` must be 2-D (spots x cell types), got shape {matrix.shape}; "
            "reshape a single cell type with `.reshape(-1, 1)`."
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"`{name}` contains NaN or infinite values; drop those spots before scoring.")
    return matrix


def _aligned(
    y_true: np.ndarray | pd.DataFrame, y_pred: np.ndarray | pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Both inputs as float64 matrices with the same column order, and the cell-type names.

    DataFrames are matched by column name (and by index when both are DataFrames); arrays by
    position.
    """
    if isinstance(y_true, pd.DataFrame) and isinstance(y_pred, pd.DataFrame):
        if set(y_true.columns) != set(y_pred.columns):
            raise ValueError(
                "`y_true` and `y_pred` have different cell types: only in y_true "
                f"{sorted(map(str, y_true.columns.difference(y_pred.columns)))}, only in y_pred "
                f"{sorted(map(str, y_pred.columns.difference(y_true.columns)))}. Select the shared columns first."
            )
        if not y_true.index.equals(y_pred.index):
            if set(y_true.index) != set(y_pred.index) or y_true.index.has_duplicates:
                raise ValueError(
                    "`y_true` and `y_pred` are indexed by different spots; select the same spots "
                    "in both, e.g. `y_pred.loc[y_true.index]`."
                )
            y_pred = y_pred.loc[y_true.index]
        y_pred = y_pred[y_true.columns]
    truth, pred = _as_matrix(y_true, "y_true"), _as_matrix(y_pred, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(
            f"`y_true` has shape {truth.shape} but `y_pred` has shape {pred.shape}; both must be spots x cell types."
        )
    frames = [frame for frame in (y_true, y_pred) if isinstance(frame, pd.DataFrame)]
    return truth, pred, frames[0].columns if frames else pd.RangeIndex(truth.shape[1])


def _unit_scaled(matrix: np.ndarray) -> np.ndarray:
    """Every column divided by its largest absolute value (all-zero columns left as they are)."""
    peak = np.abs(matrix).max(axis=0)
    return matrix / np.where(peak > 0, peak, 1.0)


def cc_score(
    y_true: np.ndarray | pd.DataFrame, y_pred: np.ndarray | pd.DataFrame, *, per_type: bool = False
) -> float | pd.Series:
    """CC score: Pearson correlation per cell type across the spots of one slide, averaged.

    For every cell type, the Pearson correlation between its true and predicted abundance
    over the spots is computed. Cell types whose truth or prediction is constant over the
    spots (all values identical) have no defined correlation: they are left out of the
    average and reported as NaN with ``per_type=True``. Scores are unitless and invariant to
    rescaling or shifting the prediction of a cell type by a positive factor.

    Parameters
    ----------
    y_true
        True abundances or proportions, spots x cell types (array or DataFrame).
    y_pred
        Predicted abundances, same shape. When both are DataFrames, columns are matched by
        name and rows by index.
    per_type
        Return the correlation of every cell type instead of their mean.

    Returns
    -------
    float or :class:`~pandas.Series`
        The mean correlation over the cell types where it is defined (NaN, with a warning, when
        it is defined for none), or with ``per_type=True`` a Series indexed by cell type.

    Examples
    --------
    >>> import numpy as np
    >>> import histodecon as hd
    >>> y = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0]])
    >>> round(hd.metrics.cc_score(y, 2 * y + 1), 6)
    1.0
    """
    truth, pred, names = _aligned(y_true, y_pred)
    defined = (np.ptp(truth, axis=0) > 0) & (np.ptp(pred, axis=0) > 0)
    # Correlation ignores each column's scale: bringing it to [-1, 1] first keeps sums of
    # squares from underflowing (tiny abundances) or overflowing (huge ones).
    truth, pred = _unit_scaled(truth), _unit_scaled(pred)
    truth = truth - truth.mean(axis=0)
    pred = pred - pred.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (truth * pred).sum(axis=0) / np.sqrt((truth**2).sum(axis=0) * (pred**2).sum(axis=0))
    corr = np.where(defined, np.clip(corr, -1.0, 1.0), np.nan)
    if per_type:
        return pd.Series(corr, index=names, name="cc")
    if not defined.any():
        warnings.warn(
            "CC score is undefined: every cell type has a constant truth or prediction.", RuntimeWarning, stacklevel=2
        )
        return float("nan")
    return float(np.nanmean(corr))


def l1_score(
    y_true: np.ndarray | pd.DataFrame, y_pred: np.ndarray | pd.DataFrame, *, per_spot: bool = False
) -> float | np.ndarray | pd.Series:
    """L1 score: mean over spots of the L1 distance between cell-type proportion vectors.

    Negative predictions are clipped at 0, then every row of the truth and the prediction is
    divided by its sum, turning abundances into proportions; the score of a spot is
    ``sum_k |p_true - p_pred|``, between 0 (same composition) and 2 (no cell type in common).
    Spots whose true row sums to 0 have no composition: they are left out of the mean (NaN
    with ``per_spot=True``). A predicted row that sums to 0 after clipping says nothing about
    the composition and is scored as the uniform proportion vector.

    Parameters
    ----------
    y_true
        True abundances or proportions, spots x cell types, non-negative.
    y_pred
        Predicted abundances, same shape. When both are DataFrames, columns are matched by
        name and rows by index.
    per_spot
        Return the distance of every spot instead of their mean (a Series indexed like
        ``y_true`` when it is a DataFrame, else an array).

    Returns
    -------
    float or :class:`~numpy.ndarray`
        The mean distance over spots with a composition (NaN, with a warning, when there are
        none), or the per-spot distances.

    Examples
    --------
    >>> import numpy as np
    >>> import histodecon as hd
    >>> hd.metrics.l1_score(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))
    1.0
    """
    truth, pred, _ = _aligned(y_true, y_pred)
    if (truth < 0).any():
        raise ValueError("`y_true` has negative values; abundances and proportions must be >= 0.")
    pred = np.clip(pred, 0.0, None)
    true_sum, pred_sum = truth.sum(axis=1, keepdims=True), pred.sum(axis=1, keepdims=True)
    uniform = np.full_like(pred, 1.0 / max(pred.shape[1], 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_true = truth / true_sum
        p_pred = np.where(pred_sum > 0, pred / pred_sum, uniform)
    distance = np.where(true_sum[:, 0] > 0, np.abs(p_true - p_pred).sum(axis=1), np.nan)
    if per_spot:
        return pd.Series(distance, index=y_true.index, name="l1") if isinstance(y_true, pd.DataFrame) else distance
    if np.isnan(distance).all():
        warnings.warn("L1 score is undefined: every true row sums to 0.", RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(np.nanmean(distance))
