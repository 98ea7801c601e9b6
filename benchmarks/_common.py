"""Shared by every benchmark: record the machine and versions, write JSON to benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def default_data_dir() -> Path:
    """The folder holding ``her2st/``: ``$HISTODECON_DATA_DIR``, else ``../shared/data`` beside the project."""
    return Path(os.environ.get("HISTODECON_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def plain_numbers(record: dict) -> dict:
    """The plain numbers of a record (e.g. a model's provenance: its epochs and cost figures)."""
    return {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def machine() -> dict:
    """Platform, CPU count, Python and key package versions."""
    packages = {name: version(name) for name in ("histodecon", "numpy", "torch", "scipy", "spatialdata")}
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "packages": packages,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(name: str, figures: dict) -> Path:
    """Print ``figures`` and write them with the machine record to ``results/<name>.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "machine": machine(), "figures": figures}
    path.write_text(json.dumps(record, indent=2, default=float))
    print(json.dumps(figures, indent=2, default=float))
    print(f"wrote {path}")
    return path
