"""``hd.tl.predict(..., interval=)``: calibrated per-spot intervals, their keys, files and refusals."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata
from anndata import AnnData

import histodecon as hd
from histodecon.tl._estimator._file import record_checksum

pytestmark = pytest.mark.usefixtures("one_thread")

CELL_TYPES = ["tumour", "T cells", "fibroblasts"]
SMALL = {"hidden": (32, 16), "lr": 1e-2, "max_epochs": 60, "batch_size": 64, "patience": 5}
LEVELS = (0.5, 0.8, 0.95)


def noisy_slide(sample, n=300, seed=0):
    """Embeddings that explain part of the composition; the rest is noise no model can predict."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)).astype(np.float32)
    logits = np.stack([z[:, 0], 0.8 * z[:, 1], np.zeros(n)], axis=1) + 0.5 * rng.normal(size=(n, 3))
    composition = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = [f"{sample}_{i}" for i in range(n)]
    return AnnData(
        obs=pd.DataFrame({"sample": sample, "in_tissue": True}, index=names),
        obsm={"X_a": z, "abund": pd.DataFrame(composition, index=names, columns=CELL_TYPES)},
    )


@pytest.fixture(scope="module")
def model():
    slides = [noisy_slide(f"s{i}", seed=i) for i in range(3)]
    return hd.tl.fit(slides, features="a", feature_scaling="training", **SMALL)


def test_intervals_cover_held_out_slides_at_about_the_nominal_level(model):
    """Slides drawn like the training ones: coverage near the level asked, widths growing with it."""
    tests = [noisy_slide(f"new{i}", seed=10 + i) for i in range(2)]
    coverage, widths = [], []
    for level in LEVELS:
        inside, width = [], []
        for slide in tests:
            hd.tl.predict(slide, model, interval=level, overwrite=True)
            pred, lower, upper = (slide.obsm[k] for k in ("pred_abund", "pred_abund_lower", "pred_abund_upper"))
            for bound in (lower, upper):
                assert bound.columns.equals(pred.columns) and bound.index.equals(pred.index)
            assert ((lower.values <= pred.values) & (pred.values <= upper.values)).all()
            assert (lower.values >= 0).all() and (upper.values <= 1).all()  # compositions
            truth = slide.obsm["abund"].values
            inside.append((lower.values <= truth) & (truth <= upper.values))
            width.append((upper.values - lower.values).mean())
        coverage.append(np.concatenate(inside).mean())
        widths.append(np.mean(width))
        assert slide.uns["histodecon"]["predictions"]["pred_abund"]["interval"] == level
    np.testing.assert_allclose(coverage, LEVELS, atol=0.07)
    assert widths[0] < widths[1] < widths[2]


def test_no_interval_writes_nothing_new(model):
    slide = noisy_slide("t", n=40, seed=20)
    hd.tl.predict(slide, model)
    assert set(slide.obsm) == {"X_a", "abund", "pred_abund"}
    assert "interval" not in slide.uns["histodecon"]["predictions"]["pred_abund"]


@pytest.mark.parametrize("interval", [0, 1, 1.5, -0.1, True, float("nan"), "0.8"])
def test_bad_interval_is_refused_before_the_model_is_loaded(interval, tmp_path):
    slide = noisy_slide("t", n=40, seed=20)
    with pytest.raises(ValueError, match=r"`interval` must be a coverage level strictly between 0 and 1"):
        hd.tl.predict(slide, tmp_path / "no_model_here", interval=interval)  # not a FileNotFoundError
    assert set(slide.obsm) == {"X_a", "abund"}


def test_model_of_an_older_format_is_refused_for_intervals(model, tmp_path):
    model.save(tmp_path / "m")
    record = json.loads((tmp_path / "m.json").read_text())
    del record["calibration"]
    record["version"] = 3
    record["record_sha256"] = record_checksum(record)
    (tmp_path / "m.json").write_text(json.dumps(record))
    slide = noisy_slide("t", n=40, seed=20)
    with pytest.raises(ValueError, match=r"no calibration for prediction intervals.*Fit it again with `hd.tl.fit`"):
        hd.tl.predict(slide, tmp_path / "m", interval=0.8)
    assert set(slide.obsm) == {"X_a", "abund"}
    hd.tl.predict(slide, tmp_path / "m")  # without an interval it still predicts
    np.testing.assert_array_equal(slide.obsm["pred_abund"].values, model.predict(_inputs(model, slide)))


def _inputs(model, slide):
    from histodecon.tl._estimator._inputs import spot_inputs

    return spot_inputs(slide, slide.obsm["X_a"], np.ones(slide.n_obs, dtype=bool), model.inputs)


def test_bounds_are_not_overwritten_without_overwrite(model):
    slide = noisy_slide("t", n=40, seed=20)
    mine = pd.DataFrame(0.0, index=slide.obs_names, columns=CELL_TYPES)
    slide.obsm["pred_abund_upper"] = mine.copy()
    with pytest.raises(KeyError, match=r"`adata.obsm\['pred_abund_upper'\]` already exists.*overwrite=True"):
        hd.tl.predict(slide, model, interval=0.8)
    assert "pred_abund" not in slide.obsm and "pred_abund_lower" not in slide.obsm  # nothing written
    pd.testing.assert_frame_equal(slide.obsm["pred_abund_upper"], mine)
    hd.tl.predict(slide, model)  # no interval: the user's key is not in the way
    hd.tl.predict(slide, model, interval=0.8, key_added="mlp")
    assert {"mlp_lower", "mlp_upper"} <= set(slide.obsm)
    hd.tl.predict(slide, model, interval=0.8, overwrite=True)
    assert not slide.obsm["pred_abund_upper"].equals(mine)


def test_bounds_survive_h5ad_and_zarr_and_become_layers(model, tmp_path):
    sdata = hd.datasets.synthetic(n_spots=60, seed=3, counts=False)
    table = sdata.tables["table"]
    table.obsm["X_a"] = np.random.default_rng(3).normal(size=(table.n_obs, 4)).astype(np.float32)
    hd.tl.predict(sdata, model, interval=0.8)
    keys = ("pred_abund", "pred_abund_lower", "pred_abund_upper")
    sdata.write(tmp_path / "s.zarr")
    table.write_h5ad(tmp_path / "t.h5ad")
    for read in (spatialdata.read_zarr(tmp_path / "s.zarr").tables["table"], ad.read_h5ad(tmp_path / "t.h5ad")):
        for key in keys:
            pd.testing.assert_frame_equal(read.obsm[key], table.obsm[key])
        assert read.uns["histodecon"]["predictions"]["pred_abund"]["interval"] == 0.8
    adata = hd.get.abundances(sdata)
    np.testing.assert_array_equal(adata.layers["lower"], table.obsm["pred_abund_lower"].values)
    np.testing.assert_array_equal(adata.layers["upper"], table.obsm["pred_abund_upper"].values)
    adata.write_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "a.h5ad").layers["upper"], adata.layers["upper"])
    assert "lower" not in hd.get.abundances(sdata, "abund").layers  # no interval, no layers


def test_spatial_abundance_draws_the_interval_width(model):
    sdata = hd.datasets.synthetic(n_spots=60, seed=3, counts=False)
    table = sdata.tables["table"]
    table.obsm["X_a"] = np.random.default_rng(3).normal(size=(table.n_obs, 4)).astype(np.float32)
    hd.tl.predict(sdata, model, interval=0.8)
    axes = hd.pl.spatial_abundance(sdata, "tumour", keys=["pred_abund", "pred_abund_width"], show=False)
    drawn = np.asarray(axes[1].collections[0].get_array())
    expected = (table.obsm["pred_abund_upper"] - table.obsm["pred_abund_lower"])["tumour"].to_numpy()
    np.testing.assert_allclose(drawn, expected)
    with pytest.raises(KeyError, match=r"No `obsm\['abund_width'\]`"):  # no interval predicted for `abund`
        hd.pl.spatial_abundance(sdata, "tumour", keys=["abund_width"], show=False)


def test_predict_many_passes_the_interval_on(model):
    slides = [noisy_slide(f"m{i}", n=40, seed=30 + i) for i in range(2)]
    reference = [slide.copy() for slide in slides]
    hd.tl.predict_many(slides, model, interval=0.8)
    for slide, single in zip(slides, reference, strict=True):
        hd.tl.predict(single, model, interval=0.8)
        for key in ("pred_abund", "pred_abund_lower", "pred_abund_upper"):
            pd.testing.assert_frame_equal(slide.obsm[key], single.obsm[key])
    with pytest.raises(ValueError, match=r"`interval` must be a coverage level"):
        hd.tl.predict_many(slides, model, interval=2.0)
