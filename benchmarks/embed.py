"""Embedding throughput: ``hd.tl.embed`` against a bare forward loop of the same model, on CPU.

As in DESIGN.md's LazySlide comparison: a randomly initialised timm ViT-B/16 (224 px, registered
as an encoder) embeds the first 48 spots of her2st section C2 (a synthetic slide when
the data are absent). The bare loop runs the same ``PatchEncoder`` (its preprocessing included)
on the same patches, read beforehand, under ``torch.inference_mode``; ``hd.tl.embed`` is timed
as a user calls it, so reading, prefetching, model building and writing are all in its time.
Each side is run twice, interleaved, and the fastest run of each is kept. Then the
weights-free ``handcrafted`` encoder embeds the whole section (reading included), and its bare
module is timed on one thread, and the embedding is timed with torch's default threads and one.

    .venv/bin/python benchmarks/embed.py            # 48 ViT patches, 2 repeats
    .venv/bin/python benchmarks/embed.py --quick    # 16 ViT patches, 1 repeat
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import write_results

import histodecon as hd

HER2ST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "her2st"
BATCH = 16
VIT = "vit_b16_random"


def register_random_vit() -> hd.encoders.Encoder:
    import timm

    return hd.encoders.register(
        hd.encoders.Encoder(
            name=VIT,
            dim=768,
            build=lambda: timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0),
            mpp=0.5,
            description="random-init ViT-B/16 (benchmark only)",
        )
    )


def load_slide() -> tuple[object, str]:
    if HER2ST_DIR.exists():
        return hd.datasets.her2st("C2", data_dir=HER2ST_DIR), "her2st C2"
    return hd.datasets.synthetic(n_spots=300, seed=0, counts=False), "synthetic (her2st absent)"


def first_spots(sdata, n: int):
    """The slide with its table cut to the first ``n`` spots."""
    from spatialdata import SpatialData

    table = sdata.tables["table"][:n].copy()
    return SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables={"table": table})


def bare_forward(encoder, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            encoder(batch)
    return time.perf_counter() - start


def through_embed(sdata, name: str) -> float:
    start = time.perf_counter()
    hd.tl.embed(sdata, models=[name], batch_size=BATCH, device="cpu", overwrite=True)
    return time.perf_counter() - start


def vit_comparison(sdata, n_patches: int, repeats: int) -> dict:
    entry = register_random_vit()
    subset = first_spots(sdata, n_patches)
    patches = hd.pp.spot_patches(subset, size=entry.patch_size, mpp=entry.mpp)
    batches = [torch.from_numpy(batch) for _, batch in patches.batches(BATCH)]
    encoder = hd.encoders.load(VIT, device="cpu")
    bare_forward(encoder, batches[:1])  # warm-up
    bare_s, embed_s = [], []
    for _ in range(repeats):
        bare_s.append(bare_forward(encoder, batches))
        embed_s.append(through_embed(subset, VIT))
    start = time.perf_counter()
    hd.encoders.load(VIT, device="cpu")
    build_s = time.perf_counter() - start
    bare, embedded = n_patches / min(bare_s), n_patches / min(embed_s)
    return {
        "model": "timm vit_base_patch16_224, random init, 224 px at 0.5 um/px",
        "patches": n_patches,
        "batch_size": BATCH,
        "torch_threads": torch.get_num_threads(),
        "bare_forward_patches_per_s": round(bare, 2),
        "embed_patches_per_s": round(embedded, 2),
        "ratio_embed_to_bare": round(embedded / bare, 3),
        "model_build_s": round(build_s, 2),
        "ratio_excluding_model_build": round(n_patches / (min(embed_s) - build_s) / bare, 3),
    }


def one_thread(func, *args):
    """``func(*args)`` with torch limited to one thread (the default thread count is restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return func(*args)
    finally:
        torch.set_num_threads(threads)


def bare_handcrafted(x: torch.Tensor) -> float:
    encoder = hd.encoders.load("handcrafted", device="cpu")
    bare_forward(encoder, [x[:BATCH]])  # warm-up
    return bare_forward(encoder, list(torch.split(x, 64)))


def handcrafted_throughput(sdata) -> dict:
    n = sdata.tables["table"].n_obs
    entry = hd.encoders.get("handcrafted")
    through_embed(sdata, "handcrafted")  # warm-up: decodes the image chunks once
    embed_s = through_embed(sdata, "handcrafted")
    embed_1_thread_s = one_thread(through_embed, sdata, "handcrafted")
    x = torch.from_numpy(hd.pp.spot_patches(sdata, size=entry.patch_size, mpp=entry.mpp)[:])
    return {
        "spots": n,
        "patch": f"{entry.patch_size} px at {entry.mpp} um/px",
        "dim": entry.dim,
        "torch_threads": torch.get_num_threads(),
        "embed_whole_section_patches_per_s": round(n / embed_s, 1),
        "embed_whole_section_1_thread_patches_per_s": round(n / embed_1_thread_s, 1),
        "bare_module_1_thread_patches_per_s": round(n / one_thread(bare_handcrafted, x), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 ViT patches, one repeat")
    args = parser.parse_args()
    hd.settings.verbosity = 1
    hd.settings.progress = False
    sdata, source = load_slide()
    figures = {"slide": source}
    figures["vit_b16"] = vit_comparison(sdata, 16 if args.quick else 48, 1 if args.quick else 2)
    figures["handcrafted"] = handcrafted_throughput(sdata)
    write_results("embed_quick" if args.quick else "embed", figures)


if __name__ == "__main__":
    main()
