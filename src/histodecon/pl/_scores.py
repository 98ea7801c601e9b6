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
from matplotlib.patches import Patch

from histodecon._constants import Key
from histodecon.tl import CVResult

from ._utils import doc_show_save, finish

_LABELS = {"cc": "CC score (higher is better)", "l1": "L1 score (lower is better)"}
#: Fill and hatch of each model's boxes: the regressor plain, the baselines of cross_validate hatched.
MODEL_STYLES = {"mlp": ("0.9", ""), "mean": ("#f4c58f", "//"), "ridge": ("#9ec5e8", "..")}
OTHER_STYLES = [("#b8e0b0", "xx"), ("#d9b8e0", "\\\\"), ("#e0d3b8", "++")]


def per_slide(cv_results: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per configuration and held-out slide: the metrics averaged over cell types (NaN skipped)."""
    required = ["configuration", Key.obs.sample, *metrics]
    missing = [column for column in required if column not in cv_results.columns]
    if missing:
        raise KeyError(
            f"`cv_results` lacks columns {missing}; pass the result of `hd.tl.cross_validate` or its "
            f"`scores` / `summary` DataFrame. It has {cv_results.columns.tolist()}."
        )
    groups = [column for column in ("configuration", "model", "fold", Key.obs.sample) if column in cv_results.columns]
    return cv_results.groupby(groups, sort=False, observed=True)[list(metrics)].mean().reset_index()


@doc_show_save
def scores(
    cv_results: CVResult | pd.DataFrame,
    *,
    metrics: Sequence[str] = ("cc", "l1"),
    order: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | bool | None = None,
) -> Figure | list[Axes] | None:
    """Box plots of the per-slide scores of each configuration, one point per held-out slide.

    With the baselines of :func:`histodecon.tl.cross_validate` (its ``model`` column), each
    configuration gets one box per model side by side: the regressor (``"mlp"``, plain) and
    each baseline (``"mean"``, ``"ridge"``: coloured and hatched), with a legend. The mean
    predictor has no CC score (a constant prediction has no correlation), so it draws only in
    the L1 panel.

    Each held-out slide's score is its metric averaged over cell types (the CC score is a
    per-cell-type correlation; the L1 score is a per-slide figure and is the same on every
    row of the slide). Boxes show the spread over slides, as in Figures 2-3 of Sun, Zhu & Qiu
    (2025).

    Parameters
    ----------
    cv_results
        The result of :func:`histodecon.tl.cross_validate` (its ``summary`` is drawn), or a
        DataFrame like its ``scores`` or ``summary``: columns ``configuration``, ``sample``
        (the held-out slide), optionally ``model``, ``fold`` and ``cell_type``, and the metrics.
    metrics
        Metric columns to draw, one panel each.
    order
        Configurations in the order to draw; default their order of appearance.
    models
        Models to draw, in order within each configuration (e.g. ``["mlp", "ridge"]``);
        default every ``model`` of ``cv_results``, in order of appearance.
    ax
        Axes to draw into, one per metric; default a new figure.
    figsize
        Figure size in inches for a new figure; default grows with the number of configurations.
    {show_save}

    Returns
    -------
    :class:`~matplotlib.figure.Figure`, list of :class:`~matplotlib.axes.Axes` or ``None``
        ``None`` when the figure is shown (default), the :class:`~matplotlib.figure.Figure` with
        ``return_fig=True``, else the panels' Axes (``show=False``, or ``ax`` given).

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
    >>> hd.pl.scores(results)
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
    models = _models(table, models)
    if models:
        table = table[table["model"].isin(models)]
    if ax is None:
        width = max(3.0, (0.7 + 0.4 * max(0, len(models) - 1)) * len(order) + 1.5)
        fig, axes = plt.subplots(1, len(metrics), figsize=figsize or (width * len(metrics), 4.0), layout="constrained")
        axes = np.atleast_1d(axes)
    else:
        axes = np.atleast_1d(ax)
        if len(axes) != len(metrics):
            raise ValueError(f"Got {len(axes)} axes for {len(metrics)} metrics; pass one Axes per metric.")
        fig = axes[0].figure
    for metric, panel in zip(metrics, axes, strict=True):
        if len(models) > 1:
            _draw_models(panel, table, metric, order, models)
        else:
            sns.boxplot(data=table, x="configuration", y=metric, order=order, ax=panel, color="0.9", showfliers=False)
            sns.stripplot(data=table, x="configuration", y=metric, order=order, ax=panel, color="black", size=4)
        panel.set_xlabel("")
        panel.set_ylabel(_LABELS.get(metric, metric))
        panel.tick_params(axis="x", labelrotation=30)
        for label in panel.get_xticklabels():
            label.set_horizontalalignment("right")
    return finish(fig, list(axes), name="scores", ax=ax, show=show, return_fig=return_fig, save=save)


def _models(table: pd.DataFrame, models: Sequence[str] | None) -> list[str]:
    """The models to draw, checked against the ``model`` column of the table."""
    present = list(dict.fromkeys(table["model"])) if "model" in table.columns else []
    if models is None:
        return present
    models = [models] if isinstance(models, str) else list(models)
    unknown = sorted(set(models) - set(present))
    if unknown:
        raise ValueError(f"`models` names {unknown}, which are not in `cv_results`; it has {present}.")
    return models


def _draw_models(panel: Axes, table: pd.DataFrame, metric: str, order: list[str], models: list[str]) -> None:
    """One box per model within each configuration, baselines coloured and hatched, points dodged, a legend."""
    styles = {model: MODEL_STYLES.get(model) for model in models}
    others = iter(OTHER_STYLES * len(models))
    styles = {model: style or next(others) for model, style in styles.items()}
    drawn_before = len(panel.containers)
    common = {"data": table, "x": "configuration", "y": metric, "order": order, "hue": "model", "hue_order": models}
    sns.boxplot(**common, ax=panel, palette={m: styles[m][0] for m in models}, showfliers=False, legend=False)
    sns.stripplot(**common, ax=panel, palette=dict.fromkeys(models, "black"), dodge=True, size=4, legend=False)
    for model, boxes in zip(_present_models(table, metric, models), panel.containers[drawn_before:], strict=True):
        for box in boxes.boxes:
            box.set_hatch(styles[model][1])
    handles = [Patch(facecolor=styles[m][0], edgecolor="0.25", hatch=styles[m][1], label=m) for m in models]
    panel.legend(handles=handles, title="model", fontsize="small", title_fontsize="small")


def _present_models(table: pd.DataFrame, metric: str, models: list[str]) -> list[str]:
    """The models that have a box (a finite value) in the panel of ``metric``, in drawing order."""
    finite = set(table.loc[table[metric].notna(), "model"])
    return [model for model in models if model in finite]
