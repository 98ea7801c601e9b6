import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import histodecon as hd
from histodecon.encoders import _registry
from histodecon.io._build import build_sdata

PATCH = 16


def make_slide(n_spots: int = 23, seed: int = 0, sample: str = "S"):
    """A small textured slide whose spot patches differ from each other."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (3, 120, 200), dtype=np.uint8)
    centres = np.column_stack([rng.uniform(0, 200, n_spots), rng.uniform(0, 120, n_spots)])
    ids = [f"{sample}_{i}" for i in range(n_spots)]
    return build_sdata(image, centres, sample=sample, mpp=1.0, spot_diameter_px=10.0, spot_ids=ids)


class MeanRGB(nn.Module):
    """Mean of each channel in [0, 1]; counts its calls and can fail after ``fail_after`` of them."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.calls, self.fail_after = 0, fail_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += 1
        return x.mean((2, 3))


@pytest.fixture
def mean_rgb(monkeypatch):
    """Register ``mean_rgb`` (16 px native patches) in a copy of the registry; returns its module."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    module = MeanRGB()
    register_mean_rgb(module)
    return module


def register_mean_rgb(module: nn.Module) -> None:
    entry = hd.encoders.Encoder(
        name="mean_rgb", dim=3, build=lambda: module, input_size=PATCH, patch_size=PATCH, mpp=None, mean=None, std=None
    )
    hd.encoders.register(entry, overwrite=True)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hd.settings, "progress", False)


def test_custom_encoder_gives_the_mean_colour_of_each_spot_patch(mean_rgb):
    sdata = make_slide()
    hd.tl.embed(sdata, models=["mean_rgb"], batch_size=5, device="cpu")
    table = sdata.tables["table"]
    expected = hd.pp.spot_patches(sdata, size=PATCH)[:].mean(axis=(1, 2)) / 255
    np.testing.assert_allclose(table.obsm["X_mean_rgb"], expected, rtol=1e-6)
    assert table.obsm["X_mean_rgb"].dtype == np.float32
    assert mean_rgb.calls == 5  # ceil(23 / 5) batches


def test_handcrafted_shapes_and_provenance():
    sdata = make_slide()
    hd.tl.embed(sdata, device="cpu")
    table = sdata.tables["table"]
    entry = hd.encoders.get("handcrafted")
    assert table.obsm["X_handcrafted"].shape == (23, entry.dim)
    assert table.obsm["X_handcrafted"].dtype == np.float32
    assert np.isfinite(table.obsm["X_handcrafted"]).all()
    record = table.uns["histodecon"]["embeddings"]["handcrafted"]
    assert {k: record[k] for k in ["model", "dim", "patch_size", "input_size", "mpp", "batch_size", "device"]} == {
        "model": "handcrafted",
        "dim": entry.dim,
        "patch_size": entry.patch_size,
        "input_size": entry.input_size,
        "mpp": entry.mpp,
        "batch_size": 32,
        "device": "cpu",
    }
    assert record["weights"] is None and record["weights_sha256"] is None and record["autocast"] is None
    assert record["versions"]["torch"] == torch.__version__ and record["versions"]["histodecon"]
    assert record["date"]


def test_batch_size_does_not_change_a_bit():
    results = []
    for batch_size in (1, 4, 64):
        sdata = make_slide(n_spots=9)
        hd.tl.embed(sdata, batch_size=batch_size, num_workers=2, device="cpu")
        results.append(sdata.tables["table"].obsm["X_handcrafted"])
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


def test_existing_results_are_refused_before_anything_is_computed(mean_rgb):
    sdata = make_slide()
    hd.tl.embed(sdata, models="mean_rgb", device="cpu")
    table = sdata.tables["table"]
    before, calls = table.obsm["X_mean_rgb"].copy(), mean_rgb.calls
    with pytest.raises(KeyError, match="overwrite=True"):
        hd.tl.embed(sdata, models=["handcrafted", "mean_rgb"], device="cpu")
    assert mean_rgb.calls == calls and "X_handcrafted" not in table.obsm
    assert np.array_equal(table.obsm["X_mean_rgb"], before)
    hd.tl.embed(sdata, models=["handcrafted", "mean_rgb"], device="cpu", overwrite=True)
    assert "X_handcrafted" in table.obsm


def test_a_failing_model_writes_nothing(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    register_mean_rgb(MeanRGB(fail_after=1))
    sdata = make_slide()
    with pytest.raises(RuntimeError, match="interrupted"):
        hd.tl.embed(sdata, models=["handcrafted", "mean_rgb"], batch_size=5, device="cpu")
    assert "X_handcrafted" not in sdata.tables["table"].obsm
    assert "histodecon" not in sdata.tables["table"].uns or "embeddings" not in sdata.tables["table"].uns["histodecon"]


def test_a_list_of_slides_is_embedded_slide_by_slide(mean_rgb, tmp_path):
    slides = [make_slide(seed=1, sample="A"), make_slide(n_spots=9, seed=2, sample="B")]
    hd.tl.embed(slides, models="mean_rgb", device="cpu", store=[tmp_path / "a.zarr", tmp_path / "b.zarr"])
    for slide in slides:
        expected = hd.pp.spot_patches(slide, size=PATCH)[:].mean(axis=(1, 2)) / 255
        np.testing.assert_allclose(slide.tables["table"].obsm["X_mean_rgb"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="one per slide"):
        hd.tl.embed(slides, models="mean_rgb", store=tmp_path / "a.zarr", overwrite=True)


def test_store_resumes_an_interrupted_run_with_identical_results(monkeypatch, tmp_path):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    one_shot = make_slide()
    register_mean_rgb(MeanRGB())
    hd.tl.embed(one_shot, models="mean_rgb", batch_size=4, device="cpu")

    store = tmp_path / "emb.zarr"
    sdata = make_slide()
    register_mean_rgb(MeanRGB(fail_after=3))
    with pytest.raises(RuntimeError, match="interrupted"):
        hd.tl.embed(sdata, models="mean_rgb", batch_size=4, device="cpu", store=store)
    assert zarr.open_group(store)["mean_rgb"]["done"][:].sum() == 12
    resumed = MeanRGB()
    register_mean_rgb(resumed)
    hd.tl.embed(sdata, models="mean_rgb", batch_size=4, device="cpu", store=store)
    assert resumed.calls == 3  # the 11 spots left, in batches of 4
    assert np.array_equal(sdata.tables["table"].obsm["X_mean_rgb"], one_shot.tables["table"].obsm["X_mean_rgb"])


def test_store_of_other_spots_or_models_is_refused(mean_rgb, tmp_path):
    store = tmp_path / "emb.zarr"
    hd.tl.embed(make_slide(), models="mean_rgb", device="cpu", store=store)
    with pytest.raises(ValueError, match="n_obs: store 23 vs now 9"):
        hd.tl.embed(make_slide(n_spots=9), models="mean_rgb", device="cpu", store=store)
    hd.encoders.register(
        hd.encoders.Encoder(
            name="mean_rgb", dim=3, build=MeanRGB, patch_size=8, input_size=8, mpp=None, mean=None, std=None
        ),
        overwrite=True,
    )
    with pytest.raises(ValueError, match="patch_size: store 16 vs now 8"):
        hd.tl.embed(make_slide(), models="mean_rgb", device="cpu", store=store)


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        ("anndata", {}, TypeError, "needs the SpatialData"),
        ("slide", {"models": ["no_such_model"]}, KeyError, "Unknown encoder 'no_such_model'"),
        ("slide", {"models": ["handcrafted", "handcrafted"]}, ValueError, "twice"),
        ("slide", {"models": []}, TypeError, "non-empty"),
        ("slide", {"weights": {"uni": "x.bin"}}, ValueError, r"not in `models`"),
        ("slide", {"weights": "x.bin"}, TypeError, "map model names"),
        ("slide", {"batch_size": 0}, ValueError, "batch_size"),
        ("slide", {"num_workers": 0}, ValueError, "num_workers"),
        ("slide", {"table_key": "nope"}, KeyError, "no table 'nope'"),
        ([], {}, TypeError, "non-empty list"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(data, kwargs, error, match):
    slide = make_slide()
    data = {"anndata": slide.tables["table"], "slide": slide}.get(data, data) if isinstance(data, str) else data
    with pytest.raises(error, match=match):
        hd.tl.embed(data, device="cpu", **kwargs)
    assert "X_handcrafted" not in slide.tables["table"].obsm


KILLED_RUN = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    import histodecon as hd
    from test_embed import make_slide, register_mean_rgb, MeanRGB

    class Slow(MeanRGB):
        def forward(self, x):
            time.sleep(0.3)
            return super().forward(x)

    hd.settings.progress = False
    register_mean_rgb(Slow())
    hd.tl.embed(make_slide(), models="mean_rgb", batch_size=2, device="cpu", store={store!r})
    """
)


@pytest.mark.slow  # a fresh interpreter imports histodecon: 20-60 s on a busy 2-core machine
def test_a_killed_run_resumes_from_its_store(mean_rgb, tmp_path):
    store = tmp_path / "emb.zarr"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), store=str(store))
    process = subprocess.Popen([sys.executable, "-c", script], env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            done = zarr.open_group(store, mode="r")["mean_rgb"]["done"][:].sum() if (store / "mean_rgb").exists() else 0
            if done >= 4:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    done = zarr.open_group(store, mode="r")["mean_rgb"]["done"][:].sum()
    assert 4 <= done < 23, "the run was not killed mid-way"
    sdata = make_slide()
    hd.tl.embed(sdata, models="mean_rgb", batch_size=2, device="cpu", store=store)
    assert mean_rgb.calls == np.ceil((23 - done) / 2)
    one_shot = make_slide()
    hd.tl.embed(one_shot, models="mean_rgb", batch_size=2, device="cpu")
    assert np.array_equal(sdata.tables["table"].obsm["X_mean_rgb"], one_shot.tables["table"].obsm["X_mean_rgb"])
