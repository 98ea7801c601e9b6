"""True and predicted abundances as coloured spots on the H&E image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._geometry import image_pixels, sample_geometry
from histodecon._utils import get_table, samples_of

from ._utils import doc_show_save, finish, image_crop, panel_axes


def _sample_spots(adata: AnnData, sample: str | None) -> tuple[str, np.ndarray]:
    """The sample to draw and the boolean mask of its spots."""
    samples = samples_of(adata)
    if sample is None:
        if len(samples) != 1:
            raise ValueError(f"The table holds samples {samples}; pass `sample=` to pick the one to draw.")
        sample = samples[0]
    if sample not in samples:
        raise KeyError(f"No sample {sample!r} in `obs[{Key.obs.sample!r}]`; known samples: {samples}.")
    return sample, (adata.obs[Key.obs.sample] == sample).to_numpy()


#: A key ending in this draws the width of a prediction's interval (``hd.tl.predict(..., interval=)``).
WIDTH_SUFFIX = "_width"


def _obsm_frame(adata: AnnData, key: str) -> pd.DataFrame:
    """``obsm[key]``, or for ``"<prediction>_width"`` its interval's width: upper bound minus lower bound."""
    bounds = Key.obsm.interval_bounds(key.removesuffix(WIDTH_SUFFIX)) if key.endswith(WIDTH_SUFFIX) else ()
    if key not in adata.obsm and bounds and all(bound in adata.obsm for bound in bounds):
        return adata.obsm[bounds[1]] - adata.obsm[bounds[0]]
    if key not in adata.obsm:
        raise KeyError(f"No `obsm[{key!r}]` in the table; its obsm keys are {list(adata.obsm)}.")
    return adata.obsm[key]


def _abundances(adata: AnnData, keys: list[str], cell_types: list[str], mask: np.ndarray) -> list[pd.DataFrame]:
    frames = []
    for key in keys:
        frame = _obsm_frame(adata, key)
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"`obsm[{key!r}]` must be a DataFrame whose columns name the cell types.")
        missing = [name for name in cell_types if name not in frame.columns]
        if missing:
            raise KeyError(f"`obsm[{key!r}]` has no cell types {missing}; it has {frame.columns.tolist()}.")
        frames.append(frame.loc[mask, cell_types])
    return frames


@doc_show_save
def spatial_abundance(
    sdata: SpatialData,
    cell_types: str | Sequence[str],
    *,
    keys: Sequence[str] = (Key.obsm.abund, Key.obsm.pred_abund),
    titles: Sequence[str] | None = None,
    sample: str | None = None,
    cmap: str = "viridis",
    max_image_px: int = 1500,
    table_key: str = Key.tables.table,
    image_key: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | Path | bool | None = None,
) -> Figure | list[Axes] | None:
    """The H&E image with its spots coloured by cell-type abundance, truth above prediction.

    One row per key (e.g. the cell2location truth and the prediction), one column per cell
    type; each column has one colour scale, shared by its rows, from ``min(0, lowest value)``
    to the highest, so the truth and the prediction of a type compare at a glance. Spots
    without a value (NaN, e.g. predictions of spots with NaN embeddings) are grey. Spots are
    drawn at their true diameter. The image is read at a downsampled pyramid level, cropped to
    the spots.

    Parameters
    ----------
    sdata
        A slide from :mod:`histodecon.io` or :mod:`histodecon.datasets`.
    cell_types
        Cell type(s) to draw: columns of the ``obsm[key]`` DataFrames.
    keys
        ``obsm`` keys of the abundances, one row each. ``"<key>_width"`` (e.g.
        ``"pred_abund_width"``) draws the width of the interval that ``hd.tl.predict(...,
        interval=)`` wrote for ``<key>``: where the prediction is least certain.
    titles
        Row labels; default the keys.
    sample
        Sample to draw; needed when the table holds several.
    cmap
        Colour map of the abundances.
    max_image_px
        Longest side, in pixels, of the image drawn behind the spots.
    table_key
        Name of the table.
    image_key
        The image to draw where several share the spots' coordinate system (e.g. squidpy's
        ``normalize_stains`` output beside the raw H&E); several without it are an error listing them.
    figsize
        Figure size in inches of a new figure; default about 3 inches per panel.
    ax
        Axes to draw into, one per panel (keys x cell types, row by row); default a new figure.
    {show_save}

    Returns
    -------
    :class:`~matplotlib.figure.Figure`, list of :class:`~matplotlib.axes.Axes` or ``None``
        ``None`` when the figure is shown (default), the :class:`~matplotlib.figure.Figure` with
        ``return_fig=True``, else the panels' Axes row by row (``show=False``, or ``ax`` given).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200, counts=False)
    >>> table = sdata.tables["table"]
    >>> table.obsm["pred_abund"] = table.obsm["abund"] ** 0.8
    >>> hd.pl.spatial_abundance(sdata, ["tumour", "lymphocyte"], titles=["truth", "predicted"])
    """
    if not isinstance(sdata, SpatialData):
        raise TypeError(
            f"`spatial_abundance` draws on the H&E image and needs a SpatialData, got {type(sdata).__name__}; "
            "read the slide with `hd.io`."
        )
    cell_types = [cell_types] if isinstance(cell_types, str) else list(cell_types)
    keys = [keys] if isinstance(keys, str) else list(keys)
    titles = keys if titles is None else list(titles)
    if len(titles) != len(keys):
        raise ValueError(f"Got {len(titles)} titles for {len(keys)} keys; give one title per key.")
    if not cell_types:
        raise ValueError("Give at least one cell type to draw.")
    adata = get_table(sdata, table_key)
    sample, mask = _sample_spots(adata, sample)
    frames = _abundances(adata, keys, cell_types, mask)
    geometry = sample_geometry(sdata, sample, table_key=table_key, image_key=image_key)

    centres = image_pixels(sdata, geometry, np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)[mask, :2])
    diameter = geometry.spot_diameter_px
    box = np.concatenate([centres.min(axis=0) - diameter, centres.max(axis=0) + diameter])
    pixels, extent = image_crop(sdata.images[geometry.image_key], box, max_image_px)

    colormap = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    n_rows, n_cols = len(keys), len(cell_types)
    aspect = (box[3] - box[1]) / (box[2] - box[0])
    figsize = figsize or (3.0 * n_cols + 0.6, 3.0 * aspect * n_rows + 1.0)
    if ax is None:
        fig, axes = plt.subplots(n_rows, n_cols, figsize=figsize, layout="constrained", squeeze=False)
    else:
        fig, flat = panel_axes(ax, n_rows * n_cols, "key and cell type")
        axes = np.array(flat, dtype=object).reshape(n_rows, n_cols)
    for col, name in enumerate(cell_types):
        values = np.concatenate([frame[name].to_numpy(dtype=np.float64) for frame in frames])
        values = values[np.isfinite(values)]  # NaN (spots without a prediction) are drawn grey
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        norm = Normalize(vmin=min(0.0, low), vmax=high)
        for row, frame in enumerate(frames):
            panel = axes[row, col]
            panel.imshow(pixels, extent=extent, interpolation="bilinear")
            spots = EllipseCollection(
                diameter,
                diameter,
                0.0,
                units="xy",
                offsets=centres,
                offset_transform=panel.transData,
                cmap=colormap,
                norm=norm,
            )
            spots.set_array(frame[name].to_numpy())
            panel.add_collection(spots)
            panel.set_xlim(box[0], box[2])
            panel.set_ylim(box[3], box[1])
            panel.set_xticks([])
            panel.set_yticks([])
            if row == 0:
                panel.set_title(name)
            if col == 0:
                panel.set_ylabel(titles[row])
        fig.colorbar(spots, ax=list(axes[:, col]), location="bottom", shrink=0.8, aspect=25)
    return finish(fig, list(axes.ravel()), name="spatial_abundance", ax=ax, show=show, return_fig=return_fig, save=save)
