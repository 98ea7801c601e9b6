"""Applicability on her2st: each section against models of the other sections, and sections made foreign on purpose.

For every section (B4, C2, C3) and three foreign copies of it (``coarse``: downsampled to
3.5 µm/px and recorded so, as a slide scanned that coarse; ``blur``: downsampled to 3.5 µm/px
and upsampled back, recorded at the original µm/px; ``stain45``: optical densities rotated by
45 degrees about the grey axis), embeds the weights-free encoder, then judges them with
:func:`histodecon.tl._estimator._applicability.judge` against the training record of the
other two sections and of all three (no network is needed for the judgement). Also measures
what the per-sample slide record (native µm/px and squidpy's stain vectors) adds to ``embed``.
Writes ``results/applicability.json`` and the figure of ``docs/trust.md``
(``docs/images/trust_applicability.png``).

Run: ``python benchmarks/applicability.py [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

import histodecon as hd
from histodecon.io._build import build_sdata
from histodecon.tl._embedding._slide_record import slide_record
from histodecon.tl._estimator._applicability import APPLICABILITY, judge, training_record

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_data_dir, write_results

SECTIONS = ("B4", "C2", "C3")
FOREIGN_MPP = 3.5
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "images" / "trust_applicability.png"
CHECKS = ("detail_mpp", "stain_angle_deg", "feature_mean_shift", "feature_sd_shift")


def full_image(sdata) -> np.ndarray:
    (key,) = sdata.images
    element = sdata.images[key]
    data = element["scale0"]["image"] if hasattr(element, "children") else element
    return np.asarray(data.data.compute())


def resized(image: np.ndarray, factor: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    height, width = shape or (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[2] * factor)))
    pil = Image.fromarray(np.moveaxis(image, 0, -1)).resize((width, height), Image.BILINEAR)
    return np.moveaxis(np.asarray(pil), -1, 0)


def rotated_stain(image: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    rotation = (np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross).astype(np.float32)
    out = np.empty_like(image)
    for start in range(0, image.shape[1], 512):  # row blocks: bounded memory on whole sections
        rows = slice(start, start + 512)
        density = -np.log(np.maximum(image[:, rows].astype(np.float32), 1.0) / 255.0)
        density = np.clip(np.einsum("ij,jyx->iyx", rotation, density), 0.0, None)
        out[:, rows] = np.clip(np.round(255.0 * np.exp(-density)), 0, 255).astype(np.uint8)
    return out


def variants(sdata, section: str) -> dict:
    """The section and its three foreign copies, as slides of their own."""
    table = sdata.tables["table"]
    info = table.uns["histodecon"]["samples"][section]
    image, centres = full_image(sdata), np.asarray(table.obsm["spatial"], dtype=float)
    factor = info["mpp"] / FOREIGN_MPP
    small = resized(image, factor)

    def slide(name, pixels, mpp, scale):
        return build_sdata(
            pixels,
            centres * scale,
            sample=f"{section}_{name}",
            mpp=mpp,
            spot_diameter_px=info["spot_diameter_px"] * scale,
            spot_ids=list(table.obs_names),
            obs=table.obs[["in_tissue"]].copy(),
        )

    return {
        section: sdata,
        f"{section}_coarse": slide("coarse", small, FOREIGN_MPP, factor),
        f"{section}_blur": slide("blur", resized(small, 1 / factor, image.shape[1:]), info["mpp"], 1.0),
        f"{section}_stain45": slide("stain45", rotated_stain(image, 45), info["mpp"], 1.0),
    }


def main(data_dir: Path) -> None:
    hd.settings.progress = False
    warnings.simplefilter("ignore")
    tables, cost = {}, {}
    for section in SECTIONS:
        sdata = hd.datasets.her2st(section, data_dir=data_dir, proportions=None)
        for name, slide in variants(sdata, section).items():
            start = time.perf_counter()
            hd.tl.embed(slide, ["handcrafted"])
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            slide_record(slide, "table")
            cost[name] = {"embed_s": round(seconds, 2), "slide_record_s": round(time.perf_counter() - start, 2)}
            tables[name] = slide.tables["table"]
            print(name, cost[name], flush=True)

    dims = [tables[SECTIONS[0]].obsm["X_handcrafted"].shape[1]]
    models = {"+".join(SECTIONS): list(SECTIONS)} | {
        "+".join(s for s in SECTIONS if s != held_out): [s for s in SECTIONS if s != held_out] for held_out in SECTIONS
    }
    results = {}
    for model_name, training in models.items():
        record = training_record([tables[s] for s in training], ["handcrafted"], dims)
        verdicts = {
            name: judge(table, {APPLICABILITY: record}, ["handcrafted"], dims)[name]
            for name, table in tables.items()
            if name.split("_")[0] not in training or model_name == "+".join(SECTIONS)
        }
        results[model_name] = {"thresholds": record["thresholds"], "loso": record["loso"], "verdicts": verdicts}
        for name, verdict in verdicts.items():
            print(model_name, name, verdict["ok"], {k: verdict.get(k) for k in CHECKS}, flush=True)
    share = [c["slide_record_s"] / c["embed_s"] for c in cost.values()]
    figures = {"models": results, "cost": cost, "slide_record_share_of_embed_median": round(float(np.median(share)), 3)}
    write_results("applicability", figures)
    draw(results)


def draw(results: dict) -> None:
    """Each check's figure over its threshold, per slide, against the model of the other two sections."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SECTIONS), figsize=(4.2 * len(SECTIONS), 3.4), sharey=True)
    for ax, held_out in zip(axes, SECTIONS, strict=True):
        model_name = "+".join(s for s in SECTIONS if s != held_out)
        verdicts = {k: v for k, v in results[model_name]["verdicts"].items() if k.split("_")[0] == held_out}
        width = 0.8 / len(CHECKS)
        for j, check in enumerate(CHECKS):
            key = f"{check}_threshold"
            ratios = [v.get(check, np.nan) / v[key] if key in v else np.nan for v in verdicts.values()]
            ax.bar(np.arange(len(verdicts)) + (j - 1.5) * width, ratios, width, label=check.replace("_", " "))
        ax.axhline(1.0, color="k", lw=1, ls="--")
        labels = [
            f"{name.removeprefix(held_out).strip('_') or 'as is'}\n{'quiet' if v['ok'] else 'warns'}"
            for name, v in verdicts.items()
        ]
        ax.set_xticks(np.arange(len(verdicts)), labels)
        ax.set_title(f"{held_out} vs model of {model_name}")
    axes[0].set_ylabel("figure / threshold")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    print(f"wrote {FIGURE}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    main(parser.parse_args().data_dir)
