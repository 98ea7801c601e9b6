"""Should the default path normalise stains? Leave-one-section-out on her2st with and without squidpy's normalisation.

Every fold holds one of B4, C2, C3 out. Without normalisation, the three sections are embedded
once with the weights-free encoder (`hd.tl.embed(models=["handcrafted"])`), `hd.tl.fit` (its
defaults) is trained on the two others and applied to the held-out one. With a method
(`macenko`, `reinhard`), each fold fits one reference on its two training sections only
(`hd.pp.stain_reference`), embeds all three sections normalised to it
(`hd.tl.embed(stain_reference=...)`), trains and predicts the same way. Scores: CC and L1
(`hd.metrics`) on stereoscope's `major` proportions (8 types).

Throughput: the same section (C2) embedded as scanned and normalised with each method, in
alternating rounds in one process; the cost of normalising is the CPU time of the whole
`hd.tl.embed` call (patch reading, the per-slide source fit, normalisation and the encoder), best
of the rounds, relative to the un-normalised call's. Because two whole calls differ by their
noise too, the normalisation alone is also timed: the CPU seconds of normalising every patch of
the section once, as a share of the un-normalised call. And the reference fit's seconds.

The data is read from `--data-dir`, else HISTODECON_DATA_DIR, else ../shared/data.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from _common import default_data_dir, peak_rss_mb, write_results

import histodecon as hd
from histodecon.tl._embedding._patch_field import patch_mpp

SECTIONS = ("B4", "C2", "C3")
TARGET = "proportions"
METHODS = ("macenko", "reinhard")
THROUGHPUT_SECTION = "C2"


def embed(slides: list, reference=None) -> None:
    """Embed every slide with the weights-free encoder, normalised to ``reference`` (``None``: as scanned)."""
    for sdata in slides:
        hd.tl.embed(sdata, models=["handcrafted"], stain_reference=reference, overwrite=True)


def scores(slides: list, held_out: int, seed: int) -> dict:
    """CC and L1 of the default fit trained on every slide but ``held_out`` and applied to it."""
    train = [s for j, s in enumerate(slides) if j != held_out]
    test = slides[held_out].tables["table"]
    model = hd.tl.fit(train, features="handcrafted", target=TARGET, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # applicability warnings of her2st's low-depth B4 are not this benchmark's
        hd.tl.predict(test, model, key_added="stain_pred", overwrite=True)
    truth = test.obsm[TARGET]
    return {
        "cc": hd.metrics.cc_score(truth, test.obsm["stain_pred"]),
        "l1": hd.metrics.l1_score(truth, test.obsm["stain_pred"]),
    }


def timed_embed(sdata, reference=None) -> float:
    """CPU seconds (all threads of this process) of one `hd.tl.embed` call: reading, normalisation, encoder.

    CPU time, not wall time: on a machine shared with other processes the wall time of the same
    call varies by a factor of two, its CPU time by a few percent.
    """
    start = time.process_time()
    embed([sdata], reference)
    return time.process_time() - start


def normalising_seconds(sdata, reference) -> float:
    """CPU seconds of normalising every patch of the handcrafted field once (the patches read as they are)."""
    field = patch_mpp(hd.encoders.get("handcrafted"), sdata, table_key="table")
    patches = hd.pp.spot_patches(sdata, size=hd.encoders.get("handcrafted").patch_size, mpp=field)
    normalised = hd.pp.spot_patches(sdata, size=patches.size, mpp=field, stain_reference=reference)
    raw = [batch for _, batch in patches.batches(32)]
    (normaliser,) = normalised._normalisers
    start = time.process_time()
    for batch in raw:
        normaliser(batch)
    return time.process_time() - start


def throughput(sdata, rounds: int = 2) -> dict:
    """CPU seconds to embed C2 as scanned and normalised with each method, best of ``rounds`` alternating rounds.

    The best of alternating rounds keeps what other processes on the machine cost out of the
    comparison. Also the seconds of one reference fit per method.
    """
    references, figures = {}, {}
    for method in METHODS:
        start = time.perf_counter()
        references[method] = hd.pp.stain_reference(sdata, method=method)
        figures[f"{method}_reference_fit_s"] = time.perf_counter() - start
    seconds = {arm: [] for arm in ("none", *METHODS)}
    for _ in range(rounds):
        for arm in seconds:
            seconds[arm].append(timed_embed(sdata, references.get(arm)))
    n = sdata.tables["table"].n_obs
    for arm, values in seconds.items():
        figures[f"{arm}_embed_cpu_s"] = values
        figures[f"{arm}_patches_per_cpu_second"] = n / min(values)
    for method in METHODS:
        figures[f"{method}_relative_throughput"] = min(seconds["none"]) / min(seconds[method])
        figures[f"{method}_normalise_cpu_s"] = normalising_seconds(sdata, references[method])
        figures[f"{method}_normalise_share"] = figures[f"{method}_normalise_cpu_s"] / min(seconds["none"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding her2st/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hd.settings.progress = False
    start = time.perf_counter()
    slides = [hd.datasets.her2st(s, data_dir=args.data_dir, proportions="major") for s in SECTIONS]

    speed = throughput(slides[SECTIONS.index(THROUGHPUT_SECTION)])
    print("throughput:", {k: np.round(v, 3).tolist() for k, v in speed.items()}, flush=True)

    rows: list[dict] = []
    write(rows, speed, args.seed, start)  # written after every fold: a run cut short keeps what it measured
    embed(slides)
    for i, section in enumerate(SECTIONS):
        rows.append({"held_out": section, "method": "none"} | scores(slides, i, args.seed))
        print(rows[-1], flush=True)
        write(rows, speed, args.seed, start)
    for method in METHODS:
        for i, section in enumerate(SECTIONS):
            reference = hd.pp.stain_reference([s for j, s in enumerate(slides) if j != i], method=method)
            embed(slides, reference)
            rows.append({"held_out": section, "method": method} | scores(slides, i, args.seed))
            print(rows[-1], flush=True)
            write(rows, speed, args.seed, start)
    print("mean:", means(rows))


def means(rows: list[dict]) -> dict:
    """Mean CC and L1 per method over the folds measured so far."""
    methods = dict.fromkeys(row["method"] for row in rows)
    return {
        method: {m: float(np.mean([r[m] for r in rows if r["method"] == method])) for m in ("cc", "l1")}
        for method in methods
    }


def write(rows: list[dict], speed: dict, seed: int, start: float) -> None:
    """Write the figures so far to ``results/stain.json``; ``complete`` says whether every fold ran."""
    write_results(
        "stain",
        {
            "sections": list(SECTIONS),
            "target": "stereoscope major proportions (8 types)",
            "features": "handcrafted",
            "fit": "hd.tl.fit defaults",
            "reference": "per fold, hd.pp.stain_reference on the two training sections",
            "seed": seed,
            "complete": len(rows) == len(SECTIONS) * (1 + len(METHODS)),
            "per_fold": rows,
            "mean": means(rows),
            "throughput": speed,
            "total_s": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
