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
from spatialdata.models import Image2DModel
from spatialdata.transformations import get_transformation
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
    with pytest.raises(ValueError, match=r"another slide.*number of spots \(store 23, now 9\); spot names"):
        hd.tl.embed(make_slide(n_spots=9), models="mean_rgb", device="cpu", store=store)
    hd.encoders.register(
        hd.encoders.Encoder(
            name="mean_rgb", dim=3, build=MeanRGB, patch_size=8, input_size=8, mpp=None, mean=None, std=None
        ),
        overwrite=True,
    )
    with pytest.raises(ValueError, match=r"patch_size \(store 16, now 8\)"):
        hd.tl.embed(make_slide(), models="mean_rgb", device="cpu", store=store)


def relabelled_slide(seed: int, names_of: int = 0):
    """A slide of ``seed`` whose spots carry the names and sample of the slide of seed ``names_of``."""
    sdata = make_slide(seed=seed)
    sdata.tables["table"].obs_names = make_slide(seed=names_of).tables["table"].obs_names
    return sdata


def test_store_of_another_slide_with_the_same_spot_names_is_refused(mean_rgb, tmp_path):
    store = tmp_path / "emb.zarr"
    hd.tl.embed(make_slide(seed=0), models="mean_rgb", device="cpu", store=store)
    other = relabelled_slide(seed=1)  # same sample and spot names (as legacy ST ids), other spots and image
    assert list(other.tables["table"].obs_names) == list(make_slide(seed=0).tables["table"].obs_names)
    calls = mean_rgb.calls
    with pytest.raises(ValueError, match=r"another slide.*spot coordinates .*image pixels under 16 spots"):
        hd.tl.embed(other, models="mean_rgb", device="cpu", store=store)
    assert "X_mean_rgb" not in other.tables["table"].obsm and mean_rgb.calls == calls


def test_store_of_the_same_spots_on_another_image_is_refused(mean_rgb, tmp_path):
    store = tmp_path / "emb.zarr"
    hd.tl.embed(make_slide(seed=0), models="mean_rgb", device="cpu", store=store)
    other = make_slide(seed=0)
    (key,) = other.images
    element = other.images[key]
    transformations = get_transformation(element, get_all=True)
    other.images[key] = Image2DModel.parse(255 - element.data, dims=("c", "y", "x"), transformations=transformations)
    with pytest.raises(ValueError, match=r"what differs: image pixels under 16 spots \(store '\w{12}', now"):
        hd.tl.embed(other, models="mean_rgb", device="cpu", store=store)


@pytest.mark.parametrize("damage", ["deleted", "corrupted", "garbled"])
def test_a_lost_or_corrupted_chunk_is_named_and_recomputed(mean_rgb, tmp_path, damage):
    store = tmp_path / "emb.zarr"
    one_shot = make_slide()
    hd.tl.embed(one_shot, models="mean_rgb", batch_size=5, device="cpu", store=store)
    chunk = store / "mean_rgb" / "embedding" / "c" / "1" / "0"  # spots 5-9
    if damage == "deleted":
        chunk.unlink()
    elif damage == "corrupted":  # not zstd at all: decompression fails
        chunk.write_bytes(b"not a zstd frame")
    else:  # valid zstd header, damaged payload: decompresses to wrong values
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
        chunk.write_bytes(bytes(data))

    resumed = make_slide()
    calls = mean_rgb.calls
    named = r"emb\.zarr' lost the 'mean_rgb' embeddings of [1-5] spots marked done \(e\.g\. \[.*'S_9'\]\)"
    with pytest.warns(UserWarning, match=named):  # garbled: only the rows whose bytes changed
        hd.tl.embed(resumed, models="mean_rgb", batch_size=5, device="cpu", store=store)
    assert mean_rgb.calls == calls + 1  # only the lost batch
    expected = one_shot.tables["table"].obsm["X_mean_rgb"]
    np.testing.assert_array_equal(resumed.tables["table"].obsm["X_mean_rgb"], expected)
    assert not (resumed.tables["table"].obsm["X_mean_rgb"] == 0).all(axis=1).any()

    again = make_slide()  # the store is whole again: nothing is recomputed, nothing warned
    calls = mean_rgb.calls
    hd.tl.embed(again, models="mean_rgb", batch_size=5, device="cpu", store=store)
    assert mean_rgb.calls == calls
    np.testing.assert_array_equal(again.tables["table"].obsm["X_mean_rgb"], expected)


def test_a_corrupted_done_mask_is_recomputed(mean_rgb, tmp_path):
    store = tmp_path / "emb.zarr"
    one_shot = make_slide()
    hd.tl.embed(one_shot, models="mean_rgb", batch_size=5, device="cpu", store=store)
    (store / "mean_rgb" / "done" / "c" / "2").write_bytes(b"garbage")
    resumed = make_slide()
    with pytest.warns(UserWarning, match=r"lost the 'mean_rgb' embeddings of 5 spots .*\['S_10'"):
        hd.tl.embed(resumed, models="mean_rgb", batch_size=5, device="cpu", store=store)
    np.testing.assert_array_equal(
        resumed.tables["table"].obsm["X_mean_rgb"], one_shot.tables["table"].obsm["X_mean_rgb"]
    )


def test_every_slide_is_checked_before_anything_is_written(mean_rgb, tmp_path):
    slide = make_slide()
    with pytest.raises(ValueError, match=r"same slide is listed twice .*positions 0 and 1"):
        hd.tl.embed([slide, slide], models="mean_rgb", device="cpu")
    good, repeated = make_slide(seed=1), make_slide(seed=2)
    repeated.tables["table"].obs_names = ["S_0"] * 23
    with pytest.raises(ValueError, match=r"spot names \(`obs_names`\) of slide 1 are not unique; repeated: \['S_0'\]"):
        hd.tl.embed([good, repeated], models="mean_rgb", device="cpu", store=[tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="same path"):
        hd.tl.embed([good, make_slide(seed=3)], models="mean_rgb", device="cpu", store=[tmp_path / "a"] * 2)
    assert mean_rgb.calls == 0 and not any(tmp_path.iterdir())
    assert all("X_mean_rgb" not in s.tables["table"].obsm for s in (slide, good, repeated))


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
            started = (store / "mean_rgb" / "done" / "zarr.json").exists()  # the group is made before its arrays
            done = zarr.open_group(store, mode="r")["mean_rgb"]["done"][:].sum() if started else 0
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


FIELD = 8


@pytest.fixture
def flat(monkeypatch):
    """Register ``flat``: the patch itself, resized to 8 px, flattened (c, y, x) in [0, 1]; its own field 8 px at 0.5."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    entry = hd.encoders.Encoder(
        name="flat",
        dim=3 * FIELD * FIELD,
        build=nn.Flatten,
        input_size=FIELD,
        patch_size=FIELD,
        mpp=0.5,
        mean=None,
        std=None,
    )
    return hd.encoders.register(entry)


def field_slide():
    """A 1 um/px textured slide whose spots lie well inside the image, at non-integer centres."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (3, 60, 80), dtype=np.uint8)
    centres = np.array([[20.3, 15.6], [40.7, 30.2], [61.1, 44.9]])
    return build_sdata(image, centres, sample="F", mpp=1.0, spot_diameter_px=10.0), image, centres


def test_native_pixels_are_the_direct_crop_of_the_image(flat):
    sdata, image, centres = field_slide()
    hd.tl.embed(sdata, models="flat", mpp=None, device="cpu")
    table = sdata.tables["table"]
    for row, (x, y) in zip(table.obsm["X_flat"], centres, strict=True):
        x0, y0 = round(x - FIELD / 2), round(y - FIELD / 2)
        np.testing.assert_allclose(row, image[:, y0 : y0 + FIELD, x0 : x0 + FIELD].ravel() / 255, atol=1e-6)
    record = table.uns["histodecon"]["embeddings"]["flat"]
    assert (record["patch_size"], record["mpp"], record["input_size"]) == (FIELD, None, FIELD)
    assert hd.encoders.get("flat") == flat  # the registry entry is left as it is


def test_mpp_and_patch_size_choose_the_field(flat):
    sdata, image, _ = field_slide()
    table = sdata.tables["table"]
    embedded = {}
    for patch_size, mpp in ((FIELD, 1.0), (FIELD, 0.5), ("encoder", "encoder"), (2 * FIELD, 1.0)):
        hd.tl.embed(sdata, models="flat", patch_size=patch_size, mpp=mpp, device="cpu", overwrite=True)
        record = table.uns["histodecon"]["embeddings"]["flat"]
        size, field_mpp = (FIELD, 0.5) if patch_size == "encoder" else (patch_size, mpp)
        assert (record["patch_size"], record["mpp"]) == (size, field_mpp)
        patches = hd.pp.spot_patches(sdata, size=size, mpp=field_mpp)[:]
        if size == FIELD:
            np.testing.assert_allclose(
                table.obsm["X_flat"], patches.transpose(0, 3, 1, 2).reshape(3, -1) / 255, atol=1e-6
            )
        embedded[patch_size, mpp] = table.obsm["X_flat"].copy()
    # 8 um at 1 um/px and 4 um at 0.5 um/px are other fields; the encoder's own is 0.5 um/px
    assert np.abs(embedded[FIELD, 1.0] - embedded[FIELD, 0.5]).mean() > 0.05
    np.testing.assert_array_equal(embedded["encoder", "encoder"], embedded[FIELD, 0.5])
    # 16 px at 1 um/px, resized to the 8 px input: a 16 um field, not the 8 um one
    assert np.abs(embedded[2 * FIELD, 1.0] - embedded[FIELD, 1.0]).mean() > 0.05


@pytest.mark.parametrize("spot_um", [55.0, 100.0])
def test_handcrafted_reads_a_field_of_spot_diameters(spot_um):
    entry = hd.encoders.get("handcrafted")
    sdata = hd.datasets.synthetic(n_spots=12, seed=0, spot_diameter_um=spot_um)
    table = sdata.tables["table"]
    hd.tl.embed(sdata, device="cpu")
    record = table.uns["histodecon"]["embeddings"]["handcrafted"]
    field_mpp = 2.24 * spot_um / 112  # 1.1 um/px on Visium's 55 um spots, 2.0 on legacy ST's 100 um
    assert (record["field_spots"], record["patch_size"]) == (entry.field_spots, 112) == (2.24, 112)
    assert record["patch_mpp"] == {"synthetic": pytest.approx(field_mpp)}
    by_spots = table.obsm["X_handcrafted"].copy()
    # the same patches as the fixed field of that um/px ...
    hd.tl.embed(sdata, device="cpu", mpp=field_mpp, overwrite=True)
    np.testing.assert_allclose(table.obsm["X_handcrafted"], by_spots, rtol=1e-5, atol=1e-6)
    # ... and an explicit mpp overrides the spot-relative field
    hd.tl.embed(sdata, device="cpu", mpp=1.0, overwrite=True)
    record = table.uns["histodecon"]["embeddings"]["handcrafted"]
    assert (record["field_spots"], record["mpp"], record["patch_mpp"]) == (None, 1.0, {"synthetic": 1.0})
    assert np.abs(table.obsm["X_handcrafted"] - by_spots).mean() > 1e-3


def test_the_field_record_is_written_by_spatialdata_and_h5ad(flat, tmp_path):
    from anndata import read_h5ad
    from spatialdata import read_zarr

    sdata, _, _ = field_slide()
    hd.tl.embed(sdata, models="flat", mpp=None, patch_size=6, device="cpu")
    sdata.write(tmp_path / "slide.zarr")
    sdata.tables["table"].write_h5ad(tmp_path / "table.h5ad")
    for table in (read_zarr(tmp_path / "slide.zarr").tables["table"], read_h5ad(tmp_path / "table.h5ad")):
        record = table.uns["histodecon"]["embeddings"]["flat"]
        assert record["mpp"] is None and record["patch_size"] == 6
        assert record["field_spots"] is None and record["patch_mpp"] == {"F": 1.0}


def test_a_store_of_another_field_is_refused(flat, tmp_path):
    sdata, _, _ = field_slide()
    store = tmp_path / "emb.zarr"
    hd.tl.embed(sdata, models="flat", device="cpu", store=store)
    with pytest.raises(ValueError, match="patch_size"):
        hd.tl.embed(sdata, models="flat", patch_size=6, device="cpu", store=store, overwrite=True)


@pytest.mark.parametrize(
    ("field", "match"),
    [
        ({"patch_size": 0}, "`patch_size` must be a positive integer"),
        ({"patch_size": 22.5}, "`patch_size` must be a positive integer"),
        ({"mpp": -0.5}, "`mpp` must be a positive number"),
        ({"mpp": "native"}, "`mpp` must be a positive number"),
    ],
)
def test_a_bad_field_is_refused_before_anything_is_read(flat, field, match):
    sdata, _, _ = field_slide()
    with pytest.raises((ValueError, TypeError), match=match):
        hd.tl.embed(sdata, models="flat", device="cpu", **field)
    assert "X_flat" not in sdata.tables["table"].obsm


def test_embed_many_reads_the_same_field(flat, tmp_path):
    one, _, _ = field_slide()
    many, _, _ = field_slide()
    hd.tl.embed(one, models="flat", patch_size=6, mpp=None, device="cpu")
    hd.tl.embed_many([many], models="flat", patch_size=6, mpp=None, stores=tmp_path, device="cpu")
    tables = one.tables["table"], many.tables["table"]
    np.testing.assert_array_equal(tables[0].obsm["X_flat"], tables[1].obsm["X_flat"])
    for table in tables:
        record = table.uns["histodecon"]["embeddings"]["flat"]
        assert (record["patch_size"], record["mpp"]) == (6, None)
    assert hd.encoders.get("flat") == flat
    with pytest.raises(ValueError, match="`mpp` must be a positive number"):
        hd.tl.embed_many([many], models="flat", mpp=0, stores=tmp_path / "other", device="cpu", overwrite=True)
    assert not (tmp_path / "other").exists()


def test_embed_many_normalises_to_the_reference_like_embed(tmp_path):
    def slide(seed):
        return hd.datasets.synthetic(n_spots=30, seed=seed, sample=f"s{seed}", counts=False)

    reference = hd.pp.stain_reference(slide(1), method="reinhard")
    one, many, raw = slide(0), slide(0), slide(0)
    hd.tl.embed(one, stain_reference=reference)
    hd.tl.embed_many([many], stain_reference=reference, stores=tmp_path)
    hd.tl.embed(raw)
    tables = [sdata.tables["table"] for sdata in (one, many, raw)]
    np.testing.assert_array_equal(tables[0].obsm["X_handcrafted"], tables[1].obsm["X_handcrafted"])
    # mutation: embed_many not passing the reference to its tasks embeds the raw patches
    assert not np.allclose(tables[1].obsm["X_handcrafted"], tables[2].obsm["X_handcrafted"])
    records = [table.uns["histodecon"]["embeddings"]["handcrafted"]["stain_reference"] for table in tables]
    assert records[0] == records[1] == {"method": "reinhard", "mu": list(reference.mu), "sigma": list(reference.sigma)}
    assert records[2] is None
