"""Patch reading from large tiled TIFFs: patches/s and peak memory as the slide grows.

A pyramidal, JPEG-compressed tiled TIFF (levels 1, 1/4, 1/16, like a scanner's SVS) is written
tile by tile, so generating it needs little memory. Each size is then measured in its own
process, so that the peak RSS is that size's: ``hd.io.read_slide`` (tissue mask from the 1/16
level, pseudo-spot grid) and ``hd.pp.spot_patches`` reading 224 px patches at spots spread
through the middle of the slide, in table order (as embedding reads them), in batches of 64.

    .venv/bin/python benchmarks/patches.py            # 20k and 40k px sides
    .venv/bin/python benchmarks/patches.py --quick    # 8k and 16k px sides
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512
MPP = 0.5
N_PATCHES = 2000
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


def generate(path: Path, side: int) -> None:
    import tifffile

    texture = (np.array([200, 125, 180]) + np.random.default_rng(0).integers(-40, 40, (TILE, TILE, 3))).astype(np.uint8)
    options = {"tile": (TILE, TILE), "dtype": np.uint8, "photometric": "rgb", "compression": "jpeg"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(_tiles(side, 1, texture), shape=(side, side, 3), subifds=2, **options)
        for step in (4, 16):
            tif.write(_tiles(side, step, texture), shape=(side // step, side // step, 3), subfiletype=1, **options)


def measure(path: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import peak_rss_mb

    import histodecon as hd

    hd.settings.verbosity = 1
    baseline = peak_rss_mb()
    start = time.perf_counter()
    sdata = hd.io.read_slide(path, mpp=MPP)
    read_s = time.perf_counter() - start
    after_read = peak_rss_mb()
    patches = hd.pp.spot_patches(sdata, size=224)
    first_spot = max(0, len(patches) // 2 - N_PATCHES // 2)
    spots = np.arange(first_spot, min(first_spot + N_PATCHES, len(patches)))
    start = time.perf_counter()
    for first in range(0, len(spots), BATCH):
        batch = patches[spots[first : first + BATCH]]
    patches_s = len(spots) / (time.perf_counter() - start)
    assert batch.shape[1:] == (224, 224, 3)
    return {
        "pseudo_spots": len(patches),
        "patches_read": len(spots),
        "read_slide_s": round(read_s, 2),
        "patches_per_s": round(patches_s, 1),
        "rss_after_import_mb": round(baseline, 1),
        "peak_rss_after_read_slide_mb": round(after_read, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "patch_reading_rss_increase_mb": round(peak_rss_mb() - after_read, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8k and 16k px sides instead of 20k and 40k")
    parser.add_argument("--generate", nargs=2, help=argparse.SUPPRESS)  # internal: write one file (path, side)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: measure one file
    args = parser.parse_args()
    if args.generate:
        generate(Path(args.generate[0]), int(args.generate[1]))
        return
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import write_results

    sides = (8192, 16384) if args.quick else (20480, 40960)
    figures = {"mpp": MPP, "patch_px": 224, "batch": BATCH, "tiff": "tiled 512 px, JPEG, levels 1, 1/4, 1/16"}
    with tempfile.TemporaryDirectory() as folder:
        for side in sides:
            path = Path(folder) / f"slide_{side}.tif"
            start = time.perf_counter()
            # in its own process too: a child's peak RSS on Linux includes its parent's at fork time
            subprocess.run([sys.executable, __file__, "--generate", str(path), str(side)], check=True)
            generate_s = time.perf_counter() - start
            run = subprocess.run(
                [sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True, check=True
            )
            figures[f"{side}px"] = {
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "generate_s": round(generate_s, 1),
                **json.loads(run.stdout.strip().splitlines()[-1]),
            }
            path.unlink()
    write_results("patches_quick" if args.quick else "patches", figures)


if __name__ == "__main__":
    main()
