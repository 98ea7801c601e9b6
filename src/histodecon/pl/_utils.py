"""Shared by the plots: saving a figure."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from histodecon._settings import logger


def save_figure(fig: Figure, save: str | Path | None, dpi: int = 150) -> None:
    """Write ``fig`` to ``save`` (format from the suffix) when a path is given."""
    if save is None:
        return
    path = Path(save)
    if not path.parent.exists():
        raise FileNotFoundError(f"Cannot save the figure to {path}: folder {path.parent} does not exist.")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    logger.info(f"Saved figure to {path}")
