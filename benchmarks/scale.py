"""Scale-out: slides per minute of ``hd.tl.embed_many`` with 1 and 2 local dask workers.

Synthetic slides are written to zarr and read back lazily, as a cohort on disk would be, so
that each task ships only its slide's graph. Each worker count gets a fresh ``LocalCluster``
(one thread per worker, processes), warmed up by importing histodecon on every worker before
the clock starts, and fresh per-slide stores. The weights-free ``handcrafted`` encoder is used;
the in-process run without a client is measured too. On a machine shared with other jobs the
scaling ratio is bounded by the free cores, which the JSON records with the load average.

    .venv/bin/python benchmarks/scale.py            # 8 slides of 300 spots
    .venv/bin/python benchmarks/scale.py --quick    # 4 slides of 100 spots
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import spatialdata as sd
import torch
from distributed import Client, LocalCluster

import histodecon as hd

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results

BATCH = 32


def write_slides(folder: Path, n_slides: int, n_spots: int) -> list[Path]:
    paths = []
    for i in range(n_slides):
        path = folder / f"slide{i}.zarr"
        hd.datasets.synthetic(n_spots=n_spots, seed=i, sample=f"s{i}", counts=False).write(path)
        paths.append(path)
    return paths


def slides_per_minute(paths: list[Path], stores: Path, client: Client | None) -> float:
    slides = [sd.read_zarr(path) for path in paths]
    start = time.perf_counter()
    hd.tl.embed_many(slides, ["handcrafted"], stores=stores, client=client, batch_size=BATCH)
    return len(slides) / (time.perf_counter() - start) * 60


def warm_up() -> None:
    """Import histodecon and build the encoder on a worker, outside the clock."""
    hd.encoders.load("handcrafted")


def on_cluster(paths: list[Path], stores: Path, n_workers: int) -> float:
    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(warm_up)
        return slides_per_minute(paths, stores, client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 slides of 100 spots")
    args = parser.parse_args()
    n_slides, n_spots = (4, 100) if args.quick else (8, 300)
    hd.settings.verbosity = 1
    hd.settings.progress = False
    torch.set_num_threads(1)  # as in each dask worker

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_slides(tmp, n_slides, n_spots)
        local = slides_per_minute(paths, tmp / "stores_local", None)
        one = on_cluster(paths, tmp / "stores_1", 1)
        two = on_cluster(paths, tmp / "stores_2", 2)

    write_results(
        "scale",
        {
            "n_slides": n_slides,
            "n_spots_per_slide": n_spots,
            "encoder": "handcrafted",
            "batch_size": BATCH,
            "slides_per_minute_in_process": round(local, 2),
            "slides_per_minute_1_worker": round(one, 2),
            "slides_per_minute_2_workers": round(two, 2),
            "scaling_2_vs_1_workers": round(two / one, 3),
            "load_average_1min_at_end": os.getloadavg()[0],
        },
    )


if __name__ == "__main__":
    main()
