"""The GPU check: foundation-model embedding and training on CUDA, and their agreement with the CPU.

One script to run whenever a GPU is lent (under 8 minutes on one):

- UNI (ViT-L/16, 224 px) and CONCH (ViT-B/16, 448 px) with random weights, saved in their
  authors' checkpoint layout and loaded through ``weights=`` as real ones are: a bare forward
  loop over patches read beforehand (bfloat16 autocast, as ``hd.tl.embed`` uses on CUDA)
  against ``hd.tl.embed`` as a user calls it (reading, prefetching, model building and writing
  included): patches/s of each, their ratio, and the peak GPU memory of each;
- ``hd.tl.fit`` on a her2st-sized cohort (13.6k spots x 1536-d, 39 types; see ``table3.py``):
  seconds per epoch and peak GPU memory;
- agreement with the CPU: the cosine similarity of each patch's ``hd.tl.embed`` embedding on
  the device to the float32 CPU forward of the same patch, and the largest difference between
  the trained model's predictions on the device and on the CPU (the same weights, reloaded).

Without CUDA, ``--device cuda`` (the default) says why and exits 0, writing nothing.
``--device cpu --quick`` runs the same code paths on the CPU with a few patches and a small
cohort, in about a minute, for the test suite (it writes ``results/gpu_cpu_quick.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import peak_rss_mb, plain_numbers, write_results
from table3 import FULL as TABLE3_FULL
from table3 import sections

import histodecon as hd

MODELS = ("uni", "conch")
FULL = {"patches": 512, "batch_size": 64, "check_patches": 16, "cohort": TABLE3_FULL, "fit_options": {}}
QUICK = {
    "patches": 2,
    "batch_size": 2,
    "check_patches": 2,
    "cohort": {**TABLE3_FULL, "n_sections": 4, "spots_per_section": 50},
    "fit_options": {"max_epochs": 2},
}


def random_checkpoint(name: str, folder: Path) -> Path:
    """Encoder ``name`` with random weights, saved as its authors publish it (CONCH: the whole CoCa's ``visual.*``)."""
    entry = hd.encoders.get(name)
    torch.manual_seed(0)
    state = entry.build().state_dict()
    if name == "conch":
        state = {f"visual.{key}": value for key, value in state.items()}
    path = folder / name / entry.weights.filename
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def autocast(device: torch.device):
    """bfloat16 autocast where ``hd.tl.embed`` uses it (CUDA with bf16), else nothing."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def bare_forward(encoder, batches: list[torch.Tensor], device: torch.device) -> float:
    """Seconds of a plain loop: copy each batch to the device, forward under inference mode and autocast."""
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device):
        for batch in batches:
            encoder(batch.to(device, non_blocking=True)).float().cpu()
    synchronize(device)
    return time.perf_counter() - start


def encoder_figures(name: str, path: Path, sdata, device: torch.device, size: dict) -> dict:
    """Bare forward vs ``hd.tl.embed`` patches/s, peak GPU memory of each, and agreement with the CPU."""
    entry = hd.encoders.get(name)
    table = sdata.tables["table"]
    patches = hd.pp.spot_patches(sdata, size=entry.patch_size, mpp=entry.mpp)
    batches = [torch.from_numpy(batch) for _, batch in patches.batches(size["batch_size"])]
    encoder = hd.encoders.load(name, weights=path, device=device)
    bare_forward(encoder, [batches[0][:1]], device)  # warm-up: kernels, autocast caches
    reset_peak(device)
    bare_s = bare_forward(encoder, batches, device)
    bare_peak = peak_mb(device)
    if device.type == "cuda":
        del encoder
        torch.cuda.empty_cache()
        encoder = hd.encoders.load(name, weights=path, device="cpu")

    reset_peak(device)
    start = time.perf_counter()
    hd.tl.embed(sdata, models=[name], weights={name: path}, batch_size=size["batch_size"], device=str(device))
    synchronize(device)
    embed_s = time.perf_counter() - start
    embed_peak = peak_mb(device)
    embedded = np.asarray(table.obsm[f"X_{name}"])

    # Agreement: the first patches through a float32 CPU forward (the encoder is on the CPU by now).
    k = size["check_patches"]
    with torch.inference_mode():
        reference = encoder(torch.from_numpy(patches[:k])).numpy()
    del encoder
    cosine = np.sum(reference * embedded[:k], axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(embedded[:k], axis=1)
    )
    n = len(table)
    return {
        "dim": entry.dim,
        "patch": f"{entry.patch_size} px at {entry.mpp} um/px, model input {entry.input_size} px",
        "patches": n,
        "batch_size": size["batch_size"],
        "bare_forward_patches_per_s": n / bare_s,
        "embed_patches_per_s": n / embed_s,
        "ratio_embed_to_bare": bare_s / embed_s,
        "bare_forward_peak_gpu_mb": bare_peak,
        "embed_peak_gpu_mb": embed_peak,
        "embed_provenance": plain_numbers(table.uns.get("histodecon", {}).get("embeddings", {}).get(name, {})),
        "cosine_to_cpu_float32_min": float(cosine.min()),
        "cosine_to_cpu_float32_mean": float(cosine.mean()),
        "checked_patches": k,
    }


def fit_figures(device: torch.device, size: dict, folder: Path) -> dict:
    """``hd.tl.fit`` on the cohort: s/epoch, peak GPU memory, and predictions on the device vs the CPU."""
    slides = sections(**size["cohort"])
    features = list(size["cohort"]["dims"])
    reset_peak(device)
    start = time.perf_counter()
    model = hd.tl.fit(slides, features=features, target="abund", device=str(device), **size["fit_options"])
    synchronize(device)
    fit_s = time.perf_counter() - start
    fit_peak = peak_mb(device)
    test = slides[0]
    X = np.concatenate([np.asarray(test.obsm[f"X_{f}"]) for f in features], axis=1)
    on_device = model.predict(X)
    model.save(folder / "model")
    on_cpu = hd.tl.AbundanceRegressor.load(folder / "model", device="cpu").predict(X)
    epochs = len(model.history)
    return {
        "n_spots": sum(s.n_obs for s in slides),
        "n_dims": X.shape[1],
        "n_types": on_device.shape[1],
        "hyperparameters": size["fit_options"] or "defaults",
        "fit_s": fit_s,
        "epochs": epochs,
        "s_per_epoch": fit_s / epochs,
        "fit_peak_gpu_mb": fit_peak,
        "provenance": plain_numbers(model.provenance),
        "predictions_max_abs_difference_device_vs_cpu": float(np.abs(on_device - on_cpu).max()),
        "predictions_max_abs_value": float(np.abs(on_cpu).max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default; skipped without one) or cpu")
    parser.add_argument("--quick", action="store_true", help="a few patches and a small cohort")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("Skipped: no CUDA device here (torch.cuda.is_available() is False); nothing written.")
        return 0
    hd.settings.verbosity = 0
    hd.settings.progress = False
    size = QUICK if args.quick else FULL
    started = time.perf_counter()
    figures: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "bf16_autocast": device.type == "cuda" and torch.cuda.is_bf16_supported(),
    }
    sdata = hd.datasets.synthetic(n_spots=size["patches"], seed=0, counts=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            path = random_checkpoint(name, folder)
            figures[name] = encoder_figures(name, path, sdata, device, size)
            path.unlink()
            print(f"{name}: {figures[name]['embed_patches_per_s']:.1f} patches/s", flush=True)
        figures["fit"] = fit_figures(device, size, folder)
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["total_s"] = time.perf_counter() - started
    suffix = "" if device.type == "cuda" and not args.quick else f"_{device.type}{'_quick' if args.quick else ''}"
    write_results(f"gpu{suffix}", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
