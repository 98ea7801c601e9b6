"""`python -m histodecon demo`: the whole pipeline on synthetic slides, and its output folder rule."""

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

import histodecon as hd
from histodecon.__main__ import main


def test_demo_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not the output of an earlier demo"):
        main(["demo", "--out", str(tmp_path), "--quick"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demo_restores_the_settings_it_changes_even_when_it_fails(tmp_path, monkeypatch):
    (tmp_path / "her2st" / "ST-cnts").mkdir(parents=True)  # a her2st folder without the sections
    monkeypatch.setenv("HISTODECON_DATA_DIR", str(tmp_path / "her2st"))
    monkeypatch.setattr(hd.settings, "progress", True)
    backend = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        with pytest.raises(FileNotFoundError, match="JPEG"):
            main(["demo", "--out", str(tmp_path / "demo"), "--quick"])
        assert hd.settings.progress is True
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(backend)


@pytest.mark.slow
def test_quick_demo_writes_report_and_figures(tmp_path, monkeypatch):
    monkeypatch.delenv("HISTODECON_DATA_DIR", raising=False)
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--quick"])
    for name in (
        "report.html",
        "scores.png",
        "colocalization.png",
        "held_out_abundance.png",
        "new_slide_abundance.png",
        "model.safetensors",
        "model.json",
        "cross_validation_summary.csv",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["leave_one_slide_out"]) == 4
    assert [len(summary["baselines"][name]) for name in ("mean", "ridge")] == [4, 4]
    # the network must beat predicting the training slides' mean composition on the held-out slides
    mlp_l1 = np.mean([row["l1"] for row in summary["leave_one_slide_out"]])
    mean_l1 = np.mean([row["l1"] for row in summary["baselines"]["mean"]])
    assert mlp_l1 < mean_l1, (mlp_l1, mean_l1)
    assert np.mean([row["cc"] for row in summary["leave_one_slide_out"]]) > 0


def test_undefined_cc_of_a_constant_prediction_is_explained_not_printed_as_nan():
    from histodecon._demo import CONSTANT_PREDICTION, _scores_of

    summary = pd.DataFrame(
        {
            "sample": ["a", "b", "a", "b"],
            "model": ["mlp", "mlp", "mean", "mean"],
            "cc": [0.4, 0.5, np.nan, np.nan],
            "l1": [0.3, 0.4, 0.6, 0.7],
            "n_spots": [10, 12, 10, 12],
        }
    )
    mean = _scores_of(summary, "mean")
    assert json.loads(json.dumps(mean, allow_nan=False)) == [
        {"sample": "a", "cc": None, "l1": 0.6, "n_spots": 10, "cc_undefined": CONSTANT_PREDICTION},
        {"sample": "b", "cc": None, "l1": 0.7, "n_spots": 12, "cc_undefined": CONSTANT_PREDICTION},
    ]
    assert [row["cc"] for row in _scores_of(summary, "mlp")] == [0.4, 0.5]
