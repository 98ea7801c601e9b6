"""Shared fixtures: the location of ../shared/data and small slides built through one seam each."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from spatialdata import SpatialData

import histodecon as hd
from histodecon._constants import Key

#: Public data lives beside the project and is never committed; tests skip without it.
DATA_DIR = Path(os.environ.get(Key.env.data_dir, Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"public data not found at {path} (set {Key.env.data_dir})")
    return path


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    """The her2st folder in its public layout (ST-cnts, ST-spotfiles, ST-imgs, ST-deconv)."""
    return _require(DATA_DIR / "her2st")


@pytest.fixture(scope="session")
def reference_path() -> Path:
    """The Wu et al. 2021 CID4465 single-cell reference (.h5ad)."""
    return _require(DATA_DIR / "reference" / "wu2021_CID4465.h5ad")


@pytest.fixture(scope="session")
def make_slide() -> Callable[..., SpatialData]:
    """Factory of small synthetic slides: ``make_slide(seed=0, n_spots=60, sample="s0", counts=False)``.

    A thin wrapper of :func:`histodecon.datasets.synthetic`; ``sample`` defaults to ``f"s{seed}"``
    so that slides of different seeds can be combined. Other keywords are passed on.
    """

    def make(
        *, seed: int = 0, n_spots: int = 60, sample: str | None = None, counts: bool = False, **kwargs
    ) -> SpatialData:
        sample = f"s{seed}" if sample is None else sample
        return hd.datasets.synthetic(n_spots=n_spots, seed=seed, sample=sample, counts=counts, **kwargs)

    return make


@pytest.fixture(scope="session")
def slide_from_image() -> Callable[..., SpatialData]:
    """Factory of slides from a given image and spot centres, in the layout of the readers of :mod:`histodecon.io`.

    ``slide_from_image(image, centres, sample="S", mpp=0.5, spot_diameter_px=60, spot_ids=None, **kwargs)``
    with ``image`` ``(3, y, x)`` (numpy or dask) and ``centres`` ``(n, 2)`` pixel ``(x, y)``: for tests
    whose assertions need a known image (coded pixels, a pyramid) or known spot positions.
    """
    from histodecon.io._build import build_sdata

    return build_sdata
