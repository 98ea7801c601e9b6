"""How a slide's embeddings become the regressor's inputs: per-slide standardisation and the neighbourhood feature.

Both are measured on leave-one-section-out over her2st B4, C2 and C3 (``benchmarks/her2st_loso.py``):
standardising every slide's features by its own spots removes much of the staining and scanning
difference between slides (mean CC 0.237 -> 0.292, L1 0.629 -> 0.566 with the default network
and patch field), so it is the default. The neighbourhood mean within 400 um gave CC 0.326 and
L1 0.569 there (0.328 / 0.571 with the former 112 um field), but in a three-seed check without
the final refit it raised CC (0.249 -> 0.291) while worsening L1 (0.579 -> 0.619); on three
sections that is not evidence enough for a default, so it is an option.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from anndata import AnnData
from scipy.spatial import cKDTree

from histodecon._constants import Key
from histodecon._utils import sample_info

FEATURE_SCALINGS = ("slide", "training")
#: Fewer in-tissue spots than this in a sample make its per-slide statistics unreliable (warned).
MIN_SLIDE_SPOTS = 20
#: What a model file of version 1 or 2 (before these options) used: no per-slide scaling, no context.
LEGACY = {"feature_scaling": "training", "context_radius": None}


@dataclass(frozen=True)
class InputOptions:
    """How :func:`~histodecon.tl.fit` and :func:`~histodecon.tl.predict` build the inputs of a slide's spots.

    Attributes
    ----------
    feature_scaling
        ``"slide"``: every feature is standardised (mean 0, sd 1) over the in-tissue spots of
        its own sample, before the network's own standardisation; ``"training"``: only the
        network's standardisation by the training spots.
    context_radius
        Radius in micrometres of the neighbourhood feature: the mean input of the in-tissue spots
        of the same sample whose centres lie within it (the spot included) is concatenated to
        every spot's input, doubling the width. ``None``: no neighbourhood feature.
    """

    feature_scaling: Literal["slide", "training"] = "slide"
    context_radius: float | None = None

    def __post_init__(self) -> None:
        if self.feature_scaling not in FEATURE_SCALINGS:
            raise ValueError(f"`feature_scaling` must be one of {FEATURE_SCALINGS}, got {self.feature_scaling!r}.")
        radius = self.context_radius
        if radius is not None:
            if (
                isinstance(radius, bool)
                or not isinstance(radius, int | float)
                or not np.isfinite(radius)
                or radius <= 0
            ):
                raise ValueError(f"`context_radius` must be a positive number of micrometres or None, got {radius!r}.")
            object.__setattr__(self, "context_radius", float(radius))

    def to_record(self) -> dict[str, Any]:
        """The options as JSON values, as a model file stores them."""
        return asdict(self)

    def width(self, n_features: int) -> int:
        """Input width for ``n_features`` embedding dims."""
        return 2 * n_features if self.context_radius is not None else n_features


def spot_inputs(adata: AnnData, features: np.ndarray, keep: np.ndarray, options: InputOptions) -> np.ndarray:
    """The inputs of every spot of ``adata`` from its embeddings ``features`` (float32).

    Statistics (per-slide mean and sd, neighbourhoods) come from the spots where ``keep``
    (in tissue) is True and whose embeddings are finite, sample by sample (``obs[Key.obs.sample]``,
    else the whole table); spots with non-finite embeddings get non-finite inputs.
    """
    if options.feature_scaling == "training" and options.context_radius is None:
        return features
    out = np.full((len(features), options.width(features.shape[1])), np.nan, dtype=np.float32)
    samples = adata.obs[Key.obs.sample].astype(str).to_numpy() if Key.obs.sample in adata.obs else None
    for sample in [None] if samples is None else list(dict.fromkeys(samples)):
        rows = np.ones(len(features), dtype=bool) if sample is None else samples == sample
        block = features[rows]
        usable = keep[rows] & np.isfinite(block).all(axis=1)
        if options.feature_scaling == "slide":
            block = _standardised(block, usable, sample)
        if options.context_radius is not None:
            block = np.hstack([block, _neighbourhood_mean(adata, rows, sample, block, usable, options.context_radius)])
        out[rows] = block
    return out


def _standardised(block: np.ndarray, usable: np.ndarray, sample: str | None) -> np.ndarray:
    """``block`` standardised over its ``usable`` spots; over all its finite spots when none is in tissue.

    Every spot's input is relative to its slide, so a table of a few spots (a subset of a slide)
    gets other inputs than the whole slide would give them: a warning says so.
    """
    name = "the table" if sample is None else f"sample {sample!r}"
    if not usable.any():
        usable = np.isfinite(block).all(axis=1)
        if not usable.any():
            return block
        warnings.warn(
            f"No spot of {name} is in tissue (`obs[{Key.obs.in_tissue!r}]`); its features are standardised over "
            "all its spots instead. Check the in-tissue flags (e.g. `hd.pp.filter_background`'s threshold).",
            UserWarning,
            stacklevel=4,
        )
    if usable.sum() < MIN_SLIDE_SPOTS:
        warnings.warn(
            f"Features are standardised per slide and {name} has only {int(usable.sum())} in-tissue spots, so their "
            "inputs depend on which spots the table holds. Use whole slides, or train with "
            "`feature_scaling='training'`.",
            UserWarning,
            stacklevel=4,
        )
    sd = block[usable].std(axis=0)
    return (block - block[usable].mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _neighbourhood_mean(
    adata: AnnData, rows: np.ndarray, sample: str | None, block: np.ndarray, usable: np.ndarray, radius: float
) -> np.ndarray:
    """Mean of ``block`` over the usable spots within ``radius`` um of every spot (NaN where there are none)."""
    if Key.obsm.spatial not in adata.obsm:
        raise KeyError(
            f"`context_radius` needs spot centres in `obsm[{Key.obsm.spatial!r}]` (the obsm keys are {list(adata.obsm)}); "
            "read the slide with `hd.io`."
        )
    mpp = float(sample_info(adata, sample)["mpp"])
    centres = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)[rows, :2] * mpp
    tree = cKDTree(centres[usable])
    sums = np.zeros_like(block, dtype=np.float64)
    counts = np.zeros(len(block))
    values = block[usable].astype(np.float64)
    for i, neighbours in enumerate(tree.query_ball_point(centres, r=radius)):
        if neighbours:
            sums[i], counts[i] = values[neighbours].sum(axis=0), len(neighbours)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts[:, None]).astype(np.float32)
