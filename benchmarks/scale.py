"""Scale-out: slides per minute of ``hd.tl.embed_many`` with 1 and 2 local dask workers.

Synthetic slides are written to zarr and read back lazily, as a cohort on disk would be, so
that each task ships only its slide's graph. Each worker count gets a fresh ``LocalCluster``
(one thread per worker, processes), warmed up by importing histodecon on every worker before
the clock starts, and fresh per-slide stores; each figure is the median of 3 runs. The weights-free ``handcrafted`` encoder is used;
the in-process run without a client is measured too, and 1 worker twice more with glibc's
malloc settings pinned (histodecon leaves an explicit ``MALLOC_MMAP_THRESHOLD_`` alone): as
dask's nanny leaves them (mmap threshold 128 KiB, trim threshold 64 KiB), and with only the
mmap threshold raised to 32 MiB (histodecon before it raised the trim threshold too; see
docs/cluster.md). On a machine shared with other jobs the scaling ratio is bounded by the
free cores, which the JSON records with the load average before and after.

    .venv/bin/python benchmarks/scale.py            # 8 slides of 300 spots
    .venv/bin/python benchmarks/scale.py --quick    # 4 slides of 100 spots
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask
import spatialdata as sd
import torch
from distributed import Client, LocalCluster

import histodecon as hd

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results

BATCH = 32
REPEATS = 3


def write_slides(folder: Path, n_slides: int, n_spots: int) -> list[Path]:
    paths = []
    for i in range(n_slides):
        path = folder / f"slide{i}.zarr"
        hd.datasets.synthetic(n_spots=n_spots, seed=i, sample=f"s{i}", counts=False).write(path)
        paths.append(path)
    return paths


def slides_per_minute(paths: list[Path], stores: Path, client: Client | None) -> float:
    """The median over ``REPEATS`` runs, each into fresh stores (a few seconds each: single runs are noisy)."""
    rates = []
    for repeat in range(REPEATS):
        slides = [sd.read_zarr(path) for path in paths]
        start = time.perf_counter()
        hd.tl.embed_many(slides, ["handcrafted"], stores=stores / str(repeat), client=client, batch_size=BATCH)
        rates.append(len(slides) / (time.perf_counter() - start) * 60)
    return statistics.median(rates)


def warm_up() -> None:
    """Import histodecon and build the encoder on a worker, outside the clock."""
    hd.encoders.load("handcrafted")


def on_cluster(paths: list[Path], stores: Path, n_workers: int, environ: dict | None = None) -> float:
    """Slides per minute on a fresh ``LocalCluster``; ``environ`` is added to the workers' environment."""
    settings = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in (environ or {}).items()}
    with (
        dask.config.set(settings),
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
        load_before = os.getloadavg()[0]
        local = slides_per_minute(paths, tmp / "stores_local", None)
        one = on_cluster(paths, tmp / "stores_1", 1)
        two = on_cluster(paths, tmp / "stores_2", 2)
        # Last, because the nannies of a LocalCluster also leave the variables in this process's environment.
        one_dask = on_cluster(paths, tmp / "stores_1_dask", 1, {"MALLOC_MMAP_THRESHOLD_": 128 * 2**10})
        one_mmap = on_cluster(paths, tmp / "stores_1_mmap", 1, {"MALLOC_MMAP_THRESHOLD_": 32 * 2**20})

    write_results(
        "scale",
        {
            "n_slides": n_slides,
            "n_spots_per_slide": n_spots,
            "encoder": "handcrafted",
            "batch_size": BATCH,
            "repeats_median_of": REPEATS,
            "slides_per_minute_in_process": round(local, 2),
            "slides_per_minute_1_worker": round(one, 2),
            "slides_per_minute_2_workers": round(two, 2),
            "slides_per_minute_1_worker_dask_malloc_defaults": round(one_dask, 2),
            "slides_per_minute_1_worker_mmap_threshold_only": round(one_mmap, 2),
            "one_worker_vs_in_process": round(one / local, 3),
            "scaling_2_vs_1_workers": round(two / one, 3),
            "load_average_1min_before": load_before,
            "load_average_1min_at_end": os.getloadavg()[0],
        },
    )


if __name__ == "__main__":
    main()
