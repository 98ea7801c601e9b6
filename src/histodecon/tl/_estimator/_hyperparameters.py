"""The regressor's hyperparameters, declared once with their validation."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from histodecon._utils import check_positive_int

#: Widths of the six hidden layers: with the output layer, the paper's 7 linear layers.
DEFAULT_HIDDEN = (256, 256, 128, 128, 64, 64)
#: Former names of renamed hyperparameters (accepted with a FutureWarning for one release, and in model files).
DEPRECATED_NAMES = {"l1": "mae_weight", "l2": "pearson_weight"}
_INTEGERS = {"batch_size", "max_epochs", "patience", "seed"}
TARGET_SCALES = ("auto", "proportion", "abundance")
#: Rows of a proportion target sum to 1 within this tolerance.
PROPORTION_TOLERANCE = 1e-3
#: Fields added after model-file version 2, with the value that reproduces the models saved before them.
ADDED_FIELDS = {"target_scale": "abundance"}


@dataclass(frozen=True)
class Hyperparameters:
    """Architecture, loss and optimisation settings of :class:`~histodecon.tl.AbundanceRegressor`.

    Every training entry point (:class:`~histodecon.tl.AbundanceRegressor`,
    :func:`~histodecon.tl.fit`, :func:`~histodecon.tl.cross_validate`) takes these fields
    as keyword options; the values are checked when the object is made.

    Attributes
    ----------
    hidden
        Widths of the hidden layers.
    mae_weight
        Weight of the mean absolute error in the loss (formerly ``l1``).
    pearson_weight
        Weight of ``1 - Pearson`` (per cell type, over the batch) in the loss (formerly ``l2``).
    lr
        AdamW learning rate.
    weight_decay
        AdamW weight decay.
    batch_size
        Spots per minibatch.
    max_epochs
        Upper bound on training epochs.
    patience
        Epochs without improvement of the validation loss before an early-stopping fold stops.
    validation_fraction
        Fraction of the training groups (or spots) each of the (up to three, disjoint)
        early-stopping folds holds out.
    seed
        Seed of the initialisation, the folds and the minibatch order.
    target_scale
        ``"proportion"``: the network predicts a composition (a softmax: every spot's
        predictions sum to 1), what the L1 score compares; ``"abundance"``: non-negative
        amounts in the target's units (cells per spot for cell2location's abundances), through
        a softplus; ``"auto"`` (default): ``"proportion"`` when every training spot's target
        sums to 1 (published proportions such as her2st's stereoscope ones), else
        ``"abundance"``, so predictions keep the target's units. The fitted model records the
        scale it used. Measured on leave-one-section-out over her2st B4, C2 and C3 with
        proportion targets (``benchmarks/her2st_loso.py``), the composition output gave mean
        CC 0.292 and L1 0.566 against 0.294 and 0.648 for the abundance output (the mean
        predictor: L1 0.656).

    Examples
    --------
    >>> from histodecon.tl import Hyperparameters
    >>> Hyperparameters(hidden=(64, 32), max_epochs=50).hidden
    (64, 32)
    """

    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    mae_weight: float = 1.0
    pearson_weight: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    validation_fraction: float = 0.1
    seed: int = 0
    target_scale: str = "auto"

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden) if isinstance(self.hidden, Sequence) else self.hidden
        if not hidden or not all(isinstance(w, int | np.integer) and not isinstance(w, bool) and w > 0 for w in hidden):
            raise ValueError(f"`hidden` must be a non-empty sequence of positive layer widths, got {self.hidden!r}.")
        for name in ("mae_weight", "pearson_weight", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}.")
        for name in ("batch_size", "max_epochs", "patience"):  # issue 15: 2.5 or True are not counts
            check_positive_int(getattr(self, name), name)
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"`validation_fraction` must be in (0, 1), got {self.validation_fraction!r}.")
        if self.target_scale not in TARGET_SCALES:
            raise ValueError(f"`target_scale` must be one of {TARGET_SCALES}, got {self.target_scale!r}.")
        object.__setattr__(self, "hidden", tuple(int(w) for w in hidden))
        for f in fields(self):  # stored as plain int / float, as they are written to JSON
            if type(f.default) in (int, float):
                object.__setattr__(self, f.name, (int if f.name in _INTEGERS else float)(getattr(self, f.name)))

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], *, base: Hyperparameters | None = None, **arguments: Any
    ) -> Hyperparameters:
        """Hyperparameters from a caller's ``**options`` (replacing those of ``base``), refusing unknown names.

        ``arguments`` are hyperparameters the caller takes as parameters of its own (``seed``),
        so they are not valid ``options``. The deprecated names ``l1`` and ``l2`` are
        accepted with a :class:`FutureWarning`.
        """
        options = dict(options)
        for old, new in DEPRECATED_NAMES.items():
            if old in options:
                if new in options:
                    raise TypeError(f"Pass `{new}=` only; `{old}=` is its deprecated name.")
                warnings.warn(
                    f"`{old}=` is deprecated and will be removed in the next release; pass `{new}=` instead.",
                    FutureWarning,
                    stacklevel=3,
                )
                options[new] = options.pop(old)
        valid = sorted(f.name for f in fields(cls) if f.name not in arguments)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            own = "".join(f" (the {name} is the `{name}=` argument)" for name in arguments)
            raise TypeError(f"Unknown hyperparameters {unknown}; valid: {valid}{own}.")
        return replace(base or cls(), **options, **arguments)

    def to_record(self) -> dict[str, Any]:
        """The fields as JSON values (``hidden`` as a list), as a model file stores them."""
        record = asdict(self)
        record["hidden"] = list(self.hidden)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Hyperparameters:
        """Hyperparameters stored by :meth:`to_record`, or by an older model file (former names, fewer fields)."""
        return cls(**{**ADDED_FIELDS, **{DEPRECATED_NAMES.get(name, name): value for name, value in record.items()}})

    @classmethod
    def record_keys(cls, version: int) -> set[str]:
        """The keys of a record stored by model files of ``version``: 1 has the former names, 1 and 2 lack the added fields."""
        renamed = {new: old for old, new in DEPRECATED_NAMES.items()} if version == 1 else {}
        return {renamed.get(f.name, f.name) for f in fields(cls) if version >= 3 or f.name not in ADDED_FIELDS}


def resolved_target_scale(target_scale: str, y: np.ndarray) -> str:
    """``target_scale`` with ``"auto"`` decided by the target ``y``: proportions if every row sums to 1."""
    if target_scale != "auto":
        return target_scale
    return "proportion" if np.allclose(y.sum(axis=1), 1.0, atol=PROPORTION_TOLERANCE) else "abundance"
