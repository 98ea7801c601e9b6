"""The cost records of fit, cross_validate and embed: present, plain numbers, consistent with a clock around the call."""

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
import torch
from anndata import AnnData

import histodecon as hd
from histodecon._constants import Key
from histodecon._cost import measure_cost

pytestmark = pytest.mark.filterwarnings("ignore:The regressor.s predictions on the validation spots look collapsed")
TRAINING = {"hidden": (16,), "max_epochs": 3, "patience": 2, "batch_size": 256}
N_SPOTS, WIDTH = 2000, 512


@pytest.fixture(scope="module")
def training_slides():
    """Three slides of random 512-d embeddings (4 MB each) and three abundances they determine."""
    rng = np.random.default_rng(0)
    slides = []
    for i in range(3):
        names = [f"s{i}_{j}" for j in range(N_SPOTS)]
        x = rng.normal(size=(N_SPOTS, WIDTH)).astype(np.float32)
        abund = pd.DataFrame(np.exp(x[:, :3]), index=names, columns=["a", "b", "c"])
        obs = pd.DataFrame({Key.obs.sample: f"s{i}", Key.obs.in_tissue: True}, index=names)
        slides.append(AnnData(obs=obs, obsm={Key.obsm.embedding("f"): x, Key.obsm.abund: abund}))
    return slides


def data_mb(slides):
    return sum(slide.obsm[Key.obsm.embedding("f")].nbytes for slide in slides) / 2**20


def test_measure_cost_sees_an_allocation_and_the_time():
    with measure_cost("cpu") as cost:
        block = np.ones(80 * 2**20, dtype=np.uint8)  # touched: resident
    assert block.sum() == 80 * 2**20
    assert cost.peak_host_mb > 80
    assert cost.seconds > 0
    assert cost.peak_gpu_mb is None
    assert set(cost.record()) == {"seconds", "peak_host_mb"}


def test_fit_records_its_cost_and_it_survives_the_model_file(training_slides, tmp_path):
    start = time.perf_counter()
    model = hd.tl.fit(training_slides, features=["f"], device="cpu", **TRAINING)
    elapsed = time.perf_counter() - start
    cost = model.provenance["cost"]
    assert set(cost) == {"fit_seconds", "epochs", "peak_host_mb"}  # no GPU figure on CPU
    assert 0 < cost["fit_seconds"] <= elapsed
    assert type(cost["epochs"]) is int
    assert cost["epochs"] == len(model.history) + model.best_epoch >= 2
    assert cost["peak_host_mb"] > data_mb(training_slides)

    model.save(tmp_path / "model")
    assert hd.tl.AbundanceRegressor.load(tmp_path / "model").provenance["cost"] == cost


def test_cross_validate_records_the_cost_of_every_fold(training_slides):
    cv = hd.tl.cross_validate(training_slides, features="f", device="cpu", baselines=("ridge",), **TRAINING)
    summary = cv.summary
    assert {"fit_seconds", "epochs", "peak_host_mb"} <= set(summary.columns)
    assert "peak_gpu_mb" not in summary.columns
    assert (summary["fit_seconds"] > 0).all()
    assert (summary["peak_host_mb"] > data_mb(training_slides[:2])).all()
    mlp = summary[summary["model"] == "mlp"]
    assert len(mlp) == 3
    assert (mlp["epochs"] >= 2).all()
    assert summary.loc[summary["model"] == "ridge", "epochs"].isna().all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_cuda_records_peak_gpu_memory(training_slides):
    model = hd.tl.fit(training_slides, features=["f"], device="cuda", **TRAINING)
    assert model.provenance["cost"]["peak_gpu_mb"] > data_mb(training_slides)


def test_embed_records_patches_per_second_and_memory_and_the_slide_still_writes(tmp_path):
    sdata = hd.datasets.synthetic(n_spots=40, seed=0, counts=False)
    image_mb = next(iter(sdata.images.values())).nbytes / 2**20  # a single-scale image
    start = time.perf_counter()
    hd.tl.embed(sdata, ["handcrafted"], device="cpu")
    elapsed = time.perf_counter() - start
    cost = sdata.tables[Key.tables.table].uns[Key.uns.root][Key.uns.embeddings]["handcrafted"]["cost"]
    assert set(cost) == {"patches", "patches_per_second", "seconds", "peak_host_mb"}
    assert cost["patches"] == 40
    assert 0 < cost["seconds"] <= elapsed
    # the rate is the count over the time, both as recorded (rounded to 2 decimals)
    assert cost["patches_per_second"] == pytest.approx(cost["patches"] / cost["seconds"], rel=0.02, abs=0.01)
    assert cost["peak_host_mb"] > image_mb

    table = sdata.tables[Key.tables.table]
    table.write_h5ad(tmp_path / "table.h5ad")
    back = ad.read_h5ad(tmp_path / "table.h5ad").uns[Key.uns.root][Key.uns.embeddings]["handcrafted"]["cost"]
    assert {key: float(value) for key, value in back.items()} == pytest.approx(cost)
    sdata.write(tmp_path / "slide.zarr")
    read = sd.read_zarr(tmp_path / "slide.zarr").tables[Key.tables.table]
    back = read.uns[Key.uns.root][Key.uns.embeddings]["handcrafted"]["cost"]
    assert {key: float(value) for key, value in back.items()} == pytest.approx(cost)
