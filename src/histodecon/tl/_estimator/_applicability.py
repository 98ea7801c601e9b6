"""Does a slide lie within a model's reach? Native resolution, stain and slide-level feature statistics.

Per-slide standardisation (:mod:`._inputs`) removes each slide's feature means and spreads, so a
slide scanned coarser or stained otherwise gets inputs that look like the training slides' while its
predictions are poor. :func:`training_record` (called by ``fit``) keeps, for the training slides,
what that standardisation removes and what :func:`histodecon.tl.embed` recorded of the images
(native µm/px, squidpy's H and E stain vectors); :func:`judge` (called by ``predict``) compares
a slide with them. Three checks:

- **detail**: the finest scale a slide's patches resolve, ``max(native µm/px, patch µm/px)``,
  coarser than the training slides' coarsest: its patches were upsampled more than theirs were.
- **stain**: the angle between the slide's H (and E) optical-density vector and the training
  slides' mean one.
- **features**: per feature, how far the slide's mean (in units of the training slides' typical
  within-slide sd) and the log of its sd lie outside the training slides' range; summarised by
  the mean over features, robust to the few features that always stray.

Each threshold comes from the training slides alone, by leave-one-slide-out: every training
slide is measured against the others as a new slide would be against all of them, and the
threshold is :data:`MARGIN` times the largest of those figures, never below a floor (the one
figure a model of one or two slides cannot supply). A slide like the training ones stays quiet.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from histodecon._constants import Key

from ._spots import feature_matrix, in_tissue

#: The model provenance field holding the training slides' record.
APPLICABILITY = "applicability"
#: Threshold = MARGIN x the largest leave-one-slide-out figure of the training slides.
MARGIN = 1.5
#: Floors of the thresholds: detail 25% coarser; 8 degrees of stain, above the 6.3 degrees between squidpy's
#: estimates on the serial her2st sections C2 and C3 (stained together; ``benchmarks/applicability.py``), so
#: that a model of two slides with near-equal stains does not fire on the noise of the estimate; feature
#: shifts of 0.25 sd (means) and 0.1 (log sds).
FLOORS = {"detail": 1.25, "stain_angle_deg": 8.0, "feature_mean_shift": 0.25, "feature_sd_shift": 0.1}
_FIGURES = ("stain_angle_deg", "feature_mean_shift", "feature_sd_shift")


class ApplicabilityWarning(UserWarning):
    """A slide lies outside the reach of the model that predicted it."""


def slide_statistics(
    table: AnnData, names: Sequence[str], dims: Sequence[int] | None = None, *, unnamed: str = "table"
) -> dict[str, dict]:
    """Per sample of ``table``: what per-slide standardisation removes and what ``embed`` recorded of the image.

    ``mean`` and ``sd`` of every feature over the sample's in-tissue spots with finite embeddings,
    ``detail_mpp`` (coarsest over the encoders of ``max(native, patch µm/px)``), ``native_mpp`` and
    ``hematoxylin`` / ``eosin`` (the first encoder's record that has them). Keys without a
    record (embeddings made elsewhere, an older ``embed``) are left out. A table without
    ``obs[Key.obs.sample]`` is one sample named ``unnamed``.
    """
    features = feature_matrix(table, names, dims)
    keep = in_tissue(table) & np.isfinite(features).all(axis=1)
    samples = table.obs[Key.obs.sample].astype(str).to_numpy() if Key.obs.sample in table.obs else None
    records = table.uns.get(Key.uns.root, {}).get(Key.uns.embeddings, {})
    records = [records.get(Key.obsm.embedding(name).removeprefix(Key.obsm.embedding_prefix), {}) for name in names]
    out = {}
    for sample in [unnamed] if samples is None else list(dict.fromkeys(samples)):
        rows = keep if samples is None else keep & (samples == sample)
        if not rows.any():
            continue
        stats: dict[str, Any] = {"mean": features[rows].mean(axis=0), "sd": features[rows].std(axis=0)}
        for record in records:
            image = record.get("samples", {}).get(sample)
            patch_mpp = record.get("patch_mpp", {}).get(sample)
            if image is None or patch_mpp is None:
                continue
            detail = max(float(image["native_mpp"]), float(patch_mpp))
            stats["detail_mpp"] = max(stats.get("detail_mpp", 0.0), detail)
            stats.setdefault("native_mpp", float(image["native_mpp"]))
            stats.setdefault("patch_mpp", float(patch_mpp))
            if image.get("hematoxylin") is not None and "hematoxylin" not in stats:
                stats["hematoxylin"], stats["eosin"] = np.asarray(image["hematoxylin"]), np.asarray(image["eosin"])
        out[sample] = stats
    return out


def training_record(tables: Sequence[AnnData], names: Sequence[str], dims: Sequence[int]) -> dict:
    """What :func:`judge` needs of the training slides, as JSON values, with the leave-one-slide-out thresholds."""
    slides: dict[str, dict] = {}
    for i, table in enumerate(tables):
        slides |= slide_statistics(table, names, dims, unnamed=f"slide {i}")
    record: dict[str, Any] = {"samples": list(slides), "loso": {}}
    record["detail_mpp"] = {s: round(v["detail_mpp"], 4) for s, v in slides.items() if "detail_mpp" in v}
    record["stain"] = {
        s: {"hematoxylin": _plain(v["hematoxylin"]), "eosin": _plain(v["eosin"])}
        for s, v in slides.items()
        if "hematoxylin" in v
    }
    record |= _feature_ranges(list(slides.values()))
    for sample in slides if len(slides) > 1 else []:
        others = {s: v for s, v in slides.items() if s != sample}
        reference = {"stain": {s: record["stain"][s] for s in others if s in record["stain"]}}
        reference |= _feature_ranges(list(others.values()))
        record["loso"][sample] = _figures(slides[sample], reference)
    record["thresholds"] = _thresholds(record)
    return record


def judge(table: AnnData, model_provenance: Mapping, names: Sequence[str], dims: Sequence[int]) -> dict[str, dict]:
    """Per sample of ``table``: ``{"ok", "reasons", "not_judged", ...the figures and thresholds}`` (JSON values).

    ``ok`` is False where a check finds the sample outside the training slides; a model without
    the training record (saved before it existed) judges nothing and every sample is ``ok``,
    with ``not_judged`` saying why.
    """
    trained = model_provenance.get(APPLICABILITY)
    samples = table.obs[Key.obs.sample].astype(str).unique() if Key.obs.sample in table.obs else ["table"]
    if trained is None:
        reason = "the model records no statistics of its training slides (saved before they existed); refit it"
        return {str(s): {"ok": True, "reasons": [], "not_judged": [reason]} for s in samples}
    check_training_record(trained)
    stats = slide_statistics(table, names, dims)
    return {str(s): _verdict(stats.get(str(s)), trained) for s in samples}


def warn_outside(verdicts: Mapping[str, dict]) -> None:
    """One :class:`ApplicabilityWarning` per sample that is not ``ok``, naming every cause and its fix."""
    for sample, verdict in verdicts.items():
        if not verdict["ok"]:
            warnings.warn(
                f"Sample {sample!r} lies outside the training slides of this model, so its predictions may be "
                f"much worse than the model's validation scores: {' '.join(verdict['reasons'])} See "
                f"`uns['histodecon']['applicability'][{sample!r}]` for the figures and the docs page "
                "'When to trust a prediction'.",
                ApplicabilityWarning,
                stacklevel=3,  # the user's call of predict or predict_many
            )


def check_training_record(record: Any) -> None:
    """Refuse a malformed training record (a hand-edited model file) with the fix."""
    problem = None
    if not isinstance(record, Mapping):
        problem = f"is a {type(record).__name__}, not a mapping"
    else:
        missing = [key for key in ("samples", "thresholds", "detail_mpp", "stain", "mean_low") if key not in record]
        if missing:
            problem = f"lacks {missing}"
        elif len({len(record[key]) for key in ("mean_low", "mean_high", "scale", "log_sd_low", "log_sd_high")}) > 1:
            problem = "has feature ranges of different lengths"
    if problem is not None:
        raise ValueError(
            f"The model's `provenance[{APPLICABILITY!r}]` {problem}; the model file was edited or damaged. "
            f"Refit the model, or delete that entry to predict without the applicability checks."
        )


def _verdict(stats: dict | None, trained: Mapping) -> dict:
    """The record of one sample from its statistics (``None``: no in-tissue spot with finite embeddings)."""
    thresholds = trained["thresholds"]
    verdict: dict[str, Any] = {"ok": True, "reasons": [], "not_judged": []}
    if stats is None:
        verdict["not_judged"].append("the sample has no in-tissue spot with finite embeddings")
        return verdict
    if len(stats["mean"]) != len(trained["mean_low"]):
        raise ValueError(
            f"The model's `provenance[{APPLICABILITY!r}]` describes {len(trained['mean_low'])} features, the model's "
            f"inputs {len(stats['mean'])}; the model file was edited. Refit the model."
        )
    train_detail = max(trained["detail_mpp"].values(), default=None)
    if "detail_mpp" in stats and train_detail is not None:
        limit = train_detail * thresholds["detail"]
        verdict |= {
            "native_mpp": round(stats["native_mpp"], 4),
            "detail_mpp": round(stats["detail_mpp"], 4),
            "detail_mpp_threshold": round(limit, 4),
        }
        if stats["detail_mpp"] > limit:
            verdict["reasons"].append(
                f"Its native resolution ({stats['native_mpp']:.2f} µm/px) is coarser than the training slides' "
                f"(patches resolve {stats['detail_mpp']:.2f} µm against {train_detail:.2f} µm at most, threshold "
                f"{limit:.2f}): its patches were upsampled and lack the detail the model learnt from. Predict "
                f"slides scanned at {train_detail:.2f} µm/px or finer, or train on slides at this resolution."
            )
    else:
        verdict["not_judged"].append("resolution: no embedding record of the sample's µm/px (embed with hd.tl.embed)")
    figures = _figures(stats, trained)
    for name in _FIGURES:
        if name not in figures or thresholds.get(name) is None:
            continue
        verdict[name], verdict[f"{name}_threshold"] = round(figures[name], 4), round(thresholds[name], 4)
    if "stain_angle_deg" in verdict and verdict["stain_angle_deg"] > verdict["stain_angle_deg_threshold"]:
        verdict["reasons"].append(
            f"Its stain differs: its H&E vectors lie {figures['stain_angle_deg']:.1f} degrees from the training "
            f"slides' (threshold {thresholds['stain_angle_deg']:.1f}). Normalise its stain to the training slides' "
            "(squidpy's `sq.experimental.im.normalize_stains`) and embed it again."
        )
    elif "stain_angle_deg" not in verdict:
        verdict["not_judged"].append("stain: no stain vectors recorded for the sample or the training slides")
    shifted = [
        f"{what} {figures[name]:.2f} (threshold {thresholds[name]:.2f})"
        for name, what in (("feature_mean_shift", "mean shift"), ("feature_sd_shift", "spread shift"))
        if name in verdict and figures[name] > thresholds[name]
    ]
    if shifted:
        verdict["reasons"].append(
            f"Its slide-level feature statistics, which per-slide standardisation hides, lie outside the training "
            f"slides' range ({', '.join(shifted)}). Check its scan (focus, resolution, artefacts) and stain, or "
            "train on slides like it."
        )
    elif "feature_mean_shift" not in verdict:
        verdict["not_judged"].append("features: fewer than two training slides to set a threshold")
    verdict["ok"] = not verdict["reasons"]
    return verdict


def _figures(stats: dict, reference: Mapping) -> dict[str, float]:
    """The stain angle and feature shifts of one slide's ``stats`` from a ``reference`` of training slides."""
    figures = {}
    stain = reference.get("stain", {})
    if "hematoxylin" in stats and stain:
        figures["stain_angle_deg"] = max(
            _angle(stats[name], np.mean([np.asarray(v[name]) for v in stain.values()], axis=0))
            for name in ("hematoxylin", "eosin")
        )
    if "mean_low" in reference:
        low, high = np.asarray(reference["mean_low"]), np.asarray(reference["mean_high"])
        scale = np.asarray(reference["scale"])
        figures["feature_mean_shift"] = float(np.mean(_outside(stats["mean"], low, high) / scale))
        log_sd = np.log(np.maximum(stats["sd"], 1e-12))
        figures["feature_sd_shift"] = float(
            np.mean(_outside(log_sd, np.asarray(reference["log_sd_low"]), np.asarray(reference["log_sd_high"])))
        )
    return figures


def _feature_ranges(slides: list[dict]) -> dict[str, list[float]]:
    """Per feature: range of the slides' means and log sds, and their median sd (the unit of mean shifts)."""
    means, sds = np.array([s["mean"] for s in slides]), np.array([s["sd"] for s in slides])
    log_sds = np.log(np.maximum(sds, 1e-12))
    scale = np.median(sds, axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return {
        "mean_low": _plain(means.min(axis=0)),
        "mean_high": _plain(means.max(axis=0)),
        "scale": _plain(scale),
        "log_sd_low": _plain(log_sds.min(axis=0)),
        "log_sd_high": _plain(log_sds.max(axis=0)),
    }


def _thresholds(record: dict) -> dict[str, float | None]:
    """MARGIN x the largest leave-one-slide-out figure, floored; the detail factor from the training slides' spread."""
    loso = list(record["loso"].values())
    thresholds: dict[str, float | None] = {}
    details = record["detail_mpp"]
    spread = [v / max(w for t, w in details.items() if t != s) for s, v in details.items()] if len(details) > 1 else []
    thresholds["detail"] = max([FLOORS["detail"], *spread])
    for name in _FIGURES:
        values = [figures[name] for figures in loso if name in figures]
        thresholds[name] = max(FLOORS[name], MARGIN * max(values)) if values else None
    return thresholds


def _outside(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, np.maximum(values - high, low - values))


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    cos = abs(float(np.dot(u, v))) / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _plain(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64)]
