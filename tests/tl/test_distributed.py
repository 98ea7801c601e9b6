import ctypes
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
import torch
import zarr
from distributed import Client, LocalCluster
from spatialdata import SpatialData
from spatialdata.models import Image2DModel
from spatialdata.transformations import get_transformation

import histodecon as hd
from histodecon.encoders._registry import _REGISTRY

BATCH = 16
N_SPOTS = 60
SMALL = {"hidden": (16, 16), "lr": 1e-2, "max_epochs": 5, "batch_size": 64, "patience": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def originals():
    """Four small slides and their embeddings by the single-process ``hd.tl.embed``."""
    slides = [hd.datasets.synthetic(n_spots=N_SPOTS, seed=i, sample=f"s{i}", counts=False) for i in range(4)]
    reference = [fresh(slide) for slide in slides]
    hd.tl.embed(reference, ["handcrafted"], batch_size=BATCH)
    return slides, [table(slide).obsm["X_handcrafted"] for slide in reference]


def fresh(slide):
    """The slide with a copy of its table (images and shapes shared), so that tests do not see each other's results."""
    return SpatialData(images=dict(slide.images), shapes=dict(slide.shapes), tables={"table": table(slide).copy()})


def table(slide):
    return slide.tables["table"]


def inverted_image(slide):
    """The slide with a copy of its table and its image's pixels inverted: the same spots on another image."""
    (key,) = slide.images
    element = slide.images[key]
    image = Image2DModel.parse(
        255 - element.data, dims=("c", "y", "x"), transformations=get_transformation(element, get_all=True)
    )
    return SpatialData(images={key: image}, shapes=dict(slide.shapes), tables={"table": table(slide).copy()})


def counting_handcrafted(calls):
    """The handcrafted encoder, appending the size of every batch it embeds to ``calls``."""
    base = hd.encoders.get("handcrafted")

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = base.build()

        def forward(self, x):
            calls.append(len(x))
            return self.inner(x)

    return dataclasses.replace(base, name="counting", build=Counting)


def dying_handcrafted(marker, log):
    """The handcrafted encoder, whose worker process dies on its second batch unless ``marker`` exists.

    The first worker to reach its second batch creates ``marker`` and exits mid-slide; every
    embedded batch is logged as ``<pid> <size>`` to ``log``. Defined in a function, so that
    cloudpickle sends it by value to the workers, which cannot import this test module.
    """
    base = hd.encoders.get("handcrafted")

    class DiesOnce(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = base.build()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2 and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            out = self.inner(x)
            with open(log, "a") as file:
                file.write(f"{os.getpid()} {len(x)}\n")
            return out

    return dataclasses.replace(base, name="dying", build=DiesOnce)


def test_local_run_matches_embed_and_a_rerun_reads_the_stores(originals, tmp_path, monkeypatch):
    slides, reference = originals
    calls = []
    monkeypatch.setitem(_REGISTRY, "counting", counting_handcrafted(calls))
    first = [fresh(slide) for slide in slides[:2]]
    hd.tl.embed_many(first, ["counting"], stores=tmp_path, batch_size=BATCH)

    assert calls == [BATCH, BATCH, BATCH, N_SPOTS - 3 * BATCH] * 2
    for slide, expected in zip(first, reference, strict=False):
        np.testing.assert_array_equal(table(slide).obsm["X_counting"], expected)
    record = table(first[1]).uns["histodecon"]["embeddings"]["counting"]
    (store_s1,) = tmp_path.glob("s1-*.zarr")  # the sample and a fingerprint of the spots
    assert record["store"] == os.fspath(store_s1) and record["batch_size"] == BATCH
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["s0", "s1"]

    calls.clear()
    again = [fresh(slide) for slide in slides[:2]]
    hd.tl.embed_many(again, ["counting"], stores=tmp_path, batch_size=BATCH)
    assert calls == []  # every slide read back from its store
    for slide, expected in zip(again, reference, strict=False):
        np.testing.assert_array_equal(table(slide).obsm["X_counting"], expected)


def test_failed_slide_is_reported_after_the_others_are_written(originals, tmp_path, monkeypatch):
    slides, reference = originals
    embed_task = hd.tl._distributed.embed_task

    def fail_on_s1(slide, *args, **kwargs):
        if table(slide).obs["sample"].iloc[0] == "s1":
            raise ValueError("the image of s1 cannot be read")
        return embed_task(slide, *args, **kwargs)

    monkeypatch.setattr(hd.tl._distributed, "embed_task", fail_on_s1)
    pair = [fresh(slide) for slide in slides[:2]]
    with pytest.raises(RuntimeError, match=r"1 of 2 slides failed(.|\n)*slide 1: ValueError: the image of s1"):
        hd.tl.embed_many(pair, ["handcrafted"], stores=tmp_path, batch_size=BATCH)
    np.testing.assert_array_equal(table(pair[0]).obsm["X_handcrafted"], reference[0])
    assert "X_handcrafted" not in table(pair[1]).obsm


def test_another_slide_with_the_same_spots_gets_a_store_of_its_own(originals, tmp_path):
    slides, reference = originals
    hd.tl.embed_many([fresh(slides[1])], ["handcrafted"], stores=tmp_path, batch_size=BATCH)
    other = inverted_image(slides[1])  # the same sample, spot names and coordinates; other pixels
    hd.tl.embed_many([other], ["handcrafted"], stores=tmp_path, batch_size=BATCH)
    expected = inverted_image(slides[1])
    hd.tl.embed(expected, ["handcrafted"], batch_size=BATCH)
    np.testing.assert_array_equal(table(other).obsm["X_handcrafted"], table(expected).obsm["X_handcrafted"])
    assert len(list(tmp_path.glob("s1-*.zarr"))) == 2


def test_bad_calls_are_refused_before_any_work(originals, tmp_path):
    slides, _ = originals
    done = fresh(slides[0])
    table(done).obsm["X_handcrafted"] = np.zeros((N_SPOTS, 3), np.float32)
    with pytest.raises(KeyError, match=r"X_handcrafted.*overwrite=True"):
        hd.tl.embed_many([fresh(slides[1]), done], ["handcrafted"], stores=tmp_path / "a")
    with pytest.raises(
        ValueError, match=r"same samples, spots and pixels under them \(\['s0-\w+-\w+'\]\), so they would share"
    ):
        hd.tl.embed_many([fresh(slides[0]), fresh(slides[0])], ["handcrafted"], stores=tmp_path / "b")
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        hd.tl.embed_many([fresh(slides[0])], ["handcrafted"], stores=tmp_path / "c", batch_size=0)
    with pytest.raises(TypeError, match="AbundanceRegressor or the path of a saved one"):
        hd.tl.predict_many([table(slides[0])], model={"not": "a model"})
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def embedded_tables(originals):
    """The tables of the four slides with their handcrafted embeddings, and a regressor fitted on two."""
    slides, reference = originals
    tables = [table(slide).copy() for slide in slides]
    for adata, embedding in zip(tables, reference, strict=True):
        adata.obsm["X_handcrafted"] = embedding
    return tables, hd.tl.fit(tables[:2], features=["handcrafted"], **SMALL)


def test_predict_many_locally_matches_predict_from_object_and_file(embedded_tables, tmp_path):
    tables, model = embedded_tables
    model.save(tmp_path / "model")
    expected = [hd.tl.predict(adata, model, copy=True).obsm["pred_abund"] for adata in tables]

    from_object = [adata.copy() for adata in tables]
    hd.tl.predict_many(from_object, model)
    from_file = [adata.copy() for adata in tables]
    hd.tl.predict_many(from_file, tmp_path / "model", key_added="pred")
    for a, b, truth in zip(from_object, from_file, expected, strict=True):
        pd.testing.assert_frame_equal(a.obsm["pred_abund"], truth)
        pd.testing.assert_frame_equal(b.obsm["pred"], truth)
    assert b.uns["histodecon"]["predictions"]["pred"]["features"] == ["handcrafted"]


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow  # worker processes import histodecon, twice for the killed one: 30-60 s on 2 shared cores
@pytest.mark.filterwarnings("ignore:Sending large graph")  # the in-memory slides, on purpose
def test_cluster_survives_a_killed_worker_and_matches_one_process(originals, client, tmp_path, monkeypatch):
    slides, reference = originals
    marker, log = tmp_path / "killed", tmp_path / "batches.log"
    monkeypatch.setitem(_REGISTRY, "dying", dying_handcrafted(os.fspath(marker), os.fspath(log)))
    # Two slides in memory, two read lazily from zarr: those ship only their task graphs.
    for slide in slides[2:]:
        slide.write(tmp_path / f"{table(slide).obs['sample'].iloc[0]}.sdata.zarr")
    backed = [sd.read_zarr(tmp_path / f"s{i}.sdata.zarr") for i in (2, 3)]
    run = [fresh(slide) for slide in slides[:2]] + backed

    hd.tl.embed_many(run, ["dying"], stores=tmp_path / "stores", client=client, batch_size=BATCH)

    assert marker.exists()  # a worker did die mid-slide
    for slide, expected in zip(run, reference, strict=True):
        np.testing.assert_array_equal(table(slide).obsm["X_dying"], expected)
    batches = [line.split() for line in log.read_text().splitlines()]
    assert sum(int(size) for _, size in batches) == 4 * N_SPOTS  # no batch embedded twice, none lost
    assert len({pid for pid, _ in batches}) >= 2
    for i in range(4):
        (store,) = (tmp_path / "stores").glob(f"s{i}-*.zarr")
        assert zarr.open_group(store, mode="r")["dying/done"][:].all()


@pytest.mark.slow  # starts the cluster when run alone
def test_cluster_predict_many_matches_predict(embedded_tables, client, tmp_path):
    tables, model = embedded_tables
    model.save(tmp_path / "model")
    expected = [hd.tl.predict(adata, model, copy=True).obsm["pred_abund"] for adata in tables]
    from_object = [adata.copy() for adata in tables]
    hd.tl.predict_many(from_object, model, client=client)
    from_file = [adata.copy() for adata in tables]
    hd.tl.predict_many(from_file, tmp_path / "model", client=client)
    for a, b, truth in zip(from_object, from_file, expected, strict=True):
        pd.testing.assert_frame_equal(a.obsm["pred_abund"], truth)
        pd.testing.assert_frame_equal(b.obsm["pred_abund"], truth)


#: Run like a dask worker (the nanny's trim setting): is an 8 MiB buffer mapped on its own, and
#: are the heap pages of a freed one handed back to the system, before and after the tuning?
_MALLOC_PROBE = """
import ctypes
import numpy as np
from histodecon.tl._worker import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped_by_allocation():
    before = libc.mallinfo2().hblkhd
    buffer = np.ones(2**20)
    return libc.mallinfo2().hblkhd - before >= buffer.nbytes

def heap_trimmed_after_free():
    buffer = np.ones(2**20)
    grown = libc.mallinfo2().arena
    del buffer
    return grown - libc.mallinfo2().arena >= 2**23

print(mapped_by_allocation())
tune_malloc()
print(mapped_by_allocation(), heap_trimmed_after_free())
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_worker_keeps_batch_buffers_in_its_heap():
    env = os.environ | {"MALLOC_TRIM_THRESHOLD_": "65536"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    result = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False", "False"]


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("missing", FileNotFoundError, r"model\.safetensors not found; a saved model is"),
        ("truncated", ValueError, r"model\.safetensors"),
    ],
)
def test_predict_many_checks_a_saved_model_once_before_any_task(
    embedded_tables, tmp_path, monkeypatch, damage, error, match
):
    tables, model = embedded_tables
    model.save(tmp_path / "model")
    tensors = tmp_path / "model.safetensors"
    if damage == "missing":
        tensors.unlink()
    else:
        tensors.write_bytes(tensors.read_bytes()[:-100])
    sent = []
    monkeypatch.setattr(hd.tl._distributed, "_run", lambda *args, **kwargs: sent.append(args) or iter(()))
    targets = [adata.copy() for adata in tables]
    with pytest.raises(error, match=match):
        hd.tl.predict_many(targets, tmp_path / "model")
    assert not sent
    assert not any("pred_abund" in adata.obsm for adata in targets)
