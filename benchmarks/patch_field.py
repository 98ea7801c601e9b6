"""Which patch field suits the weights-free encoder: leave-one-section-out on her2st (B4, C2, C3).

Every section is read with `hd.datasets.her2st` (stereoscope `major` proportions, 8 cell types,
as the target) and embedded with `hd.tl.embed(models=["handcrafted"], patch_size=..., mpp=...)`
for each field:

- `112px@1.0` — the encoder's entry until now: 112 px at 1 um/px (112 um, the field of a
  foundation model's 224 px at 0.5 um/px);
- `224px@native` — the paper's: 224 px at the slide's own ~0.73 um/px (about 164 um);
- `100px@1.0` — the spot itself: 100 um at 1 um/px;
- `224px@1.0` — a wider context: 224 um at 1 um/px;
- `112px@2.0` — the same 224 um at 2 um/px, the resolution the encoder sees of `224px@1.0`
  (its `input_size` is 112 px), read from four times fewer pixels;
- `112px@2.24spots` — the encoder's default now: 112 px across 2.24 spot diameters (her2st's
  spots are 100 um wide, so 224 um at 2 um/px), embedded with `hd.tl.embed`'s defaults.

Each field is scored by `hd.tl.cross_validate(groupby="sample")`: the default regressor (one
run per seed), ridge and the mean predictor on the same folds. Per field: mean CC and L1 over
the held-out sections. The data is read from `--data-dir`, else HISTODECON_DATA_DIR, else
../shared/data.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from _common import default_data_dir, peak_rss_mb, write_results

import histodecon as hd

SECTIONS = ("B4", "C2", "C3")
#: name: (patch_size, mpp); mpp None reads native pixels, "encoder" the entry's own field.
FIELDS = {
    "112px@1.0": (112, 1.0),
    "224px@native": (224, None),
    "100px@1.0": (100, 1.0),
    "224px@1.0": (224, 1.0),
    "112px@2.0": (112, 2.0),
    "112px@2.24spots": ("encoder", "encoder"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="folder holding her2st/")
    parser.add_argument("--fields", nargs="+", default=list(FIELDS), choices=list(FIELDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the regressor")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hd.settings.progress = False
    slides = [hd.datasets.her2st(s, data_dir=args.data_dir, proportions="major") for s in SECTIONS]

    rows, timings, patch_mpps = [], {}, {}
    for field in args.fields:
        patch_size, mpp = FIELDS[field]
        start = time.perf_counter()
        for sdata in slides:
            hd.tl.embed(sdata, models=["handcrafted"], patch_size=patch_size, mpp=mpp, overwrite=True)
        timings[f"{field}_embed_s"] = time.perf_counter() - start
        patch_mpps[field] = {
            sample: mpp
            for sdata in slides
            for sample, mpp in sdata.tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]["patch_mpp"].items()
        }
        for i, seed in enumerate(args.seeds):
            cv = hd.tl.cross_validate(
                slides,
                groupby="sample",
                features="handcrafted",
                target="proportions",
                baselines=("mean", "ridge") if i == 0 else (),
                seed=seed,
            )
            summary = cv.summary.assign(field=field, seed=seed)
            summary.loc[summary["model"] != "mlp", "seed"] = -1  # the baselines do not depend on it
            rows.append(summary)
    table = pd.concat(rows, ignore_index=True)
    per_section = table.groupby(["field", "model", "sample"], sort=False)[["cc", "l1"]].mean().reset_index()
    means = per_section.groupby(["field", "model"], sort=False)[["cc", "l1"]].mean().reset_index()
    print(per_section.to_string(index=False, float_format="{:.3f}".format))
    print(means.to_string(index=False, float_format="{:.3f}".format))
    write_results(
        "patch_field",
        {
            "sections": list(SECTIONS),
            "target": "stereoscope major proportions (8 types)",
            "encoder": "handcrafted",
            "fields": {name: {"patch_size": FIELDS[name][0], "mpp": FIELDS[name][1]} for name in args.fields},
            "patch_mpp": patch_mpps,
            "mlp_seeds": args.seeds,
            "per_section": per_section.to_dict(orient="records"),
            "mean": means.to_dict(orient="records"),
            "mlp_per_seed": table[table["model"] == "mlp"][["field", "seed", "sample", "cc", "l1"]].to_dict(
                orient="records"
            ),
            **timings,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
