"""Per-slide CC and L1 scores of each configuration (the paper's Figures 2-3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from histodecon.tl import CVResult

from ._utils import save_figure

_LABELS = {"cc": "CC score (higher is better)", "l1": "L1 score (lower is better)"}


def per_slide(cv_results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per configuration and held-out slide: the metrics averaged over cell types (NaN skipped)."""
    required = ["configuration", "sample", *metrics]
    missing = [column for column in required if column not in cv_results.columns]
    if missing:
        raise KeyError(
            f"`cv_results` lacks columns {missing}; pass the result of `hd.tl.cross_validate` or its "
            f"`scores` / `summary` DataFrame. It has {cv_results.columns.tolist()}."
        )
    groups = [column for column in ("configuration", "fold", "sample") if column in cv_results.columns]
    return cv_results.groupby(groups, sort=False, observed=True)[list(metrics)].mean().reset_index()


def scores(
    cv_results: CVResult | pd.DataFrame,
    *,
    metrics: Sequence[str] = ("cc", "l1"),
    order: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Box plots of the per-slide scores of each configuration, one point per held-out slide.

    Each held-out slide's score is its metric averaged over cell types (the CC score is a
    per-cell-type correlation; the L1 score is a per-slide figure and is the same on every
    row of the slide). Boxes show the spread over slides, as in Figures 2-3 of Sun, Zhu & Qiu
    (2025).

    Parameters
    ----------
    cv_results
        The result of :func:`histodecon.tl.cross_validate` (its ``summary`` is drawn), or a
        DataFrame like its ``scores`` or ``summary``: columns ``configuration``, ``sample``
        (the held-out slide), optionally ``fold`` and ``cell_type``, and the metrics.
    metrics
        Metric columns to draw, one panel each.
    order
        Configurations in the order to draw; default their order of appearance.
    ax
        Axes to draw into, one per metric; default a new figure.
    figsize
        Figure size in inches for a new figure; default grows with the number of configurations.
    save
        Write the figure to this path (format from the suffix).

    Returns
    -------
    The figure.

    Examples
    --------
    >>> import pandas as pd
    >>> import histodecon as hd
    >>> results = pd.DataFrame(
    ...     {
    ...         "configuration": ["uni", "uni", "conch+uni", "conch+uni"],
    ...         "sample": ["A1", "B1", "A1", "B1"],
    ...         "cc": [0.41, 0.35, 0.48, 0.44],
    ...         "l1": [0.80, 0.86, 0.74, 0.79],
    ...     }
    ... )
    >>> fig = hd.pl.scores(results)
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if isinstance(cv_results, CVResult):
        cv_results = cv_results.summary
    if not isinstance(cv_results, pd.DataFrame):
        raise TypeError(
            f"`cv_results` must be the result of `hd.tl.cross_validate` or a DataFrame, got {type(cv_results).__name__}."
        )
    table = per_slide(cv_results, metrics)
    if table.empty:
        raise ValueError(
            "`cv_results` has no rows to draw; run `hd.tl.cross_validate` with at least one configuration."
        )
    present = list(dict.fromkeys(table["configuration"]))
    order = present if order is None else list(order)
    unknown = sorted(set(order) - set(present))
    if unknown:
        raise ValueError(f"`order` names configurations {unknown} that are not in `cv_results`; it has {present}.")
    if ax is None:
        width = max(3.0, 0.7 * len(order) + 1.5)
        fig, axes = plt.subplots(1, len(metrics), figsize=figsize or (width * len(metrics), 4.0), layout="constrained")
        axes = np.atleast_1d(axes)
    else:
        axes = np.atleast_1d(ax)
        if len(axes) != len(metrics):
            raise ValueError(f"Got {len(axes)} axes for {len(metrics)} metrics; pass one Axes per metric.")
        fig = axes[0].figure
    for metric, panel in zip(metrics, axes, strict=True):
        sns.boxplot(data=table, x="configuration", y=metric, order=order, ax=panel, color="0.9", showfliers=False)
        sns.stripplot(data=table, x="configuration", y=metric, order=order, ax=panel, color="black", size=4)
        panel.set_xlabel("")
        panel.set_ylabel(_LABELS.get(metric, metric))
        panel.tick_params(axis="x", labelrotation=30)
        for label in panel.get_xticklabels():
            label.set_horizontalalignment("right")
    save_figure(fig, save)
    return fig
