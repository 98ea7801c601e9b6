"""Scale-out: slides per minute of ``hd.tl.embed_many`` with 1 and 2 local dask workers.

Synthetic slides are written to zarr and read back lazily, as a cohort on disk would be, so
that each task ships only its slide's graph. Each worker count gets a fresh ``LocalCluster``
(one thread per worker, processes), warmed up by importing histodecon on every worker before
the clock starts, and fresh per-slide stores; each figure is the median of 3 runs. The
weights-free ``handcrafted`` encoder is used; the in-process run without a client is measured
too.

Two settings. **Shared cores**: the workers' threads go wherever the operating system puts
them. A worker's patch-reading thread overlaps its model thread, so one worker alone already
uses more than one core, and on a machine with as many cores as workers the second worker
cannot add a whole worker's speed. **One core per worker** (Linux): every worker process is
bound to a core of its own (``os.sched_setaffinity``), as a cluster's job scheduler grants
cores; the in-process run is bound to one core as well, while the client and the scheduler
stay unbound. This measures what scale-out itself costs: shipping slides, scheduling and
gathering results. The CPU seconds each worker process spends per slide are recorded in both.

1 worker is measured twice more with glibc's malloc settings pinned (histodecon leaves an
explicit ``MALLOC_MMAP_THRESHOLD_`` alone): as dask's nanny leaves them (mmap threshold
128 KiB, trim threshold 64 KiB), and with only the mmap threshold raised to 32 MiB
(histodecon before it raised the trim threshold too; see docs/cluster.md). On a machine shared
with other jobs the ratios are bounded by the free cores, which the JSON records with the load
average before and after.

    .venv/bin/python benchmarks/scale.py            # 12 slides of 300 spots
    .venv/bin/python benchmarks/scale.py --quick    # 4 slides of 100 spots
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import psutil
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


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(paths: list[Path], stores: Path, client: Client | None) -> dict:
    """Slides per minute (median over ``REPEATS`` runs, each into fresh stores) and CPU seconds per slide.

    Reading the slides lazily from zarr happens before each clock starts. The CPU seconds are
    those of this process without a client, else of each worker process, while the clock runs.
    """
    processes = [psutil.Process()] if client is None else _worker_processes(client)
    rates, cpu = [], [0.0] * len(processes)
    for repeat in range(REPEATS):
        slides = [sd.read_zarr(path) for path in paths]
        before = [cpu_seconds(process) for process in processes]
        start = time.perf_counter()
        hd.tl.embed_many(slides, ["handcrafted"], stores=stores / str(repeat), client=client, batch_size=BATCH)
        rates.append(len(slides) / (time.perf_counter() - start) * 60)
        cpu = [total + cpu_seconds(process) - b for total, process, b in zip(cpu, processes, before, strict=True)]
    n = REPEATS * len(paths)
    return {
        "slides_per_minute": round(statistics.median(rates), 2),
        "cpu_s_per_slide": [round(seconds / n, 3) for seconds in cpu],
    }


def _worker_processes(client: Client) -> list[psutil.Process]:
    pids = client.run(os.getpid)
    return [psutil.Process(pids[address]) for address in sorted(pids)]


def warm_up() -> None:
    """Import histodecon and build the encoder on a worker, outside the clock."""
    hd.encoders.load("handcrafted")


def bind_to_core(dask_worker: Any, cores: dict[str, int]) -> int:
    """Bind this worker process, all its threads included, to its core in ``cores``."""
    core = cores[dask_worker.address]
    set_affinity(psutil.Process(), {core})
    return core


def set_affinity(process: psutil.Process, cores: set[int]) -> None:
    """Let every thread of ``process`` run only on ``cores``; threads started later inherit it."""
    for thread in process.threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(thread.id, cores)


def on_cluster(
    paths: list[Path], stores: Path, n_workers: int, *, one_core_each: bool = False, environ: dict | None = None
) -> dict:
    """Figures on a fresh ``LocalCluster``; ``environ`` is added to the workers' environment."""
    settings = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in (environ or {}).items()}
    with (
        dask.config.set(settings),
        LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(warm_up)
        if one_core_each:
            addresses = sorted(client.scheduler_info()["workers"])
            client.run(bind_to_core, cores=dict(zip(addresses, sorted(os.sched_getaffinity(0)), strict=False)))
        return measure(paths, stores, client)


@contextlib.contextmanager
def bound_to_one_core() -> Iterator[None]:
    """Run this process (all its threads) on one core, then give it back every core it had."""
    process, allowed = psutil.Process(), os.sched_getaffinity(0)
    set_affinity(process, {min(allowed)})
    try:
        yield
    finally:
        set_affinity(process, allowed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 slides of 100 spots")
    args = parser.parse_args()
    n_slides, n_spots = (4, 100) if args.quick else (12, 300)
    one_core_each = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    hd.settings.verbosity = 1
    hd.settings.progress = False
    torch.set_num_threads(1)  # as in each dask worker

    figures: dict[str, Any] = {
        "n_slides": n_slides,
        "n_spots_per_slide": n_spots,
        "encoder": "handcrafted",
        "batch_size": BATCH,
        "repeats_median_of": REPEATS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_slides(tmp, n_slides, n_spots)
        figures["load_average_1min_before"] = os.getloadavg()[0]
        shared = {
            "in_process": measure(paths, tmp / "shared_local", None),
            "1_worker": on_cluster(paths, tmp / "shared_1", 1),
            "2_workers": on_cluster(paths, tmp / "shared_2", 2),
        }
        figures["shared_cores"] = shared | _ratios(shared)
        if one_core_each:
            with bound_to_one_core():
                local = measure(paths, tmp / "bound_local", None)
            bound = {
                "in_process": local,
                "1_worker": on_cluster(paths, tmp / "bound_1", 1, one_core_each=True),
                "2_workers": on_cluster(paths, tmp / "bound_2", 2, one_core_each=True),
            }
            figures["one_core_per_worker"] = bound | _ratios(bound)
        # Last, because the nannies of a LocalCluster also leave the variables in this process's environment.
        figures["1_worker_dask_malloc_defaults"] = on_cluster(
            paths, tmp / "dask", 1, environ={"MALLOC_MMAP_THRESHOLD_": 128 * 2**10}
        )
        figures["1_worker_mmap_threshold_only"] = on_cluster(
            paths, tmp / "mmap", 1, environ={"MALLOC_MMAP_THRESHOLD_": 32 * 2**20}
        )
        figures["load_average_1min_at_end"] = os.getloadavg()[0]
    write_results("scale_quick" if args.quick else "scale", figures)


def _ratios(runs: dict) -> dict:
    one, two = runs["1_worker"]["slides_per_minute"], runs["2_workers"]["slides_per_minute"]
    return {
        "one_worker_vs_in_process": round(one / runs["in_process"]["slides_per_minute"], 3),
        "scaling_2_vs_1_workers": round(two / one, 3),
    }


if __name__ == "__main__":
    main()
