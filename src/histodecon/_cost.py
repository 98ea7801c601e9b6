"""What a fit or an embedding cost: wall time, peak host memory and, on CUDA, peak GPU memory.

The paper argues by efficiency (minutes and hundreds of MB where others need hours and tens of
GB), so :func:`histodecon.tl.fit`, :func:`histodecon.tl.cross_validate` and
:func:`histodecon.tl.embed` record their cost with their results, as plain numbers.

Peak host memory is the peak resident set size (RSS) of the whole process while the measured
code ran, data included. On Linux the kernel's high-water mark ``VmHWM`` is reset when the
outermost measurement starts (``/proc/self/clear_refs``) and read when a measurement ends: an
exact peak for one measurement at a time, and for measurements that overlap (nested, or in
several threads) the peak since the earliest of them started, which can only overstate. Where
the mark cannot be reset (other systems, a locked-down ``/proc``), the figure is the process's
lifetime peak (``VmHWM`` unreset, or ``resource.getrusage``), an upper bound. Peak GPU memory is
:func:`torch.cuda.max_memory_allocated` on the measured device, reset likewise when the
outermost measurement starts: tensors torch allocated, not the memory its caching allocator
reserved.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MB = 2**20
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_active = 0
_active_lock = threading.Lock()


@dataclass
class Cost:
    """Filled in when the :func:`measure_cost` block ends.

    Attributes
    ----------
    seconds
        Wall time of the block.
    peak_host_mb
        Peak resident memory of the process during the block, in MiB (see the module notes).
    peak_gpu_mb
        Peak memory torch allocated on the CUDA device during the block, in MiB; ``None`` off CUDA.
    """

    seconds: float = 0.0
    peak_host_mb: float = 0.0
    peak_gpu_mb: float | None = None
    _start: float = field(default=0.0, repr=False)

    def record(self, **extra: int | float) -> dict[str, int | float]:
        """The figures as a dict of plain numbers (``peak_gpu_mb`` only on CUDA), with ``extra`` ones first."""
        figures = {**extra, "seconds": round(self.seconds, 4), "peak_host_mb": round(self.peak_host_mb, 1)}
        if self.peak_gpu_mb is not None:
            figures["peak_gpu_mb"] = round(self.peak_gpu_mb, 1)
        return figures


@contextlib.contextmanager
def measure_cost(device: torch.device | str | None = None) -> Iterator[Cost]:
    """Measure the wall time and peak memory of a block of code.

    Parameters
    ----------
    device
        The torch device the block computes on; on a CUDA device its peak allocation is measured too.

    Examples
    --------
    >>> from histodecon._cost import measure_cost
    >>> with measure_cost("cpu") as cost:
    ...     data = bytearray(50 * 2**20)
    >>> cost.peak_host_mb > 50
    True
    """
    global _active
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    with _active_lock:
        if _active == 0:
            _reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
        _active += 1
    cost = Cost(_start=time.perf_counter())
    try:
        yield cost
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            cost.peak_gpu_mb = torch.cuda.max_memory_allocated(device) / MB
        cost.seconds = time.perf_counter() - cost._start
        cost.peak_host_mb = peak_rss_mb()
        with _active_lock:
            _active -= 1


def peak_rss_mb() -> float:
    """The process's peak resident memory in MiB: since the last reset on Linux, else over its lifetime."""
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak / 1024


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process to its current RSS, where the kernel allows it."""
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def training_cost(cost: Cost, model: Any) -> dict[str, int | float]:
    """The cost record of a fitted :class:`~histodecon.tl.AbundanceRegressor`: ``fit_seconds``, ``epochs``, memory.

    ``epochs`` counts every epoch trained: the early-stopped run and the refit on all spots.
    """
    figures = cost.record(epochs=len(model.history) + int(model.best_epoch or 0))
    figures["fit_seconds"] = figures.pop("seconds")
    return {key: figures[key] for key in ("fit_seconds", "epochs", "peak_host_mb", "peak_gpu_mb") if key in figures}
