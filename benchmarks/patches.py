"""Patch reading from large tiled TIFFs: patches/s per field and peak memory as the slide grows.

A JPEG-compressed tiled TIFF is written tile by tile, so generating it needs little memory, in two
layouts: ``flat`` (full resolution only, so its coarser levels are computed from it, the case of a
JPEG or a single-level scan) and ``pyramid`` (levels 1, 1/4, 1/16, like a scanner's SVS). Each is
then measured in its own process, so that the peak RSS is that slide's: ``hd.io.read_slide``
(tissue mask, pseudo-spots of 55 um) and ``hd.pp.spot_patches`` reading 1000 spots through the
middle of the slide, in table order (as embedding reads them), in batches of 64, at three fields:
224 px native (the paper's), the weights-free encoder's default (112 px across 2.24 spot
diameters) and 112 um at 1 um/px; the fields are interleaved, best of two, each run with a cold
cache. ``--compare-with SRC`` measures each file also with an older source tree (``PYTHONPATH``),
interleaved with this one. The machine may be shared: interleaving and best-of reduce that noise.

    .venv/bin/python benchmarks/patches.py            # 20k and 28k px sides (16k and 32k pseudo-spots)
    .venv/bin/python benchmarks/patches.py --quick    # 8k and 16k px sides
    git archive HEAD~1 src | tar -x -C /tmp/before && .venv/bin/python benchmarks/patches.py --compare-with /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512
MPP = 0.5
N_PATCHES = 1000
SPOT_UM = 55.0
#: Fields read: (patch px, um/px or None for native pixels).
FIELDS = {
    "native_224px": (224, None),
    "handcrafted_default": (112, 2.24 * SPOT_UM / 112),
    "112um_at_1um_per_px": (112, 1.0),
}
BATCH = 64


def _tiles(side: int, step: int, texture: np.ndarray):
    """Tiles of level ``step`` (1, 4, 16) of the slide: an elliptic tissue section on white glass."""
    size = side // step
    for y0 in range(0, size, TILE):
        for x0 in range(0, size, TILE):
            y, x = np.mgrid[y0 : y0 + TILE, x0 : x0 + TILE] * step / side - 0.5
            inside = (x / 0.42) ** 2 + (y / 0.36) ** 2 <= 1
            tile = np.full((TILE, TILE, 3), 243, np.uint8)
            tile[inside] = texture[inside]
            yield tile


def generate(path: Path, side: int, layout: str) -> None:
    import tifffile

    texture = (np.array([200, 125, 180]) + np.random.default_rng(0).integers(-40, 40, (TILE, TILE, 3))).astype(np.uint8)
    options = {"tile": (TILE, TILE), "dtype": np.uint8, "photometric": "rgb", "compression": "jpeg"}
    steps = (4, 16) if layout == "pyramid" else ()
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(_tiles(side, 1, texture), shape=(side, side, 3), subifds=len(steps), **options)
        for step in steps:
            tif.write(_tiles(side, step, texture), shape=(side // step, side // step, 3), subfiletype=1, **options)


def _read(patches, spots: np.ndarray) -> float:
    """Seconds to read the patches of ``spots`` in batches of :data:`BATCH`."""
    start = time.perf_counter()
    for first in range(0, len(spots), BATCH):
        batch = patches[spots[first : first + BATCH]]
    assert batch.shape[1] == patches.size
    return time.perf_counter() - start


def measure(path: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import peak_rss_mb

    import histodecon as hd

    hd.settings.verbosity = 1
    baseline = peak_rss_mb()
    start = time.perf_counter()
    sdata = hd.io.read_slide(path, mpp=MPP, spot_diameter_um=SPOT_UM)
    read_s = time.perf_counter() - start
    after_read = peak_rss_mb()
    n_spots = sdata.tables["table"].n_obs
    first_spot = max(0, n_spots // 2 - N_PATCHES // 2)
    spots = np.arange(first_spot, min(first_spot + N_PATCHES, n_spots))
    seconds = {name: [] for name in FIELDS}
    for _ in range(2):
        for name, (size, mpp) in FIELDS.items():
            seconds[name].append(_read(hd.pp.spot_patches(sdata, size=size, mpp=mpp), spots))
    fields = {
        name: {"patch_px": size, "um_per_px": mpp or MPP, "patches_per_s": round(len(spots) / min(seconds[name]), 1)}
        for name, (size, mpp) in FIELDS.items()
    }
    default, at_1um = fields["handcrafted_default"], fields["112um_at_1um_per_px"]
    return {
        "source": str(Path(hd.__file__).parent),
        "pseudo_spots": n_spots,
        "patches_read": len(spots),
        "read_slide_s": round(read_s, 2),
        **fields,
        "ratio_default_to_112um": round(default["patches_per_s"] / at_1um["patches_per_s"], 3),
        "rss_after_import_mb": round(baseline, 1),
        "peak_rss_after_read_slide_mb": round(after_read, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "patch_reading_rss_increase_mb": round(peak_rss_mb() - after_read, 1),
    }


def _measure_in_process(path: Path, source: str | None) -> dict:
    """:func:`measure` in its own process (a child's peak RSS on Linux includes its parent's at fork time)."""
    env = dict(os.environ) | ({"PYTHONPATH": source} if source else {})
    run = subprocess.run(
        [sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8k and 16k px sides instead of 20k and 28k")
    parser.add_argument("--compare-with", help="an older histodecon source tree, measured on the same files")
    parser.add_argument(
        "--sides", type=int, nargs="+", help="slide sides in px (default 20480 28672; quick 8192 16384)"
    )
    parser.add_argument("--layouts", nargs="+", choices=("flat", "pyramid"), default=("flat", "pyramid"))
    parser.add_argument("--generate", nargs=3, help=argparse.SUPPRESS)  # internal: write one file (path, side, layout)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: measure one file
    args = parser.parse_args()
    if args.generate:
        generate(Path(args.generate[0]), int(args.generate[1]), args.generate[2])
        return
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import write_results

    sides = args.sides or ((8192, 16384) if args.quick else (20480, 28672))
    figures = {"mpp": MPP, "spot_um": SPOT_UM, "batch": BATCH, "tiff": "tiled 512 px, JPEG"}
    with tempfile.TemporaryDirectory() as folder:
        for side in sides:
            for layout in args.layouts:
                path = Path(folder) / f"slide_{side}_{layout}.tif"
                start = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--generate", str(path), str(side), layout], check=True)
                record = {
                    "file_mb": round(path.stat().st_size / 2**20, 1),
                    "generate_s": round(time.perf_counter() - start, 1),
                }
                if args.compare_with:
                    record["before"] = _measure_in_process(path, args.compare_with)
                record["after" if args.compare_with else "measured"] = _measure_in_process(path, None)
                figures[f"{side}px {layout}"] = record
                path.unlink()
                write_results("patches_quick" if args.quick else "patches", figures)  # each slide as it finishes


if __name__ == "__main__":
    main()
