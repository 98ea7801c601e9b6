"""Leave-one-section-out on her2st (B4, C2, C3): `hd.tl.fit`'s defaults and options against ridge and the mean.

Every section is read with `hd.datasets.her2st` (stereoscope `major` proportions, 8 cell types,
as the target), embedded with the weights-free encoder (`hd.tl.embed(models=["handcrafted"])`),
and held out in turn: models are trained on the other two sections with `hd.tl.fit` and
applied with `hd.tl.predict`. Scores per held-out section, CC and L1 (`hd.metrics`), of

- `mlp_default`: `hd.tl.fit` with its defaults (compositions, per-slide feature scaling,
  early stopping then a refit on every training spot);
- `mlp_abundance`: `target_scale="abundance"` (softplus output, no composition);
- `mlp_training_scaling`: `feature_scaling="training"` (no per-slide standardisation);
- `mlp_context400`: with the neighbourhood feature, `context_radius=400` (um);
- `ridge`: ridge regression on the same raw features (`hd.tl`'s closed-form `RidgeBaseline`,
  penalty by inner leave-one-section-out on the training sections);
- `ridge_slide_scaling`: the same on per-slide standardised features (what the default MLP sees);
- `mean`: the training sections' mean composition (L1 only: a constant has no correlation).

The data is read from `--data-dir`, else HISTODECON_DATA_DIR, else ../shared/data.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import default_data_dir, peak_rss_mb, write_results

import histodecon as hd
from histodecon.tl._estimator._baselines import RidgeBaseline
from histodecon.tl._estimator._inputs import InputOptions, spot_inputs

SECTIONS = ("B4", "C2", "C3")
TARGET = "proportions"
MLP_OPTIONS = {
    "mlp_default": {},
    "mlp_abundance": {"target_scale": "abundance"},
    "mlp_training_scaling": {"feature_scaling": "training"},
    "mlp_context400": {"context_radius": 400},
}


def load(sections: list[str], data_dir: Path) -> list:
    slides = []
    for section in sections:
        sdata = hd.datasets.her2st(section, data_dir=data_dir, proportions="major")
        hd.tl.embed(sdata, models=["handcrafted"])
        slides.append(sdata)
    return slides


def ridge_scores(train: list, test, *, scaling: str) -> tuple[float, float]:
    """CC and L1 of ridge on the training tables' features (raw or per-slide scaled), alpha by inner LOSO."""

    def features(table):
        x = table.obsm["X_handcrafted"].astype(np.float32)
        return spot_inputs(table, x, np.ones(len(x), dtype=bool), InputOptions(feature_scaling=scaling))

    x = np.vstack([features(t) for t in train])
    y = np.vstack([t.obsm[TARGET].to_numpy() for t in train])
    groups = np.concatenate([t.obs["sample"].astype(str).to_numpy() for t in train])
    pred = RidgeBaseline.fit(x, y, groups=groups).predict(features(test))
    truth = test.obsm[TARGET].to_numpy()
    return hd.metrics.cc_score(truth, pred), hd.metrics.l1_score(truth, pred)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding her2st/")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hd.settings.progress = False

    start = time.perf_counter()
    slides = load(args.sections, args.data_dir)
    load_s = time.perf_counter() - start
    tables = [sdata.tables["table"] for sdata in slides]

    rows, fit_s = [], dict.fromkeys(MLP_OPTIONS, 0.0)
    for i, test in enumerate(tables):
        train_slides = [s for j, s in enumerate(slides) if j != i]
        train_tables = [t for j, t in enumerate(tables) if j != i]
        truth = test.obsm[TARGET]
        row = {"sample": args.sections[i], "n_spots": test.n_obs}
        for name, options in MLP_OPTIONS.items():
            start = time.perf_counter()
            model = hd.tl.fit(train_slides, features="handcrafted", target=TARGET, seed=args.seed, **options)
            hd.tl.predict(test, model, key_added=name, overwrite=True)
            fit_s[name] += time.perf_counter() - start
            row[f"{name}_cc"] = hd.metrics.cc_score(truth, test.obsm[name])
            row[f"{name}_l1"] = hd.metrics.l1_score(truth, test.obsm[name])
        row["ridge_cc"], row["ridge_l1"] = ridge_scores(train_tables, test, scaling="training")
        row["ridge_slide_scaling_cc"], row["ridge_slide_scaling_l1"] = ridge_scores(train_tables, test, scaling="slide")
        train_mean = np.vstack([t.obsm[TARGET].to_numpy() for t in train_tables]).mean(axis=0)
        row["mean_l1"] = hd.metrics.l1_score(truth.to_numpy(), np.broadcast_to(train_mean, truth.shape))
        rows.append(row)
        print(row, flush=True)

    table = pd.DataFrame(rows)
    means = table.drop(columns=["sample", "n_spots"]).mean()
    print(table.to_string(index=False, float_format="{:.3f}".format))
    print("mean:", means.round(3).to_dict())
    write_results(
        "her2st_loso",
        {
            "sections": args.sections,
            "target": "stereoscope major proportions (8 types)",
            "features": "handcrafted",
            "embedding_dim": int(tables[0].obsm["X_handcrafted"].shape[1]),
            "seed": args.seed,
            "per_section": table.to_dict(orient="records"),
            "mean": means.to_dict(),
            "load_and_embed_s": load_s,
            "fit_and_predict_s": fit_s,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
