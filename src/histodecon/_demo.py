"""The end-to-end demo behind ``make demo``: synthetic slides by default, her2st when available.

The pipeline is the one of the README: embed with the weights-free encoder, deconvolve the
spot counts with cell2location (synthetic mode), evaluate leave-one-slide-out, fit on all
training slides, predict a held-out slide and an H&E-only slide, compare colocalisation of
prediction and truth, and write figures plus an HTML report to the output folder.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

import histodecon as hd
from histodecon._constants import Key
from histodecon._settings import logger
from histodecon._utils import get_table, sample_info

#: The encoder of the demo: it needs no weights, so the demo runs on any machine.
ENCODER = "handcrafted"
#: Where the synthetic demo writes what cell2location recovers from the counts: its training target.
DECONVOLVED = "c2l"
HER2ST_SECTIONS = ("B4", "C2", "C3")
#: Posterior samples for cell2location's q05: enough for a quantile, far quicker than the default 1000.
POSTERIOR_SAMPLES = 100
#: Mean cells per spot of the synthetic slides (cell2location's prior; its default 30 suits Visium tissue).
SYNTHETIC_CELLS_PER_SPOT = 10


@dataclass
class DemoData:
    """Slides of one demo run: training slides with a target, one held out, one H&E-only."""

    training: list
    held_out: object
    new_slide: object
    target: str
    truth_label: str
    notes: list[str] = field(default_factory=list)


def synthetic_data(out: Path, *, n_spots: int, deconvolution_epochs: int) -> DemoData:
    """Four synthetic slides with counts (three for training, one held out) and an H&E-only image.

    The training target is what cell2location recovers from the simulated counts (as in the
    method), written to ``obsm['c2l']``; the simulation's truth stays in ``obsm['abund']``.
    """
    slides = [hd.datasets.synthetic(n_spots=n_spots, seed=seed, sample=f"slide{seed}") for seed in range(4)]
    image_path = out / "new_slide.png"
    new_image = hd.datasets.synthetic(n_spots=n_spots, seed=4, sample="new", counts=False)
    Image.fromarray(np.moveaxis(new_image.images["new_image"].data.compute(), 0, -1)).save(image_path)
    new_slide = hd.io.read_slide(image_path, mpp=0.5, sample="new_slide")

    reference = hd.datasets.synthetic_reference(seed=0)
    started = time.perf_counter()
    hd.tl.deconvolve(
        slides,
        reference,
        labels_key="cell_type",
        key_added=DECONVOLVED,
        max_epochs=deconvolution_epochs,
        num_samples=POSTERIOR_SAMPLES,
        n_cells_per_location=SYNTHETIC_CELLS_PER_SPOT,
    )
    seconds = time.perf_counter() - started
    recovery = pd.concat(
        [_per_type_correlation(slide, Key.obsm.abund, DECONVOLVED).rename(_sample(slide)) for slide in slides],
        axis=1,
    )
    recovery.to_csv(out / "deconvolution_recovery.csv")
    notes = [
        f"cell2location ({deconvolution_epochs} epochs, {seconds:.0f} s) recovers the simulated abundances "
        f"with a mean per-type Pearson r of {recovery.to_numpy().mean():.2f} "
        "(deconvolution_recovery.csv); the regressor is trained on these estimates, as in the method.",
        f"The H&E-only slide is {image_path.name}: {get_table(new_slide).n_obs} pseudo-spots "
        "placed on its tissue by hd.io.read_slide.",
    ]
    return DemoData(
        slides[:3], slides[3], new_slide, target=DECONVOLVED, truth_label="cell2location (from counts)", notes=notes
    )


def her2st_data(data_dir: Path) -> DemoData:
    """her2st sections B4, C2, C3 with their published stereoscope proportions as the target.

    C3 is held out; its image alone, re-read as an H&E-only slide, is the new slide.
    """
    slides = [hd.datasets.her2st(section, data_dir=data_dir) for section in HER2ST_SECTIONS]
    info = sample_info(get_table(slides[2]), "C3")
    image = np.moveaxis(slides[2].images[info["image_key"]].data.compute(), 0, -1)
    new_slide = hd.io.read_slide(image, mpp=info["mpp"], sample="C3_image_only")
    notes = [
        f"her2st sections from {data_dir}; target: the published stereoscope proportions (major types).",
        "C3 is held out; its image alone, read with hd.io.read_slide, is the H&E-only slide.",
    ]
    return DemoData(
        slides[:2],
        slides[2],
        new_slide,
        target=Key.obsm.proportions,
        truth_label="stereoscope (published)",
        notes=notes,
    )


def _sample(slide) -> str:
    return str(get_table(slide).obs[Key.obs.sample].iloc[0])


def _per_type_correlation(slide, truth: str, estimate: str) -> pd.Series:
    table = get_table(slide)
    a, b = table.obsm[truth], table.obsm[estimate][table.obsm[truth].columns]
    return pd.Series({cell_type: np.corrcoef(a[cell_type], b[cell_type])[0, 1] for cell_type in a.columns})


@contextmanager
def _demo_settings() -> Iterator[None]:
    """Off-screen figures and no progress bars during the run; the caller's backend and settings come back after."""
    backend, progress = matplotlib.get_backend(), hd.settings.progress
    matplotlib.use("Agg")
    hd.settings.progress = False
    try:
        yield
    finally:
        hd.settings.progress = progress
        matplotlib.use(backend)


def run(out: Path, *, data_dir: Path | None = None, quick: bool = False) -> Path:
    """Run the demo, write its results to ``out`` and return the path of the HTML report.

    The package settings and the matplotlib backend that the run changes are restored when it ends.
    """
    with _demo_settings():
        return _run(out, data_dir=data_dir, quick=quick)


def _run(out: Path, *, data_dir: Path | None, quick: bool) -> Path:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if data_dir is not None:
        data = her2st_data(data_dir)
    else:
        data = synthetic_data(
            out,
            n_spots=150 if quick else 300,
            deconvolution_epochs=300 if quick else 1000,
        )
    every_slide = [*data.training, data.held_out, data.new_slide]
    for slide in every_slide:
        hd.pp.filter_background(slide)
        hd.tl.embed(slide, models=[ENCODER])

    hyperparameters = {"max_epochs": 100 if quick else 500}
    cv = hd.tl.cross_validate(
        [*data.training, data.held_out],
        groupby=Key.obs.sample,
        features=[ENCODER],
        target=data.target,
        **hyperparameters,
    )
    cv.summary.to_csv(out / "cross_validation_summary.csv", index=False)
    cv.scores.to_csv(out / "cross_validation_scores.csv", index=False)
    plt.close(hd.pl.scores(cv, save=out / "scores.png", return_fig=True))

    model = hd.tl.fit(data.training, features=[ENCODER], target=data.target, **hyperparameters)
    model.save(out / "model", overwrite=True)
    predicted = Key.obsm.pred_abund
    for slide in (data.held_out, data.new_slide):
        hd.tl.predict(slide, model)
        hd.gr.rbf_graph(slide)
        hd.gr.moran_r(slide, key=predicted)
    hd.gr.moran_r(data.held_out, key=data.target)

    held_out = get_table(data.held_out)
    similarity = hd.metrics.colocalization_similarity(
        held_out.uns[Key.uns.moran(data.target)]["R"], held_out.uns[Key.uns.moran(predicted)]["R"]
    )
    cell_types = list(model.cell_types)
    figures = [
        hd.pl.colocalization(
            data.held_out,
            keys=[data.target, predicted],
            titles=[data.truth_label, "predicted from H&E"],
            save=out / "colocalization.png",
            return_fig=True,
        ),
        hd.pl.spatial_abundance(
            data.held_out,
            cell_types[:3],
            keys=[data.target, predicted],
            titles=[data.truth_label, "predicted from H&E"],
            save=out / "held_out_abundance.png",
            return_fig=True,
        ),
        hd.pl.spatial_abundance(
            data.new_slide,
            cell_types[:3],
            keys=[predicted],
            titles=["predicted from H&E"],
            save=out / "new_slide_abundance.png",
            return_fig=True,
        ),
    ]
    for figure in figures:
        plt.close(figure)
    get_table(data.new_slide).obsm[predicted].to_csv(out / "new_slide_predictions.csv")

    summary = {
        "mode": "her2st" if data_dir is not None else "synthetic",
        "encoder": ENCODER,
        "leave_one_slide_out": _scores_of(cv.summary, "mlp"),
        "baselines": {name: _scores_of(cv.summary, name) for name in ("mean", "ridge")},
        "held_out_sample": _sample(data.held_out),
        "held_out_colocalization_similarity": {name: float(value) for name, value in similarity.attrs["mean"].items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report = write_report(out, data, cv.summary, summary)
    logger.warning(f"Demo finished in {summary['seconds']:.0f} s; report: {report}")
    return report


#: Why a CC score is missing: the mean baseline predicts one composition everywhere.
CONSTANT_PREDICTION = (
    "the prediction is the same at every spot (the mean baseline, or a collapsed model), so it has no "
    "correlation with the truth"
)


def _scores_of(cv_summary: pd.DataFrame, model: str) -> list[dict]:
    """Per held-out slide: CC, L1 and spot count of ``model`` (the regressor ``"mlp"`` or a baseline)."""
    rows = cv_summary[cv_summary["model"] == model][[Key.obs.sample, "cc", "l1", "n_spots"]]
    records = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")  # JSON has no NaN
    for record in records:
        if record["cc"] is None:
            record["cc_undefined"] = CONSTANT_PREDICTION
    return records


def write_report(out: Path, data: DemoData, cv_summary: pd.DataFrame, summary: dict) -> Path:
    """An HTML page with the notes, the score table and the figures of the run."""
    figures = [
        ("scores.png", "Leave-one-slide-out CC and L1 scores, one point per held-out slide."),
        ("colocalization.png", "Bivariate Moran's R on the held-out slide: truth and prediction, one colour scale."),
        ("held_out_abundance.png", "Held-out slide: abundances from counts (top) and predicted from H&E (bottom)."),
        ("new_slide_abundance.png", "The H&E-only slide: predicted abundances on its pseudo-spots."),
    ]
    notes = [
        *data.notes,
        f"Colocalisation similarity on {summary['held_out_sample']} (prediction vs truth): "
        "cosine {cosine:.2f}, Pearson {pearson:.2f}.".format(**summary["held_out_colocalization_similarity"]),
    ]
    parts = [
        "<html><head><meta charset='utf-8'><title>histodecon demo</title></head><body>",
        f"<h1>histodecon demo ({summary['mode']})</h1>",
        "<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>",
        f"<h2>Leave-one-slide-out scores ({ENCODER} encoder)</h2>",
        cv_summary.to_html(index=False, float_format="{:.3f}".format, na_rep="n/a"),
        f"<p>CC n/a: {CONSTANT_PREDICTION}.</p>" if cv_summary["cc"].isna().any() else "",
        *(
            f"<h2>{html.escape(name)}</h2><p>{html.escape(caption)}</p><img src='{name}' width='900'>"
            for name, caption in figures
        ),
        f"<p>Run time: {summary['seconds']:.0f} s.</p></body></html>",
    ]
    report = out / "report.html"
    report.write_text("\n".join(parts))
    return report


def data_dir_from_env() -> Path | None:
    """The her2st folder named by ``$HISTODECON_DATA_DIR``, if set; refuses a folder that is not one."""
    value = os.environ.get(Key.env.data_dir)
    if not value:
        return None
    path = Path(value).expanduser()
    if not (path / "ST-cnts").is_dir():
        raise FileNotFoundError(
            f"${Key.env.data_dir}={value} is not a her2st folder (no ST-cnts/ inside). Point it at the folder that "
            "holds ST-cnts/, ST-spotfiles/, ST-imgs/ and ST-deconv/, or unset it to run the synthetic demo."
        )
    return path
