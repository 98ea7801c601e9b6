"""The cost of the paper's Table 3 protocol: leave-one-section-out training at her2st scale.

her2st has 36 sections (13.6k spots, about 380 each). Each section gets random CONCH (512-d)
and UNI (1024-d) embeddings and 39 cell-type abundances that depend on them (a random linear
map of a shared latent state plus noise, through a softplus), so early stopping behaves as on
real data; only cost is measured, not accuracy. For every held-out section, `hd.tl.fit` trains
on the other 35 with the default hyperparameters and `hd.tl.predict` predicts the held-out one.

Recorded per fold: wall time, epochs trained, and on CUDA the peak GPU memory
(`torch.cuda.max_memory_allocated`); overall: total time, the process's peak resident memory
(`ru_maxrss`) and the size of the data. CPU always; CUDA too when a GPU is available.
`--folds N` runs the first N folds of the 36 and extrapolates the total (said so in the JSON);
`--quick` is a smoke test (6 small sections, 2 folds, 3 epochs).

The paper (Table 3): the MLP trains a her2st leave-one-out in about 9 minutes in 570 MB of GPU
memory, against 45 GB and hours for Hist2Cell.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from _common import peak_rss_mb, plain_numbers, write_results
from anndata import AnnData

import histodecon as hd

FULL = {"n_sections": 36, "spots_per_section": 378, "dims": {"conch": 512, "uni": 1024}, "n_types": 39}
QUICK = {"n_sections": 6, "spots_per_section": 60, "dims": {"conch": 512, "uni": 1024}, "n_types": 39}


def sections(n_sections: int, spots_per_section: int, dims: dict, n_types: int, seed: int = 0) -> list[AnnData]:
    """Random embeddings and abundances that depend on them, one AnnData per section."""
    rng = np.random.default_rng(seed)
    latent_dim, total_dim = 32, sum(dims.values())
    to_features = rng.normal(size=(latent_dim, total_dim)) / np.sqrt(latent_dim)
    to_types = rng.normal(size=(latent_dim, n_types)) / np.sqrt(latent_dim)
    types = [f"type{k:02d}" for k in range(n_types)]
    out = []
    for s in range(n_sections):
        latent = rng.normal(size=(spots_per_section, latent_dim)) + rng.normal(size=latent_dim)  # section shift
        features = (latent @ to_features + rng.normal(size=(spots_per_section, total_dim))).astype(np.float32)
        abund = np.logaddexp(0.0, 2.0 * (latent @ to_types) + rng.normal(scale=0.5, size=(spots_per_section, n_types)))
        names = [f"S{s:02d}_{i}" for i in range(spots_per_section)]
        adata = AnnData(obs=pd.DataFrame({"sample": f"S{s:02d}", "in_tissue": True}, index=names))
        start = 0
        for name, dim in dims.items():
            adata.obsm[f"X_{name}"] = features[:, start : start + dim]
            start += dim
        adata.obsm["abund"] = pd.DataFrame(abund, index=names, columns=types)
        out.append(adata)
    return out


def leave_one_section_out(slides: list[AnnData], features: list[str], device: str, folds: int, **options) -> dict:
    """Time ``folds`` leave-one-section-out folds of ``hd.tl.fit`` + ``hd.tl.predict`` on ``device``."""
    cuda = device.startswith("cuda")
    records = []
    start = time.perf_counter()
    for held_out in range(folds):
        train = [s for i, s in enumerate(slides) if i != held_out]
        test = slides[held_out]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fold_start = time.perf_counter()
        model = hd.tl.fit(train, features=features, target="abund", device=device, **options)
        hd.tl.predict(test, model, key_added="pred_abund", overwrite=True)
        if cuda:
            torch.cuda.synchronize()
        record = {
            "fold": str(test.obs["sample"].iloc[0]),
            "wall_s": time.perf_counter() - fold_start,
            "epochs": int(len(model.history)),
            "best_epoch": model.best_epoch,
            # Whatever cost figures the model records about itself (wall time, memory, ...).
            "provenance": plain_numbers(model.provenance),
        }
        if cuda:
            record["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        records.append(record)
        print(f"{device} fold {record['fold']}: {record['wall_s']:.1f} s, {record['epochs']} epochs", flush=True)
    total = time.perf_counter() - start
    fold_s = [r["wall_s"] for r in records]
    summary = {
        "device": device,
        "folds_run": folds,
        "folds_in_protocol": len(slides),
        "total_s": total,
        "total_s_all_folds": total if folds == len(slides) else float(np.mean(fold_s) * len(slides)),
        "total_is_extrapolated": folds != len(slides),
        "fold_s_mean": float(np.mean(fold_s)),
        "epochs_mean": float(np.mean([r["epochs"] for r in records])),
        "s_per_epoch_mean": float(np.mean([r["wall_s"] / r["epochs"] for r in records])),
        "peak_rss_mb_after": peak_rss_mb(),
        "folds": records,
    }
    if cuda:
        summary["peak_gpu_mb_max"] = max(r["peak_gpu_mb"] for r in records)
        summary["gpu"] = torch.cuda.get_device_name()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 small sections, 2 folds, 3 epochs")
    parser.add_argument("--folds", type=int, default=None, help="run the first N folds and extrapolate")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all", help="cuda when available")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap the epochs (a reduced run; recorded)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hd.settings.verbosity = 0
    hd.settings.progress = False
    size = QUICK if args.quick else FULL
    folds = min(args.folds or (2 if args.quick else size["n_sections"]), size["n_sections"])
    options = {"max_epochs": 3} if args.quick else {}
    if args.max_epochs:
        options["max_epochs"] = args.max_epochs
    slides = sections(**size)
    features = list(size["dims"])
    data_mb = sum(s.obsm[f"X_{f}"].nbytes + s.obsm["abund"].to_numpy().nbytes for s in slides for f in features) / 2**20
    figures = {
        **{k: v for k, v in size.items() if k != "dims"},
        "dims": size["dims"],
        "n_spots": sum(s.n_obs for s in slides),
        "data_mb": data_mb,
        "hyperparameters": "defaults" if not options else options,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb_before": peak_rss_mb(),
    }
    devices = []
    if args.device in ("all", "cpu"):
        devices.append("cpu")
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append("cuda")
        else:
            figures["cuda"] = "skipped: torch.cuda.is_available() is False on this machine"
            print(figures["cuda"])
    for device in devices:
        figures[device] = leave_one_section_out(slides, features, device, folds, **options)
    write_results("table3_quick" if args.quick else "table3", figures)


if __name__ == "__main__":
    main()
