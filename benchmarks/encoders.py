"""CPU throughput of each registered encoder: patches/s of a random-weight forward at its input size.

For every foundation model of the registry (and the weights-free ``handcrafted`` encoder), the
exact architecture is built with random weights and its ``PatchEncoder`` (preprocessing
included) embeds one random uint8 patch at the encoder's input size under
``torch.inference_mode``, float32, timed after one warm-up forward. H-optimus-1 shares H-optimus-0's architecture, so only H-optimus-0 is timed. Models are
built one at a time and freed; the JSON is rewritten after each, so a stopped run keeps what it
measured. The 1.1B-parameter models need about 5 GB of free memory. Figures are indicative: the
machine may be shared, and a GPU is hundreds of times faster.

    .venv/bin/python benchmarks/encoders.py            # one patch, timed after a warm-up, every encoder
    .venv/bin/python benchmarks/encoders.py --quick    # the two smallest models only
    .venv/bin/python benchmarks/encoders.py --models uni conch   # chosen encoders
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import torch
from _common import peak_rss_mb, write_results

import histodecon as hd

ENCODERS = [
    "handcrafted",
    "conch",
    "phikon2",
    "uni",
    "conch15",
    "virchow2",
    "uni2",
    "hoptimus0",
    "gigapath",
    "genbio_pathfm",
]
QUICK = ["handcrafted", "conch"]


def throughput(name: str) -> dict:
    """Patches/s of ``name``'s random-weight forward on one patch, with its size figures."""
    entry = hd.encoders.get(name)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = entry.build().eval()
    build_s = time.perf_counter() - start
    encoder = hd.encoders.PatchEncoder(entry, model, {}).eval()
    patch = torch.randint(0, 256, (1, entry.input_size, entry.input_size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        encoder(patch)  # warm-up
        start = time.perf_counter()
        out = encoder(patch)
        seconds = time.perf_counter() - start
    assert out.shape == (1, entry.dim)
    figures = {
        "dim": entry.dim,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "input_size": entry.input_size,
        "batch": 1,
        "patches_per_s": round(1 / seconds, 3),
        "seconds_per_patch": round(seconds, 3),
        "build_s": round(build_s, 1),
    }
    print(name, figures, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", choices=ENCODERS, help="Encoders to time (default: all).")
    args = parser.parse_args()
    names = QUICK if args.quick else args.models or ENCODERS
    figures: dict = {"torch_threads": torch.get_num_threads(), "dtype": "float32", "encoders": {}}
    for name in names:
        figures["encoders"][name] = throughput(name) | {"load_average_1min": os.getloadavg()[0]}
        gc.collect()
        figures["peak_rss_mb"] = round(peak_rss_mb())
        write_results("encoders_quick" if args.quick else "encoders", figures)


if __name__ == "__main__":
    main()
