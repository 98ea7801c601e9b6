"""Leave-one-section-out on her2st (B4, C2, C3): our MLP against ridge regression, same features.

Every section is read with `hd.datasets.her2st` (stereoscope `major` proportions, 8 cell types,
as the target), embedded with the weights-free encoder (`hd.tl.embed(models=["handcrafted"])`),
and held out in turn. Scores per held-out section: CC and L1 (`hd.metrics`) of

- our regressor, trained by `hd.tl.cross_validate` on the other sections;
- ridge regression on the same standardised features, its penalty chosen by inner
  leave-one-section-out cross-validation on the training sections (`sklearn.linear_model.RidgeCV`);
- the training mean (L1 only: a constant prediction has no correlation).

The data is read from `--data-dir`, else HISTODECON_DATA_DIR, else ../shared/data.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import peak_rss_mb, write_results
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import LeaveOneGroupOut

import histodecon as hd

SECTIONS = ("B4", "C2", "C3")
ALPHAS = np.logspace(-2, 5, 15)


def default_data_dir() -> Path:
    return Path(os.environ.get("HISTODECON_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def load(sections: list[str], data_dir: Path) -> list:
    slides = []
    for section in sections:
        sdata = hd.datasets.her2st(section, data_dir=data_dir, proportions="major")
        hd.tl.embed(sdata, models=["handcrafted"])
        slides.append(sdata)
    return slides


def ridge_scores(tables: list, target: str) -> pd.DataFrame:
    """Leave-one-section-out ridge regression; alpha by inner leave-one-section-out CV."""
    x = [t.obsm["X_handcrafted"].astype(np.float64) for t in tables]
    y = [t.obsm[target].to_numpy(dtype=np.float64) for t in tables]
    rows = []
    for i, held_out in enumerate(tables):
        train = [j for j in range(len(tables)) if j != i]
        x_train, y_train = np.vstack([x[j] for j in train]), np.vstack([y[j] for j in train])
        groups = np.concatenate([np.full(len(x[j]), j) for j in train])
        mean, std = x_train.mean(0), x_train.std(0)
        std[std == 0] = 1
        splits = list(LeaveOneGroupOut().split(x_train, groups=groups))
        ridge = RidgeCV(alphas=ALPHAS, cv=splits).fit((x_train - mean) / std, y_train)
        pred = ridge.predict((x[i] - mean) / std)
        rows.append(
            {
                "sample": str(held_out.obs["sample"].iloc[0]),
                "ridge_cc": hd.metrics.cc_score(y[i], pred),
                "ridge_l1": hd.metrics.l1_score(y[i], pred),
                "ridge_alpha": float(ridge.alpha_),
                "mean_l1": hd.metrics.l1_score(y[i], np.broadcast_to(y_train.mean(0), y[i].shape)),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding her2st/")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hd.settings.progress = False
    target = "proportions"

    start = time.perf_counter()
    slides = load(args.sections, args.data_dir)
    load_s = time.perf_counter() - start
    tables = [sdata.tables["table"] for sdata in slides]

    start = time.perf_counter()
    cv = hd.tl.cross_validate(slides, groupby="sample", features="handcrafted", target=target, seed=args.seed)
    mlp_s = time.perf_counter() - start
    mlp = cv.summary.rename(columns={"cc": "mlp_cc", "l1": "mlp_l1"})[["sample", "n_spots", "mlp_cc", "mlp_l1"]]
    table = mlp.merge(ridge_scores(tables, target), on="sample")
    columns = ["sample", "n_spots", "mlp_cc", "ridge_cc", "mlp_l1", "ridge_l1", "mean_l1", "ridge_alpha"]
    table = table[columns]
    print(table.to_string(index=False, float_format="{:.3f}".format))
    means = table[["mlp_cc", "ridge_cc", "mlp_l1", "ridge_l1", "mean_l1"]].mean()
    print("mean:", means.round(3).to_dict())

    per_type = cv.scores.pivot(index="cell_type", columns="sample", values="cc")
    write_results(
        "her2st_loso",
        {
            "sections": args.sections,
            "target": "stereoscope major proportions (8 types)",
            "features": "handcrafted",
            "embedding_dim": int(tables[0].obsm["X_handcrafted"].shape[1]),
            "per_section": table.to_dict(orient="records"),
            "mean": means.to_dict(),
            "mlp_cc_per_type": per_type.to_dict(),
            "load_and_embed_s": load_s,
            "mlp_loso_s": mlp_s,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
