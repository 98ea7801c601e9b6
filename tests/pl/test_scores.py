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
    fig = hd.pl.scores(cv_results, order=["conch+uni", "uni", "default"], save=path, return_fig=True)
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
    assert hd.pl.scores(cv_results, metrics="cc", ax=ax) == [ax]
    assert hd.pl.scores(cv_results, metrics="cc", ax=ax, return_fig=True) is fig
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
    fig = hd.pl.scores(result, return_fig=True)
    for ax, metric in zip(fig.axes, ["cc", "l1"], strict=True):
        points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
        np.testing.assert_allclose(np.sort(points), np.sort(summary[metric].to_numpy()))
    # The per-cell-type table gives the same per-slide points.
    from_scores = hd.pl.scores(cv_results, return_fig=True)
    for a, b in zip(fig.axes, from_scores.axes, strict=True):
        offsets = [np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())]) for ax in (a, b)]
        np.testing.assert_allclose(np.sort(offsets[0][:, 1]), np.sort(offsets[1][:, 1]))
    with pytest.raises(TypeError, match="cross_validate"):
        hd.pl.scores(summary.to_dict())


@pytest.fixture
def with_baselines():
    rows = []
    for c, config in enumerate(["uni", "conch+uni"]):
        for model, shift in (("mlp", 0.3), ("mean", 0.0), ("ridge", 0.2)):
            for fold, slide in enumerate(SLIDES):
                cc = np.nan if model == "mean" else 0.1 * c + shift + 0.01 * fold
                rows.append({"configuration": config, "model": model, "fold": fold, "sample": slide, "cc": cc})
                rows[-1]["l1"] = 0.8 - shift - 0.1 * c + 0.01 * fold
    return pd.DataFrame(rows)


def test_baselines_are_drawn_beside_the_regressor(with_baselines):
    fig = hd.pl.scores(with_baselines, return_fig=True)
    table = per_slide(with_baselines, ["cc", "l1"])
    for ax, metric in zip(fig.axes, ["cc", "l1"], strict=True):
        assert [t.get_text() for t in ax.get_legend().texts] == ["mlp", "mean", "ridge"]
        assert [h.get_hatch() for h in ax.get_legend().get_patches()] == ["", "//", ".."]
        drawn = ["mlp", "ridge"] if metric == "cc" else ["mlp", "mean", "ridge"]  # the mean has no CC
        assert [len(c.boxes) for c in ax.containers] == [2] * len(drawn)  # one box per configuration
        hatches = [{box.get_hatch() or "" for box in c.boxes} for c in ax.containers]
        assert hatches == [{{"mlp": "", "mean": "//", "ridge": ".."}[m]} for m in drawn]
        colours = [tuple(c.boxes[0].get_facecolor()) for c in ax.containers]
        assert len(set(colours)) == len(drawn)
        # the points of each model and configuration sit on its box, at its slides' values
        points = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
        assert len(points) == 2 * len(drawn)
        for k, offsets in enumerate(points):
            configuration, m = ["uni", "conch+uni"][k // len(drawn)], k % len(drawn)
            box = ax.containers[m].boxes[k // len(drawn)].get_path().vertices[:, 0]
            assert box.min() < offsets[:, 0].min() and offsets[:, 0].max() < box.max()
            rows = table[(table["configuration"] == configuration) & (table["model"] == drawn[m])]
            np.testing.assert_allclose(np.sort(offsets[:, 1]), np.sort(rows[metric].to_numpy()))
    # the regressor's boxes sit left of the baselines' within each configuration
    l1 = fig.axes[1]
    left = [[box.get_path().vertices[:, 0].min() for box in c.boxes] for c in l1.containers]
    assert left[0][0] < left[1][0] < left[2][0] < 0.5 < left[0][1]


def test_models_choose_which_to_draw(with_baselines):
    fig = hd.pl.scores(with_baselines, metrics="l1", models=["ridge", "mlp"], return_fig=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().texts] == ["ridge", "mlp"]
    points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
    assert len(points) == 2 * 2 * len(SLIDES)
    one = hd.pl.scores(with_baselines, metrics="l1", models="mlp", return_fig=True)
    assert one.axes[0].get_legend() is None and len(one.axes[0].collections) > 0
    with pytest.raises(ValueError, match=r"`models` names \['lasso'\]"):
        hd.pl.scores(with_baselines, models=["mlp", "lasso"])
