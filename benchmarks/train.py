"""Training speed of the regressor on a her2st-sized cohort, and a full leave-one-out.

A cohort like the paper's her2st setting: 13.6k spots in 8 patients, 1536-d embeddings (CONCH +
UNI) and 39 cell types. Embeddings are random but carry a learnable signal: a 32-d latent state
per spot drives both the embedding (linearly, plus noise) and the abundances (log-normally).

Measured: seconds per epoch and epochs to early stop of one fold's training, peak memory, the
time of the full 8-fold leave-one-out (`hd.tl.cross_validate`), and the same network trained
for the same epochs by a plain `torch.utils.data.DataLoader` loop, whose time per epoch is the
reference for our training loop's overhead (ratio < 1: ours is faster). Both loops are timed
alone, after a warm-up fit; the whole `hd.tl.fit` per epoch (gathering the features,
standardising, scoring the validation split) is reported beside them.

Timings on a CPU shared with other work are noisy; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from _common import peak_rss_mb, write_results
from anndata import AnnData
from torch.utils.data import DataLoader, TensorDataset

import histodecon as hd
from histodecon.tl._estimator._network import AbundanceNetwork

FULL = {"n_spots": 13_600, "n_dims": 1536, "n_types": 39, "n_patients": 8}
QUICK = {"n_spots": 2_000, "n_dims": 256, "n_types": 10, "n_patients": 4}


def cohort(n_spots: int, n_dims: int, n_types: int, n_patients: int, seed: int = 0) -> list[AnnData]:
    """One AnnData per patient with `X_conch` + `X_uni`-like embeddings and `abund`."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_spots, 32))
    embeddings = latent @ rng.normal(size=(32, n_dims)) / np.sqrt(32) + rng.normal(size=(n_spots, n_dims))
    abund = np.exp(latent @ rng.normal(size=(32, n_types)) / np.sqrt(32) * 0.8)
    patient = np.arange(n_spots) * n_patients // n_spots
    split = n_dims // 3
    slides = []
    for p in range(n_patients):
        rows = patient == p
        names = [f"p{p}_{i}" for i in range(rows.sum())]
        slides.append(
            AnnData(
                obs=pd.DataFrame({"sample": f"P{p}", "patient": f"P{p}"}, index=names),
                obsm={
                    "X_conch": embeddings[rows, :split].astype(np.float32),
                    "X_uni": embeddings[rows, split:].astype(np.float32),
                    "abund": pd.DataFrame(abund[rows], index=names, columns=[f"type{k}" for k in range(n_types)]),
                },
            )
        )
    return slides


@contextlib.contextmanager
def timed_training_loop() -> Iterator[list[float]]:
    """Record the wall time of each ``AbundanceRegressor`` training loop (set-up and scoring excluded)."""
    original = hd.tl.AbundanceRegressor._train
    seconds: list[float] = []

    def timed(self, *args):
        start = time.perf_counter()
        result = original(self, *args)
        seconds.append(time.perf_counter() - start)
        return result

    hd.tl.AbundanceRegressor._train = timed
    try:
        yield seconds
    finally:
        hd.tl.AbundanceRegressor._train = original


def dataloader_epochs(model: hd.tl.AbundanceRegressor, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Seconds per epoch of a plain DataLoader loop training the same network on as many spots.

    The first ``n_validation_spots`` rows validate, the rest train: the same sizes as the
    model's own split (which held out whole patients), so that epochs do the same work.
    """
    hp = model.hyperparameters
    torch.manual_seed(hp.seed)
    network = AbundanceNetwork(x.shape[1], hp.hidden, y.shape[1])
    n_val = model.provenance["n_validation_spots"]
    x_std = (x - x[n_val:].mean(0)) / x[n_val:].std(0)
    y_std = y / y[n_val:].std(0)
    train = TensorDataset(torch.from_numpy(x_std[n_val:]).float(), torch.from_numpy(y_std[n_val:]).float())
    x_val, y_val = torch.from_numpy(x_std[:n_val]).float(), torch.from_numpy(y_std[:n_val]).float()
    loader = DataLoader(train, batch_size=hp.batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(network.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    start = time.perf_counter()
    for _ in range(epochs):
        network.train()
        for xb, yb in loader:
            loss = model._loss(network.forward_scaled(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            model._loss(network.forward_scaled(x_val), y_val).item()
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small cohort, for a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    hd.settings.progress = False

    hd.tl.fit(cohort(**QUICK, seed=1), features=["conch", "uni"], groupby="patient", max_epochs=2)  # warm torch up
    slides = cohort(**size)
    train, test = slides[:-1], slides[-1]
    start = time.perf_counter()
    with timed_training_loop() as loop_seconds:
        model = hd.tl.fit(train, features=["conch", "uni"], groupby="patient")
    fit_s = time.perf_counter() - start
    epochs = len(model.history)
    x_test = np.hstack([test.obsm["X_conch"], test.obsm["X_uni"]])
    test_cc = hd.metrics.cc_score(test.obsm["abund"], model.predict(x_test))

    x = np.vstack([np.hstack([s.obsm["X_conch"], s.obsm["X_uni"]]) for s in train])
    y = np.vstack([s.obsm["abund"].to_numpy(dtype=np.float32) for s in train])
    ours_per_epoch = loop_seconds[0] / epochs
    plain_per_epoch = dataloader_epochs(model, x, y, epochs)

    start = time.perf_counter()
    cv = hd.tl.cross_validate(slides, features=["conch", "uni"], groupby="patient", baselines=())
    loo_s = time.perf_counter() - start

    write_results(
        "train_quick" if args.quick else "train",
        {
            **size,
            "torch_threads": args.threads,
            "hidden": list(model.hyperparameters.hidden),
            "one_fold_fit_s": fit_s,
            "epochs_to_early_stop": epochs,
            "best_epoch": model.best_epoch,
            "fit_s_per_epoch": fit_s / epochs,
            "seconds_per_epoch": ours_per_epoch,
            "dataloader_seconds_per_epoch": plain_per_epoch,
            "ours_over_dataloader": ours_per_epoch / plain_per_epoch,
            "held_out_cc": test_cc,
            "loo_folds": int(cv.summary["fold"].nunique()),
            "loo_total_s": loo_s,
            "loo_mean_cc": float(cv.summary["cc"].mean()),
            "loo_mean_l1": float(cv.summary["l1"].mean()),
            "peak_rss_mb": peak_rss_mb(),
            "load_average_1min_at_end": os.getloadavg()[0],
        },
    )


if __name__ == "__main__":
    main()
