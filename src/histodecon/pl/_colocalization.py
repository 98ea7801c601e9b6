"""Colocalisation matrices side by side: Moran's R of histodecon and squidpy's cluster statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._utils import get_table

from ._utils import doc_show_save, finish, panel_axes

#: Linkage methods of :func:`scipy.cluster.hierarchy.linkage` that accept any distance (not only Euclidean).
LINKAGE_METHODS = ("average", "complete", "single", "weighted")


@dataclass(frozen=True)
class _Kind:
    """A kind of matrix: its colour bar label, neutral value, colour map and whether it is one of squidpy's."""

    label: str
    centre: float | None  # diverging about this value; None: sequential from 0
    suffix: str | None  # squidpy's uns key suffix, None for Moran's R


MORAN = _Kind("Moran's R", 0.0, None)
NHOOD = _Kind("neighbourhood enrichment z-score", 0.0, "_nhood_enrichment")
CO_OCCURRENCE = _Kind("co-occurrence ratio", 1.0, "_co_occurrence")
INTERACTIONS = _Kind("interactions", None, "_interactions")
SQUIDPY_KINDS = (NHOOD, CO_OCCURRENCE, INTERACTIONS)


@dataclass
class _Panel:
    key: str
    kind: _Kind
    matrix: pd.DataFrame
    title: str


def _moran_result(adata: AnnData, key: str) -> pd.DataFrame | None:
    """``R`` of ``uns[key]`` if that is a Moran's R result, else of ``uns[Key.uns.moran(key)]``."""
    for uns_key in (key, Key.uns.moran(key)):
        result = adata.uns.get(uns_key)
        if isinstance(result, Mapping) and isinstance(result.get("R"), pd.DataFrame):
            return result["R"]
    return None


def _cluster_labels(adata: AnnData, key: str, cluster_key: str) -> pd.Index:
    """The categories of ``obs[cluster_key]``, which label the rows and columns of squidpy's result ``key``."""
    if cluster_key not in adata.obs:
        raise KeyError(
            f"`uns[{key!r}]` looks like a squidpy result for clusters `obs[{cluster_key!r}]`, which the table lacks; "
            f"its obs columns are {list(adata.obs.columns)}."
        )
    return pd.Index(adata.obs[cluster_key].astype("category").cat.categories.astype(str))


def _co_occurrence_at(result: Mapping, key: str, distance: float | None) -> tuple[np.ndarray, float]:
    """The co-occurrence ratios within the squidpy radius nearest to ``distance``, and that radius."""
    radii = np.asarray(result["interval"], dtype=np.float64)[1:]  # occ[..., i]: pairs closer than interval[i + 1]
    if distance is None:
        raise ValueError(
            f"`uns[{key!r}]` holds co-occurrence at {len(radii)} distances, from {radii[0]:.4g} to {radii[-1]:.4g} "
            "(units of `obsm['spatial']`); pick one with `distance=`."
        )
    nearest = int(np.argmin(np.abs(radii - distance)))
    if not radii[0] / 2 <= distance <= radii[-1] * 1.5:
        raise ValueError(
            f"`distance={distance}` is far outside the co-occurrence distances of `uns[{key!r}]` "
            f"({radii[0]:.4g} to {radii[-1]:.4g}); pass one in that range or recompute `sq.gr.co_occurrence` "
            "with `interval=` covering it."
        )
    return np.asarray(result["occ"], dtype=np.float64)[:, :, nearest], float(radii[nearest])


def _panel(adata: AnnData, key: str, title: str | None, distance: float | None) -> _Panel:
    """The matrix of ``key``: a Moran's R result or squidpy's cluster result, labelled by cell type."""
    R = _moran_result(adata, key)
    if R is not None:
        return _Panel(key, MORAN, R.set_axis(R.index.astype(str)).set_axis(R.columns.astype(str), axis=1), title or key)
    kind = next((kind for kind in SQUIDPY_KINDS if key.endswith(kind.suffix) and key in adata.uns), None)
    if kind is None:
        raise KeyError(
            f"No Moran's R result for {key!r} in `uns` (looked for {key!r} and {Key.uns.moran(key)!r}), and "
            f"{key!r} is not a squidpy result (`uns['<cluster_key>_nhood_enrichment']`, `..._co_occurrence` or "
            f"`..._interactions`). Compute it with `hd.gr.moran_r(data, key={key!r})` or with squidpy."
        )
    cluster_key = key.removesuffix(kind.suffix)
    labels = _cluster_labels(adata, key, cluster_key)
    result = adata.uns[key]
    if kind is NHOOD:
        values, default_title = result["zscore"], f"neighbourhood enrichment\n({cluster_key})"
    elif kind is CO_OCCURRENCE:
        values, radius = _co_occurrence_at(result, key, distance)
        default_title = f"co-occurrence, d ≤ {radius:.4g}\n({cluster_key})"
    else:
        values, default_title = result, f"interactions\n({cluster_key})"
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(labels), len(labels)):
        raise ValueError(
            f"`uns[{key!r}]` is {values.shape[0]} x {values.shape[1]}, but `obs[{cluster_key!r}]` has "
            f"{len(labels)} categories; recompute it with squidpy on the current clusters."
        )
    return _Panel(key, kind, pd.DataFrame(values, index=labels, columns=labels), title or default_title)


def cluster_order(R: pd.DataFrame, method: str) -> tuple[list[str], np.ndarray | None]:
    """Labels in the leaf order of a hierarchical clustering by colocalisation, and the linkage.

    The distance of two labels is ``max(R) - R[a, b]`` over the off-diagonal (symmetrised)
    matrix, so those that colocalise most are joined first; undefined values count as 0.
    """
    if len(R) < 3:
        return list(R.index), None
    sym = np.nan_to_num(R.to_numpy(), nan=0.0)
    sym = (sym + sym.T) / 2
    off = ~np.eye(len(sym), dtype=bool)
    distance = np.where(off, sym[off].max() - sym, 0.0)
    link = hierarchy.linkage(squareform(distance, checks=False), method=method, optimal_ordering=True)
    return [R.index[i] for i in hierarchy.leaves_list(link)], link


def _check_aligned(panels: list[_Panel]) -> None:
    """Refuse panels whose labels are not the first panel's (a cluster panel may lack some)."""
    first = panels[0]
    names = set(first.matrix.index)
    for panel in panels[1:]:
        extra, missing = set(panel.matrix.index) - names, names - set(panel.matrix.index)
        # A cluster panel may lack cell types that are never a cluster (e.g. never dominant): drawn grey.
        if extra or (missing and panel.kind is MORAN and first.kind is MORAN):
            raise ValueError(
                f"The labels of {panel.key!r} do not match those of {first.key!r}: only in {first.key!r} "
                f"{sorted(missing)}, only in {panel.key!r} {sorted(extra)}. Labels are matched by name (cell "
                "types, or the categories of the cluster column); put the panel with every label first."
            )


def _norm(matrices: list[np.ndarray], kind: _Kind) -> tuple[Normalize, str]:
    """One colour scale for all panels of a kind, spanning their off-diagonal values, and its colour bar's extend.

    Diverging kinds are symmetric about their neutral value (0, or 1 for ratios); the usually
    larger diagonal saturates, marked by the colour bar's arrow.
    """
    off = np.concatenate([m[~np.eye(len(m), dtype=bool)] for m in matrices])
    if not np.isfinite(off).any():
        off = np.concatenate([np.diag(m) for m in matrices])
    off = off[np.isfinite(off)]
    everything = np.concatenate([m.ravel() for m in matrices])
    if kind.centre is None:
        low, high = 0.0, float(off.max()) if off.size and off.max() > 0 else 1.0
    else:
        spread = np.abs(off - kind.centre)
        half = float(spread.max()) if spread.size and spread.max() > 0 else 1.0
        low, high = kind.centre - half, kind.centre + half
    below, above = bool(np.nanmin(everything, initial=low) < low), bool(np.nanmax(everything, initial=high) > high)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}
    return Normalize(vmin=low, vmax=high), extend[(below, above)]


def _draw_panel(heat: Axes, values: np.ndarray, order: list[str], *, first: bool, cmap, norm, annotate: bool):
    image = heat.imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
    k = len(order)
    heat.set_xticks(range(k), order, rotation=90)
    heat.set_yticks(range(k), order if first else [])
    heat.tick_params(length=0)
    if annotate:
        middle = (norm.vmin + norm.vmax) / 2
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                strong = abs(value - middle) > 0.6 * (norm.vmax - middle)
                heat.text(
                    j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if strong else "black"
                )
    return image


@doc_show_save
def colocalization(
    data: SpatialData | AnnData,
    *,
    keys: Sequence[str] = (Key.obsm.abund, Key.obsm.pred_abund),
    titles: Sequence[str] | None = None,
    distance: float | None = None,
    method: str = "average",
    cmap: str = "RdBu_r",
    annotate: bool = False,
    table_key: str = Key.tables.table,
    figsize: tuple[float, float] | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | bool | None = None,
) -> Figure | list[Axes] | None:
    """Colocalisation heatmaps side by side, in one order clustered on the first panel.

    Each panel is a matrix of cell types (or clusters) by cell types, from ``uns``:

    - histodecon's Moran's R (:func:`histodecon.gr.moran_r`; pass the ``obsm`` key it was
      computed on, e.g. ``"pred_abund"``, or the result's ``uns`` key);
    - squidpy's cluster statistics, by their ``uns`` key: ``"{cluster_key}_nhood_enrichment"``
      (the z-scores of :func:`squidpy.gr.nhood_enrichment`), ``"{cluster_key}_co_occurrence"``
      (the ratios of :func:`squidpy.gr.co_occurrence` within the radius nearest to ``distance``)
      and ``"{cluster_key}_interactions"`` (:func:`squidpy.gr.interaction_matrix`).

    Rows and columns are matched by name: cell-type names of Moran's R and the categories of
    ``obs[cluster_key]`` (e.g. the dominant predicted cell type of each spot). The labels of the
    first panel are clustered hierarchically (distance ``max(M) - M[a, b]``: labels that
    colocalise most join first), its dendrogram is drawn above it and its order is reused for
    every panel, so the same cell in each panel is the same pair. A cluster panel may lack
    labels of the first (a cell type that is never dominant forms no cluster); Moran panels
    must have the same cell types. Missing or undefined values are grey.

    Each kind has one colour scale and one colour bar, shared by its panels: Moran's R and
    z-scores diverge symmetrically about 0, co-occurrence ratios about 1, interaction counts
    are sequential from 0. Scales span the off-diagonal values (the colocalisation); the
    usually larger diagonal saturates, marked by the colour bar's arrow. The layout follows
    :func:`squidpy.pl.nhood_enrichment` (dendrogram on top).

    Parameters
    ----------
    data
        A :class:`~spatialdata.SpatialData` (its table ``table_key``) or an
        :class:`~anndata.AnnData` (e.g. from :func:`histodecon.get.abundances`) holding the results.
    keys
        One per panel: an ``obsm`` key given to :func:`~histodecon.gr.moran_r` (its result is
        ``uns[f'{key}_moranR']``), the ``uns`` key of a Moran's R result, or the ``uns`` key of
        a squidpy result named above.
    titles
        Panel titles; default the keys (Moran's R) or the statistic and cluster key (squidpy).
    distance
        For a co-occurrence panel: the radius, in units of ``obsm['spatial']`` (full-resolution
        pixels for histodecon slides), whose ratios are drawn; the nearest of squidpy's radii is used.
    method
        Linkage method of :func:`scipy.cluster.hierarchy.linkage`: "average", "complete",
        "single" or "weighted" (those that need Euclidean input, like "ward", do not apply).
    cmap
        Diverging colour map of Moran's R, z-scores and co-occurrence (interactions use "Reds").
    annotate
        Print each value in its cell.
    table_key
        Name of the table in a SpatialData.
    figsize
        Figure size in inches of a new figure; default grows with the number of labels.
    ax
        Axes to draw into, one per panel; default a new figure.
    {show_save}

    Returns
    -------
    :class:`~matplotlib.figure.Figure`, list of :class:`~matplotlib.axes.Axes` or ``None``
        ``None`` when the figure is shown (default), the :class:`~matplotlib.figure.Figure` with
        ``return_fig=True``, else the panels' Axes (``show=False``, or ``ax`` given).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200, counts=False)
    >>> table = sdata.tables["table"]
    >>> table.obsm["pred_abund"] = table.obsm["abund"] ** 0.8
    >>> hd.gr.rbf_graph(sdata, length_scale_um=150)
    >>> hd.gr.moran_r(sdata, key="abund")
    >>> hd.gr.moran_r(sdata, key="pred_abund")
    >>> hd.pl.colocalization(sdata, titles=["cell2location", "predicted"])

    Beside squidpy's neighbourhood enrichment of the dominant predicted cell type:

    >>> import squidpy as sq
    >>> adata = hd.get.abundances(sdata, "pred_abund")
    >>> adata.obs["dominant"] = adata.to_df().idxmax(axis=1).astype("category")
    >>> sq.gr.nhood_enrichment(adata, cluster_key="dominant", connectivity_key="rbf", show_progress_bar=False)
    >>> hd.pl.colocalization(adata, keys=["pred_abund", "dominant_nhood_enrichment"])
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("Give at least one key: the `obsm` key given to `hd.gr.moran_r`, e.g. `keys=['abund']`.")
    if titles is not None and len(titles) != len(keys):
        raise ValueError(f"Got {len(titles)} titles for {len(keys)} keys; give one title per key.")
    if method not in LINKAGE_METHODS:
        raise ValueError(f"Unknown linkage `method={method!r}`; use one of {list(LINKAGE_METHODS)}.")
    adata = get_table(data, table_key)
    titles = [None] * len(keys) if titles is None else list(titles)
    panels = [_panel(adata, key, title, distance) for key, title in zip(keys, titles, strict=True)]
    _check_aligned(panels)
    order, link = cluster_order(panels[0].matrix, method)
    matrices = [panel.matrix.reindex(index=order, columns=order).to_numpy() for panel in panels]

    k = len(order)
    if ax is None:
        side = max(3.0, 0.3 * k + 1.5)
        figsize = figsize or (side * len(keys) + 1.5, side + 0.8 + (0.6 if len({p.kind for p in panels}) > 1 else 0))
        fig, axes = plt.subplots(1, len(keys), figsize=figsize, layout="constrained", squeeze=False)
        axes = list(axes[0])
    else:
        fig, axes = panel_axes(ax, len(keys), "panel")
    kinds = list(dict.fromkeys(panel.kind for panel in panels))
    for kind in kinds:
        members = [i for i, panel in enumerate(panels) if panel.kind is kind]
        norm, extend = _norm([matrices[i] for i in members], kind)
        colormap = plt.get_cmap("Reds" if kind.centre is None else cmap).with_extremes(bad="lightgrey")
        for i in members:
            image = _draw_panel(axes[i], matrices[i], order, first=i == 0, cmap=colormap, norm=norm, annotate=annotate)
        location = "right" if len(kinds) == 1 else "bottom"
        colorbar = fig.colorbar(image, ax=[axes[i] for i in members], location=location, shrink=0.8, extend=extend)
        colorbar.set_label(kind.label)
    for i, (heat, panel) in enumerate(zip(axes, panels, strict=True)):
        # The dendrogram sits on the heatmap's own divider, so it stays aligned with its columns; the
        # other panels keep the same (empty) space so that their rows line up with the first's.
        top = make_axes_locatable(heat).append_axes("top", size="15%", pad=0.05)
        if link is not None and i == 0:
            # Lift all joins a little so that a join at distance 0 is not drawn along the axis.
            lifted = link.copy()
            lifted[:, 2] += 0.1 * max(link[:, 2].max(), 1e-12)
            hierarchy.dendrogram(lifted, ax=top, no_labels=True, color_threshold=0, above_threshold_color="black")
            top.set_xlim(0, 10 * k)  # leaves sit at 5, 15, ...: one per heatmap column
        top.axis("off")
        top.set_title(panel.title)
    return finish(fig, axes, name="colocalization", ax=ax, show=show, return_fig=return_fig, save=save)
