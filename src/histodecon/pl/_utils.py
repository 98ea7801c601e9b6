"""Shared by the plots: reading the image at a small scale, and scanpy's ``ax`` / ``show`` / ``return_fig`` / ``save``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from xarray import DataArray, DataTree

from histodecon._settings import logger
from histodecon.pp._patches import image_levels

#: Shared parameter docs of the scanpy-style arguments, for the plots' docstrings.
SHOW_SAVE_DOCS = """show
        Show the figure with :func:`matplotlib.pyplot.show` and return ``None``, as scanpy does;
        ``False``: return the drawn Axes instead. Default: shown unless ``ax`` is given.
    return_fig
        Return the :class:`~matplotlib.figure.Figure` (not shown unless ``show=True``).
    save
        Write the figure to this path (format from the suffix); ``True`` writes
        ``{name}.{format}`` to scanpy's ``sc.settings.figdir`` in ``sc.settings.file_format_figs``."""


def image_crop(element: DataArray | DataTree, box: np.ndarray, max_px: int) -> tuple[np.ndarray, list[float]]:
    """The RGB crop of ``box`` (full-resolution ``[x0, y0, x1, y1]``) at most ``max_px`` on a side.

    Reads the finest pyramid level that is small enough (striding the coarsest if none is), so
    only the pixels drawn are loaded. Returns ``(y, x, c)`` pixels and their imshow extent
    ``[left, right, bottom, top]`` in full-resolution pixels.
    """
    levels = image_levels(element)
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


def panel_axes(ax: Axes | Sequence[Axes] | np.ndarray, n_panels: int, what: str) -> tuple[Figure, list[Axes]]:
    """The figure and the flat list of the ``ax=`` a caller gave, one Axes per panel."""
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n_panels or not all(isinstance(a, Axes) for a in axes):
        raise ValueError(f"`ax` must be {n_panels} matplotlib Axes, one per {what}; got {len(axes)} objects.")
    figures = {id(a.figure) for a in axes}
    if len(figures) != 1:
        raise ValueError("All the Axes given as `ax` must belong to one figure.")
    return axes[0].figure, axes


def save_figure(fig: Figure, save: str | Path | bool | None, name: str, dpi: int = 150) -> None:
    """Write ``fig`` to ``save`` (format from the suffix), or to scanpy's figure folder when ``save=True``."""
    if save is None or save is False:
        return
    if save is True:
        import scanpy as sc

        path = Path(sc.settings.figdir) / f"{name}.{sc.settings.file_format_figs}"
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(save)
        if not path.parent.exists():
            raise FileNotFoundError(f"Cannot save the figure to {path}: folder {path.parent} does not exist.")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    logger.info(f"Saved figure to {path}")


def finish(
    fig: Figure,
    axes: list[Axes],
    *,
    name: str,
    ax: object,
    show: bool | None,
    return_fig: bool,
    save: str | Path | bool | None,
) -> Figure | list[Axes] | None:
    """Save, show and pick what a plot returns, the scanpy way (see :data:`SHOW_SAVE_DOCS`).

    Returning ``None`` when the figure is shown is what keeps a notebook from drawing it twice:
    once by ``show``, once more as the cell's value.
    """
    save_figure(fig, save, name)
    if return_fig:
        if show:
            plt.show()
        return fig
    if show is None:
        show = ax is None  # drawing into the caller's Axes: the caller shows the figure
    if show:
        plt.show()
        return None
    return axes


def doc_show_save(func):
    """Put :data:`SHOW_SAVE_DOCS` in place of ``{show_save}`` in a plot's docstring."""
    func.__doc__ = func.__doc__.replace("{show_save}", SHOW_SAVE_DOCS)
    return func
