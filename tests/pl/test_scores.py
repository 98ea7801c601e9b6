import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import histodecon as hd
from histodecon.pl._scores import per_slide
from histodecon.tl._cross_validate import CVResult

CONFIGS = ["default", "uni", "conch+uni"]
SLIDES = ["A1", "B1", "C1", "D1"]


@pytest.fixture
def cv_results():
    rng = np.random.default_rng(0)
    rows = []
    for c, config in enumerate(CONFIGS):
        for fold, slide in enumerate(SLIDES):
            l1 = 0.8 - 0.1 * c + 0.01 * fold
            for cell_type in ["T", "B", "Fib"]:
                cc = 0.2 * c + rng.normal(0, 0.05)
                rows.append(
                    {"configuration": config, "fold": fold, "sample": slide, "cell_type": cell_type, "cc": cc, "l1": l1}
                )
    frame = pd.DataFrame(rows)
    frame.loc[0, "cc"] = np.nan  # a cell type constant on one slide
    return frame


def test_per_slide_means_over_cell_types(cv_results):
    table = per_slide(cv_results, ["cc", "l1"])
    assert len(table) == len(CONFIGS) * len(SLIDES)
    first = cv_results[(cv_results["configuration"] == "default") & (cv_results["sample"] == "A1")]
    row = table[(table["configuration"] == "default") & (table["sample"] == "A1")].iloc[0]
    assert row["cc"] == pytest.approx(first["cc"].iloc[1:].mean())
    assert row["l1"] == pytest.approx(0.8)


def test_boxes_points_and_file(cv_results, tmp_path):
    path = tmp_path / "scores.png"
    fig = hd.pl.scores(cv_results, order=["conch+uni", "uni", "default"], save=path)
    assert len(fig.axes) == 2
    table = per_slide(cv_results, ["cc", "l1"])
    for ax, metric in zip(fig.axes, ["cc", "l1"], strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["conch+uni", "uni", "default"]
        assert metric.upper() in ax.get_ylabel()
        points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
        np.testing.assert_allclose(np.sort(points), np.sort(table[metric].to_numpy()))
        # Strip points of the first position are the best configuration's slides.
        first = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
        best = table.loc[table["configuration"] == "conch+uni", metric].to_numpy()
        np.testing.assert_allclose(np.sort(first[np.round(first[:, 0]) == 0, 1]), np.sort(best))
    pixels = imread(path)
    assert pixels.shape[1] > pixels.shape[0] > 200 and pixels.std() > 0.05


def test_into_given_axes_and_errors(cv_results):
    fig, ax = plt.subplots()
    assert hd.pl.scores(cv_results, metrics="cc", ax=ax) is fig
    assert len(ax.collections) > 0
    with pytest.raises(ValueError, match="one Axes per metric"):
        hd.pl.scores(cv_results, ax=ax)
    with pytest.raises(KeyError, match="cross_validate"):
        hd.pl.scores(cv_results.drop(columns="configuration"))
    with pytest.raises(ValueError, match="ghost"):
        hd.pl.scores(cv_results, order=["uni", "ghost"])


def test_cross_validate_result_draws_its_summary(cv_results):
    summary = per_slide(cv_results, ["cc", "l1"]).assign(n_spots=100)
    result = CVResult(scores=cv_results, summary=summary)
    fig = hd.pl.scores(result)
    for ax, metric in zip(fig.axes, ["cc", "l1"], strict=True):
        points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
        np.testing.assert_allclose(np.sort(points), np.sort(summary[metric].to_numpy()))
    # The per-cell-type table gives the same per-slide points.
    from_scores = hd.pl.scores(cv_results)
    for a, b in zip(fig.axes, from_scores.axes, strict=True):
        offsets = [np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())]) for ax in (a, b)]
        np.testing.assert_allclose(np.sort(offsets[0][:, 1]), np.sort(offsets[1][:, 1]))
    with pytest.raises(TypeError, match="cross_validate"):
        hd.pl.scores(summary.to_dict())
