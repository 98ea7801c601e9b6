"""True and predicted abundances as coloured spots on the H&E image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from spatialdata import SpatialData, get_pyramid_levels
from xarray import DataArray, DataTree

from histodecon._constants import Key
from histodecon._utils import get_table, sample_info, samples_of

from ._utils import save_figure


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


def _abundances(adata: AnnData, keys: list[str], cell_types: list[str], mask: np.ndarray) -> list[pd.DataFrame]:
    frames = []
    for key in keys:
        if key not in adata.obsm:
            raise KeyError(f"No `obsm[{key!r}]` in the table; its obsm keys are {list(adata.obsm)}.")
        frame = adata.obsm[key]
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"`obsm[{key!r}]` must be a DataFrame whose columns name the cell types.")
        missing = [name for name in cell_types if name not in frame.columns]
        if missing:
            raise KeyError(f"`obsm[{key!r}]` has no cell types {missing}; it has {frame.columns.tolist()}.")
        frames.append(frame.loc[mask, cell_types])
    return frames


def _image_crop(element: DataArray | DataTree, box: np.ndarray, max_px: int) -> tuple[np.ndarray, list[float]]:
    """The RGB crop of ``box`` (full-resolution ``[x0, y0, x1, y1]``) at most ``max_px`` on a side.

    Reads the finest pyramid level that is small enough (striding the coarsest if none is), so
    only the pixels drawn are loaded. Returns ``(y, x, c)`` pixels and their imshow extent in
    full-resolution pixels.
    """
    levels = get_pyramid_levels(element) if isinstance(element, DataTree) else [element]
    full_width = levels[0].sizes["x"]
    crop_side = max(box[2] - box[0], box[3] - box[1])
    for level in levels:
        scale = full_width / level.sizes["x"]
        if crop_side / scale <= max_px:
            break
    step = max(1, math.ceil(crop_side / scale / max_px))
    height, width = level.sizes["y"], level.sizes["x"]
    x0, y0 = (max(0, int(v // scale)) for v in box[:2])
    x1, y1 = min(width, math.ceil(box[2] / scale)), min(height, math.ceil(box[3] / scale))
    pixels = np.asarray(level.isel(x=slice(x0, x1, step), y=slice(y0, y1, step)).transpose("y", "x", "c"))
    rows, cols = pixels.shape[:2]
    extent = [x0 * scale, (x0 + cols * step) * scale, (y0 + rows * step) * scale, y0 * scale]
    return pixels, extent


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
    figsize: tuple[float, float] | None = None,
    save: str | Path | None = None,
) -> Figure:
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
        ``obsm`` keys of the abundances, one row each.
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
    figsize
        Figure size in inches; default about 3 inches per panel.
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
    >>> fig = hd.pl.spatial_abundance(sdata, ["tumour", "lymphocyte"], titles=["truth", "predicted"])
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
    info = sample_info(adata, sample)
    if info["image_key"] not in sdata.images:
        raise KeyError(f"The image {info['image_key']!r} of sample {sample!r} is not in `sdata.images`.")

    centres = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)[mask, :2]
    diameter = float(info["spot_diameter_px"])
    box = np.concatenate([centres.min(axis=0) - diameter, centres.max(axis=0) + diameter])
    pixels, extent = _image_crop(sdata.images[info["image_key"]], box, max_image_px)

    colormap = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
    n_rows, n_cols = len(keys), len(cell_types)
    aspect = (box[3] - box[1]) / (box[2] - box[0])
    figsize = figsize or (3.0 * n_cols + 0.6, 3.0 * aspect * n_rows + 1.0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=figsize, layout="constrained", squeeze=False)
    for col, name in enumerate(cell_types):
        values = np.concatenate([frame[name].to_numpy(dtype=np.float64) for frame in frames])
        values = values[np.isfinite(values)]  # NaN (spots without a prediction) are drawn grey
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        norm = Normalize(vmin=min(0.0, low), vmax=high)
        for row, frame in enumerate(frames):
            ax = axes[row, col]
            ax.imshow(pixels, extent=extent, interpolation="bilinear")
            spots = EllipseCollection(
                diameter,
                diameter,
                0.0,
                units="xy",
                offsets=centres,
                offset_transform=ax.transData,
                cmap=colormap,
                norm=norm,
            )
            spots.set_array(frame[name].to_numpy())
            ax.add_collection(spots)
            ax.set_xlim(box[0], box[2])
            ax.set_ylim(box[3], box[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if col == 0:
                ax.set_ylabel(titles[row])
        fig.colorbar(spots, ax=list(axes[:, col]), location="bottom", shrink=0.8, aspect=25)
    save_figure(fig, save)
    return fig
