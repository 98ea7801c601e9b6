"""The simple baselines :func:`~histodecon.tl.cross_validate` scores beside the regressor.

A model earns its place only by beating them on the same folds: the **mean** predictor (the
training spots' mean abundance of every cell type, whatever the image) and **ridge**
regression on the standardised features, solved in closed form, its penalty chosen by
cross-validation on the training spots only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Names of the baselines :func:`~histodecon.tl.cross_validate` knows, in drawing order.
BASELINES = ("mean", "ridge")
#: Ridge penalties tried on the standardised features (as ``benchmarks/her2st_loso.py``'s ``RidgeCV``).
RIDGE_ALPHAS = tuple(np.logspace(-2, 5, 15))
#: Folds of the penalty search: whole groups, dealt round-robin into at most this many folds, or random
#: folds when the training spots have fewer than two groups.
RIDGE_FOLDS = 5


@dataclass(frozen=True)
class MeanBaseline:
    """Predicts the training mean of every target column for every spot."""

    mean: np.ndarray

    @classmethod
    def fit(cls, y: np.ndarray) -> MeanBaseline:
        """The column means of the training targets ``y`` (spots x cell types)."""
        return cls(np.asarray(y, dtype=np.float64).mean(axis=0))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The training mean, one row per spot of ``x``."""
        return np.tile(self.mean, (len(x), 1))


@dataclass(frozen=True)
class RidgeBaseline:
    """Linear regression on standardised features with an L2 penalty ``alpha`` (intercept unpenalised).

    Features are centred and scaled by the training spots' mean and standard deviation
    (constant features: scale 1); the coefficients minimise
    ``||Y - Y_mean - Z W||^2 + alpha ||W||^2`` on the standardised features ``Z``, so that
    ``W = (Z^T Z + alpha I)^-1 Z^T (Y - Y_mean)``. Predictions are not clipped: the L1
    score clips negative abundances itself.
    """

    centre: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    alpha: float

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        alphas: Sequence[float] = RIDGE_ALPHAS,
        seed: int = 0,
    ) -> RidgeBaseline:
        """Fit on all of ``x``, ``y`` with the penalty of ``alphas`` that cross-validates best on them.

        The penalty minimises the squared error over held-out training spots: whole groups
        held out, dealt into at most :data:`RIDGE_FOLDS` folds, when ``groups`` has two or more
        values, else :data:`RIDGE_FOLDS` random folds (seeded). With a single penalty there is no search.
        """
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        alphas = np.asarray(alphas, dtype=np.float64)
        alpha = float(alphas[0]) if len(alphas) == 1 else float(alphas[_best_alpha(x, y, groups, alphas, seed)])
        solution = _Solution(x, y)
        return cls(solution.centre, solution.scale, solution.coef(alpha), solution.y_mean, alpha)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted targets of the spots ``x``."""
        return ((np.asarray(x, dtype=np.float64) - self.centre) / self.scale) @ self.coef + self.intercept


class _Solution:
    """The eigendecomposition of one training set's standardised Gram matrix: ridge for any penalty at once."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.centre = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        self.y_mean = y.mean(axis=0)
        z = (x - self.centre) / self.scale
        self.eigenvalues, self.eigenvectors = np.linalg.eigh(z.T @ z)
        self.eigenvalues = np.clip(self.eigenvalues, 0.0, None)
        self.projected = self.eigenvectors.T @ (z.T @ (y - self.y_mean))

    def coef(self, alpha: float) -> np.ndarray:
        return self.eigenvectors @ (self.projected / (self.eigenvalues + alpha)[:, None])

    def squared_errors(self, x: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Summed squared error on ``x``, ``y`` of every penalty in ``alphas``."""
        rotated = ((x - self.centre) / self.scale) @ self.eigenvectors
        residual = y - self.y_mean
        return np.array(
            [((residual - rotated @ (self.projected / (self.eigenvalues + a)[:, None])) ** 2).sum() for a in alphas]
        )


def _best_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, alphas: np.ndarray, seed: int) -> int:
    """Index of the penalty with the smallest squared error over the inner folds."""
    values = None if groups is None else np.unique(groups)
    if values is not None and len(values) >= 2:
        # Whole groups held out, at most RIDGE_FOLDS folds: each fold costs one d x d eigendecomposition.
        fold_of_value = np.arange(len(values)) % RIDGE_FOLDS
        fold_of_spot = fold_of_value[np.searchsorted(values, groups)]
        folds = [fold_of_spot == k for k in range(min(RIDGE_FOLDS, len(values)))]
    else:
        order = np.random.default_rng(seed).permutation(len(x))
        folds = [np.isin(np.arange(len(x)), part) for part in np.array_split(order, min(RIDGE_FOLDS, len(x)))]
    errors = np.zeros(len(alphas))
    for held_out in folds:
        errors += _Solution(x[~held_out], y[~held_out]).squared_errors(x[held_out], y[held_out], alphas)
    return int(np.argmin(errors))


def check_baselines(baselines: str | Sequence[str]) -> list[str]:
    """The requested baseline names, checked against :data:`BASELINES`."""
    names = [baselines] if isinstance(baselines, str) else list(baselines)
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; choose from {list(BASELINES)} (or `baselines=()` for none).")
    return list(dict.fromkeys(names))


def fit_baseline(
    name: str, x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None, seed: int
) -> MeanBaseline | RidgeBaseline:
    """Baseline ``name`` fitted on the training spots ``x``, ``y``."""
    if name == "mean":
        return MeanBaseline.fit(y)
    return RidgeBaseline.fit(x, y, groups=groups, seed=seed)
