"""Seed stability of `hd.tl.fit`'s default and coverage of `hd.tl.predict(interval=)` on her2st (B4, C2, C3).

Leave-one-section-out: every section is held out in turn, the default `hd.tl.fit` trained on
the other two (stereoscope `major` proportions, 8 types; the weights-free `handcrafted`
encoder) with seeds 0-4, and applied with `hd.tl.predict(..., interval=p)`. Per seed and
held-out section: CC and L1 (`hd.metrics`), the folds' best epochs and the refit's epochs,
and for p in 0.5, 0.8, 0.95 the share of (spot, cell type) truths inside the interval
(empirical coverage) and the mean interval width; coverage is also split by the predicted
proportion (below / above 0.1), to show whether a per-type width fits small and large
predictions alike. Then the fit on all three sections (three slides: each held out in turn by
the early-stopping folds), seeds 0-4: the epochs chosen, what the issue's seed lottery was about.

"Before" figures are those of the code before issue 23 (one early-stopping split drawn by the
seed, random spots with two training slides), measured with the same protocol at commit
7ed0027 and kept in `results/trust_before.json`; the spread across seeds is compared with them.
The data is read from `--data-dir`, else HISTODECON_DATA_DIR, else ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import RESULTS_DIR, default_data_dir, peak_rss_mb, write_results
from her2st_loso import SECTIONS, TARGET, load

import histodecon as hd
from histodecon._constants import Key

SEEDS = (0, 1, 2, 3, 4)
LEVELS = (0.5, 0.8, 0.95)
SMALL = 0.1  # predicted proportion splitting the conditional coverage


def interval_figures(test, model, truth: np.ndarray) -> dict:
    """Coverage and mean width of `predict`'s intervals at every level, overall and by predicted proportion."""
    figures = {}
    for level in LEVELS:
        hd.tl.predict(test, model, key_added="trust", interval=level, overwrite=True)
        pred = test.obsm["trust"].to_numpy()
        lower, upper = (test.obsm[key].to_numpy() for key in Key.obsm.interval_bounds("trust"))
        inside = (lower <= truth) & (truth <= upper)
        small = pred < SMALL
        figures[str(level)] = {
            "coverage": float(inside.mean()),
            "coverage_pred_below_0.1": float(inside[small].mean()),
            "coverage_pred_above_0.1": float(inside[~small].mean()),
            "mean_width": float((upper - lower).mean()),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding her2st/")
    args = parser.parse_args()
    hd.settings.progress = False
    torch.set_num_threads(1)  # as the recorded "before" figures; tiny networks lose on a shared CPU with more

    start = time.perf_counter()
    slides = load(list(SECTIONS), args.data_dir)
    load_s = time.perf_counter() - start
    rows = []
    for seed in SEEDS:
        for i, section in enumerate(SECTIONS):
            train = [s for j, s in enumerate(slides) if j != i]
            test = slides[i].tables["table"]
            truth = test.obsm[TARGET].to_numpy()
            start = time.perf_counter()
            model = hd.tl.fit(train, features="handcrafted", target=TARGET, seed=seed)
            fit_s = time.perf_counter() - start
            coverage = interval_figures(test, model, truth)
            row = {
                "seed": seed,
                "section": section,
                "cc": hd.metrics.cc_score(truth, test.obsm["trust"]),
                "l1": hd.metrics.l1_score(truth, test.obsm["trust"]),
                "best_epoch": model.best_epoch,
                "fold_epochs": model.provenance["early_stopping"]["fold_epochs"],
                "epochs_trained": model.provenance["cost"]["epochs"],
                "fit_s": fit_s,
                "interval": coverage,
            }
            rows.append(row)
            print({k: v for k, v in row.items() if k != "interval"}, flush=True)

    three_slides = []
    for seed in SEEDS:
        start = time.perf_counter()
        model = hd.tl.fit(slides, features="handcrafted", target=TARGET, seed=seed)
        three_slides.append(
            {
                "seed": seed,
                "best_epoch": model.best_epoch,
                "fold_epochs": model.provenance["early_stopping"]["fold_epochs"],
                "fold_validation_groups": model.provenance["early_stopping"]["fold_validation_groups"],
                "out_of_fold_cc": model.validation_scores["cc"],
                "out_of_fold_spread": model.validation_scores["spread"],
                "epochs_trained": model.provenance["cost"]["epochs"],
                "fit_s": time.perf_counter() - start,
            }
        )
        print(three_slides[-1], flush=True)

    recorded_before = json.loads((RESULTS_DIR / "trust_before.json").read_text())
    before = pd.DataFrame(recorded_before["per_seed_section"])
    after = pd.DataFrame(rows)
    summary = {}
    for name, table in (("before", before), ("after", after)):
        per_seed = table.groupby("seed")[["cc", "l1"]].mean()
        summary[name] = {
            "per_seed_mean_cc": per_seed["cc"].round(4).tolist(),
            "per_seed_mean_l1": per_seed["l1"].round(4).tolist(),
            "mean_cc": float(table["cc"].mean()),
            "mean_l1": float(table["l1"].mean()),
            "sd_across_seeds_of_mean_cc": float(per_seed["cc"].std()),
            "sd_across_seeds_of_mean_l1": float(per_seed["l1"].std()),
            "sd_across_seeds_per_section_cc": table.groupby("section")["cc"].std().round(4).to_dict(),
            "sd_across_seeds_per_section_l1": table.groupby("section")["l1"].std().round(4).to_dict(),
            "worst_seed_mean_l1": float(per_seed["l1"].max()),
        }
    coverage = {
        str(level): {
            field: float(np.mean([row["interval"][str(level)][field] for row in rows]))
            for field in rows[0]["interval"][str(level)]
        }
        for level in LEVELS
    }
    coverage_per_section = {
        section: {
            str(level): float(np.mean([r["interval"][str(level)]["coverage"] for r in rows if r["section"] == section]))
            for level in LEVELS
        }
        for section in SECTIONS
    }
    print(pd.DataFrame(summary).T.to_string())
    write_results(
        "trust",
        {
            "sections": list(SECTIONS),
            "target": "stereoscope major proportions (8 types)",
            "features": "handcrafted",
            "seeds": list(SEEDS),
            "summary": summary,
            "coverage_mean_over_seeds_and_sections": coverage,
            "coverage_per_section": coverage_per_section,
            "per_seed_section": rows,
            "fit_s_mean": float(after["fit_s"].mean()),
            "fit_s_mean_before": float(before["fit_s"].mean()),
            "epochs_trained_mean": float(after["epochs_trained"].mean()),
            "epochs_trained_mean_before": float(before["epochs_trained"].mean()),
            "three_slides": three_slides,
            "three_slides_before": recorded_before["three_slides"],
            "torch_threads": 1,
            "load_and_embed_s": load_s,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
