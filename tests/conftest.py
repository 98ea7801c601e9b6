"""Shared fixtures: the location of ../shared/data and small synthetic slides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: Public data lives beside the project and is never committed; tests skip without it.
DATA_DIR = Path(os.environ.get("HISTODECON_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"public data not found at {path} (set HISTODECON_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    """The her2st folder in its public layout (ST-cnts, ST-spotfiles, ST-imgs, ST-deconv)."""
    return _require(DATA_DIR / "her2st")


@pytest.fixture(scope="session")
def reference_path() -> Path:
    """The Wu et al. 2021 CID4465 single-cell reference (.h5ad)."""
    return _require(DATA_DIR / "reference" / "wu2021_CID4465.h5ad")
