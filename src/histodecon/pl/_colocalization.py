"""Moran's R of the truth and the prediction as clustered heatmaps side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._utils import get_table

from ._utils import save_figure

#: Linkage methods of :func:`scipy.cluster.hierarchy.linkage` that accept any distance (not only Euclidean).
LINKAGE_METHODS = ("average", "complete", "single", "weighted")


def _moran_result(adata: AnnData, key: str) -> pd.DataFrame:
    """``R`` of ``uns[key]`` if that is a Moran's R result, else of ``uns[Key.uns.moran(key)]``."""
    for uns_key in (key, Key.uns.moran(key)):
        result = adata.uns.get(uns_key)
        if isinstance(result, Mapping) and isinstance(result.get("R"), pd.DataFrame):
            return result["R"]
    raise KeyError(
        f"No Moran's R result for {key!r} in `uns` (looked for {key!r} and {Key.uns.moran(key)!r}). "
        f"Compute it with `hd.gr.moran_r(data, key={key!r})`."
    )


def cluster_order(R: pd.DataFrame, method: str) -> tuple[list[str], np.ndarray | None]:
    """Cell types in the leaf order of a hierarchical clustering by colocalisation, and the linkage.

    The distance of two cell types is ``max(R) - R[a, b]`` over the off-diagonal (symmetrised)
    R, so types that colocalise most are joined first; undefined R counts as 0.
    """
    if len(R) < 3:
        return list(R.index), None
    sym = np.nan_to_num(R.to_numpy(), nan=0.0)
    sym = (sym + sym.T) / 2
    off = ~np.eye(len(sym), dtype=bool)
    distance = np.where(off, sym[off].max() - sym, 0.0)
    link = hierarchy.linkage(squareform(distance, checks=False), method=method, optimal_ordering=True)
    return [R.index[i] for i in hierarchy.leaves_list(link)], link


def _colour_limit(matrices: list[pd.DataFrame]) -> float:
    """Largest finite ``|R|`` off the diagonal of all panels (the diagonal if there is nothing else)."""
    values = np.concatenate([R.to_numpy()[~np.eye(len(R), dtype=bool)] for R in matrices])
    if not np.isfinite(values).any():
        values = np.concatenate([np.diag(R.to_numpy()) for R in matrices])
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def colocalization(
    data: SpatialData | AnnData,
    *,
    keys: Sequence[str] = (Key.obsm.abund, Key.obsm.pred_abund),
    titles: Sequence[str] | None = None,
    method: str = "average",
    cmap: str = "RdBu_r",
    annotate: bool = False,
    table_key: str = Key.tables.table,
    figsize: tuple[float, float] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Heatmaps of Moran's R side by side, clustered on the first, on one colour scale.

    The cell types of the first matrix (usually the truth) are clustered hierarchically by
    colocalisation (distance ``max(R) - R[a, b]``: types that colocalise most join first); its
    dendrogram is drawn above it and its order is reused for every panel, so the same cell in
    each panel is the same pair of cell types. One diverging colour scale, symmetric about 0 and shared by all
    panels, has a single colour bar; it spans the off-diagonal R (the colocalisation), and the
    usually larger diagonal (each type's univariate Moran's I) saturates, marked by the colour
    bar's arrow. Undefined R (constant cell types) is grey. The layout follows
    :func:`squidpy.pl.nhood_enrichment` (dendrogram on top, colour bar on the right).

    Parameters
    ----------
    data
        A :class:`~spatialdata.SpatialData` (its table ``table_key``) or an
        :class:`~anndata.AnnData` holding the results of :func:`histodecon.gr.moran_r`.
    keys
        For each panel, the ``obsm`` key given to :func:`~histodecon.gr.moran_r` (its result is
        ``uns[f'{key}_moranR']``) or the ``uns`` key of the result itself.
    titles
        Panel titles; default the keys.
    method
        Linkage method of :func:`scipy.cluster.hierarchy.linkage`: "average", "complete",
        "single" or "weighted" (those that need Euclidean input, like "ward", do not apply).
    cmap
        Diverging colour map.
    annotate
        Print each value in its cell.
    table_key
        Name of the table in a SpatialData.
    figsize
        Figure size in inches; default grows with the number of cell types.
    save
        Write the figure to this path (format from the suffix).

    Returns
    -------
    The figure.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200, counts=False)
    >>> table = sdata.tables["table"]
    >>> table.obsm["pred_abund"] = table.obsm["abund"] ** 0.8
    >>> hd.gr.rbf_graph(sdata, length_scale_um=150)
    >>> hd.gr.moran_r(sdata, key="abund")
    >>> hd.gr.moran_r(sdata, key="pred_abund")
    >>> fig = hd.pl.colocalization(sdata, titles=["cell2location", "predicted"])
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("Give at least one key: the `obsm` key given to `hd.gr.moran_r`, e.g. `keys=['abund']`.")
    titles = keys if titles is None else list(titles)
    if len(titles) != len(keys):
        raise ValueError(f"Got {len(titles)} titles for {len(keys)} keys; give one title per key.")
    if method not in LINKAGE_METHODS:
        raise ValueError(f"Unknown linkage `method={method!r}`; use one of {list(LINKAGE_METHODS)}.")
    adata = get_table(data, table_key)
    matrices = [_moran_result(adata, key) for key in keys]
    order, link = cluster_order(matrices[0], method)
    for key, R in zip(keys[1:], matrices[1:], strict=True):
        if set(R.index) != set(order):
            raise ValueError(
                f"The Moran's R of {key!r} has other cell types than that of {keys[0]!r}: only in {keys[0]!r} "
                f"{sorted(set(order) - set(R.index))}, only in {key!r} {sorted(set(R.index) - set(order))}."
            )
    matrices = [R.loc[order, order] for R in matrices]
    vmax = _colour_limit(matrices)
    everything = np.concatenate([R.to_numpy().ravel() for R in matrices])
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(np.nanmin(everything, initial=0) < -vmax), bool(np.nanmax(everything, initial=0) > vmax))
    ]
    colormap = plt.get_cmap(cmap).with_extremes(bad="lightgrey")

    k = len(order)
    side = max(3.0, 0.3 * k + 1.5)
    figsize = figsize or (side * len(keys) + 1.5, side + 0.8)
    fig, axes = plt.subplots(1, len(keys), figsize=figsize, layout="constrained", squeeze=False)
    for panel, (heat, title, R) in enumerate(zip(axes[0], titles, matrices, strict=True)):
        image = heat.imshow(R.to_numpy(), cmap=colormap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        heat.set_xticks(range(k), order, rotation=90)
        heat.set_yticks(range(k), order if panel == 0 else [])
        heat.tick_params(length=0)
        if annotate:
            for (i, j), value in np.ndenumerate(R.to_numpy()):
                if np.isfinite(value):
                    color = "white" if abs(value) > 0.6 * vmax else "black"
                    heat.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
        # The dendrogram sits on the heatmap's own divider, so it stays aligned with its columns; the
        # other panels keep the same (empty) space so that their rows line up with the first's.
        top = make_axes_locatable(heat).append_axes("top", size="15%", pad=0.05)
        if link is not None and panel == 0:
            # Lift all joins a little so that a join at distance 0 is not drawn along the axis.
            lifted = link.copy()
            lifted[:, 2] += 0.1 * max(link[:, 2].max(), 1e-12)
            hierarchy.dendrogram(lifted, ax=top, no_labels=True, color_threshold=0, above_threshold_color="black")
            top.set_xlim(0, 10 * k)  # leaves sit at 5, 15, ...: one per heatmap column
        top.axis("off")
        top.set_title(title)
    colorbar = fig.colorbar(image, ax=list(axes[0]), shrink=0.8, aspect=30, extend=extend)
    colorbar.set_label("Moran's R")
    save_figure(fig, save)
    return fig
