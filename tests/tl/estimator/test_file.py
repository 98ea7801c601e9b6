"""Model files: the JSON schema and bounds, the tensor header check, the model card, the Hugging Face Hub."""

import hashlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file

import histodecon as hd
from histodecon.tl._estimator._file import record_checksum
from histodecon.tl._estimator._schema import MAX_LAYERS, MAX_PARAMETERS, MAX_WIDTH, READABLE

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = "my-lab/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = pd.DataFrame(np.exp(x[:, :3]), columns=["tumour", "T cells", "fibroblasts"])
    fitted = hd.tl.AbundanceRegressor(hidden=(16, 8), max_epochs=3, seed=0).fit(
        x, y, groups=np.repeat(["s1", "s2", "s3"], 40), feature_dims={"conch": 4, "uni": 2}
    )
    fitted.provenance["samples"] = ["s1", "s2", "s3"]
    return fitted


@pytest.fixture
def saved(model, tmp_path):
    model.save(tmp_path / "m")
    return tmp_path / "m.safetensors", tmp_path / "m.json"


def x_new(n=25):
    return np.random.default_rng(5).normal(size=(n, 6)).astype(np.float32)


def write_signed(json_path, record):
    """Write ``record`` with a valid ``record_sha256``, as someone forging a model file would."""
    record["record_sha256"] = record_checksum(record)
    json_path.write_text(json.dumps(record))


def forged(json_path, edit):
    record = json.loads(json_path.read_text())
    edit(record)
    write_signed(json_path, record)


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _hidden(widths):
    def edit(record):
        record["architecture"]["hidden"] = widths
        record["hyperparameters"]["hidden"] = widths

    return edit


# ---------------------------------------------------------------------------------------- the JSON schema
@pytest.mark.parametrize(
    ("edit", "field", "problem"),
    [
        (_hidden([1_000_000] * 7), "architecture.hidden[0]", rf"an integer in \[1, {MAX_WIDTH}\], got 1000000"),
        (_hidden([16, -8]), "architecture.hidden[1]", r"an integer in \[1, 65536\], got -8"),
        (_hidden([16, 0]), "architecture.hidden[1]", r"got 0"),
        (_hidden([8] * (MAX_LAYERS + 1)), "architecture.hidden", rf"1 to {MAX_LAYERS} entries, got 65"),
        (_hidden([]), "architecture.hidden", r"1 to 64 entries, got 0"),
        (_hidden([MAX_WIDTH] * 3), "architecture", rf"8,590,721,027 parameters, more than the {MAX_PARAMETERS:,}"),
        (_hidden("16, 8"), "architecture.hidden", r"a JSON list, got '16, 8' \(string\)"),
        (_set("architecture", "n_features", "6"), "architecture.n_features", r"an integer, got '6' \(string\)"),
        (_set("architecture", "n_features", 6.0), "architecture.n_features", r"an integer, got 6.0 \(number\)"),
        (_set("architecture", "n_outputs", True), "architecture.n_outputs", r"an integer, got True \(boolean\)"),
        (_hidden([16, True]), "architecture.hidden[1]", r"an integer, got True \(boolean\)"),
        (_set("architecture", "dropout", 0.1), "architecture.dropout", r"is not part of the format"),
        (_set("architecture", "activation", "ReLU"), "architecture.activation", r"is 'ReLU'"),
        (_set("architecture", "output", "exp"), "architecture.output", r"is 'exp'; .* \['softmax', 'softplus'\]"),
        (_set("features", 0, "dim", "4"), r"features[0].dim", r"an integer, got '4' \(string\)"),
        (_set("features", 0, "key", 4), r"features[0].key", r"a non-empty string .* got 4 \(integer\)"),
        (_set("features", 0, "extra", 1), r"features[0].extra", r"is not part of the format"),
        (_set("features", []), "features", r"1 to 64 entries, got 0"),
        (_set("cell_types", 1, 2), "cell_types[1]", r"a non-empty string .* got 2 \(integer\)"),
        (_set("cell_types", "tumour"), "cell_types", r"a JSON list, got 'tumour' \(string\)"),
        (_set("hyperparameters", "batch_size", "256"), "hyperparameters.batch_size", r"an integer, got '256'"),
        (_set("hyperparameters", "seed", False), "hyperparameters.seed", r"an integer, got False \(boolean\)"),
        (_set("hyperparameters", "lr", "0.001"), "hyperparameters.lr", r"a number, got '0.001' \(string\)"),
        (_set("hyperparameters", "lr", -1.0), "hyperparameters", r"invalid value .*`lr` must be > 0"),
        (_set("hyperparameters", "hidden", [16, 9]), "hyperparameters.hidden", r"is \[16, 9\] but"),
        (_set("history", "epoch", [1, 2]), "history", r"columns of different lengths \[2, \d+\]"),
        (_set("history", "val_loss", ["0.5"] * 3), r"history.val_loss[0]", r"a number, got '0.5'"),
        (_set("validation_scores", "cc", "0.9"), "validation_scores.cc", r"a number, got '0.9'"),
        (_set("best_epoch", -1), "best_epoch", r"an integer in \[0, 2147483648\], got -1"),
        (_set("best_epoch", "2"), "best_epoch", r"an integer, got '2'"),
        (_set("provenance", ["a"]), "provenance", r"a JSON object, got \['a'\] \(list\)"),
        (_set("tensors", "sha256", 12), "tensors.sha256", r"\(the checksum of the tensor file\) must be a SHA-256"),
        (_set("tensors", "sha256", "ab" * 31), "tensors.sha256", r"must be a SHA-256"),
        (lambda r: r.pop("history"), "history", r"is missing"),
        (lambda r: r["architecture"].pop("hidden"), "architecture.hidden", r"is missing"),
        (_set("pickle", "cos\nsystem\n"), "pickle", r"is not part of the format \(expected only \['record_sha256'"),
    ],
)
def test_record_fields_are_checked_by_exact_type_and_bound(saved, edit, field, problem):
    """Every forged record (its checksum recomputed) is refused, naming the file and the field."""
    _, json_path = saved
    forged(json_path, edit)
    with pytest.raises(ValueError, match="was not written by `AbundanceRegressor.save`") as error:
        hd.tl.AbundanceRegressor.load(json_path)
    message = str(error.value)
    assert message.startswith(f"{json_path}: field `{field}`")
    assert "was not written by `AbundanceRegressor.save`" in message
    assert re.search(problem, message), message


@pytest.mark.parametrize(
    ("version", "shown"), [(99, "version 99"), ("2", "version '2'"), (True, "version True"), (None, "version None")]
)
def test_unknown_or_mistyped_versions_are_refused(saved, version, shown):
    _, json_path = saved
    forged(json_path, _set("version", version))
    readable = re.escape(str(sorted(READABLE)))
    with pytest.raises(ValueError, match=rf"{json_path} has format {shown}; this histodecon reads versions {readable}"):
        hd.tl.AbundanceRegressor.load(json_path)


def test_a_record_that_is_not_an_object_or_too_large_is_refused(saved):
    _, json_path = saved
    json_path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=r"is not a saved AbundanceRegressor \(no `format"):
        hd.tl.AbundanceRegressor.load(json_path)
    json_path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"is not valid JSON"):
        hd.tl.AbundanceRegressor.load(json_path)
    with open(json_path, "wb") as file:
        file.truncate(65 * 2**20)  # sparse: no disk used
    with pytest.raises(ValueError, match=r"is 68,157,440 bytes, more than the 67,108,864 a model record may have"):
        hd.tl.AbundanceRegressor.load(json_path)


# ------------------------------------------------------------------------------- the tensor file's header
def _resign_tensors(tensor_path, json_path):
    forged(json_path, _set("tensors", "sha256", hashlib.sha256(tensor_path.read_bytes()).hexdigest()))


def test_header_must_describe_the_recorded_architecture(model, saved):
    tensor_path, json_path = saved
    tensors = load_file(tensor_path)
    tensors["layers.0.weight"] = tensors["layers.0.weight"].double()
    save_file(tensors, tensor_path)
    _resign_tensors(tensor_path, json_path)
    with pytest.raises(ValueError, match=r"tensor `layers.0.weight` is not stored as F32 of 384 bytes \(dtype 'F64'"):
        hd.tl.AbundanceRegressor.load(json_path)

    tensors = {name: t.float() for name, t in load_file(tensor_path).items()} | {"extra": tensors["y_scale"]}
    save_file(tensors, tensor_path)
    _resign_tensors(tensor_path, json_path)
    with pytest.raises(ValueError, match=r"does not hold the tensors of the recorded architecture .*\['extra'\]"):
        hd.tl.AbundanceRegressor.load(json_path)

    model.save(json_path, overwrite=True)
    tensor_path.write_bytes(tensor_path.read_bytes() + b"\0" * 64)
    _resign_tensors(tensor_path, json_path)
    with pytest.raises(ValueError, match=r"is 1856 bytes, but its header describes tensors of 1160 bytes"):
        hd.tl.AbundanceRegressor.load(json_path)

    tensor_path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match=r"do not start with a valid header length.*modified or truncated"):
        hd.tl.AbundanceRegressor.load(json_path)
    tensor_path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"its 0 bytes do not start with a valid header length"):
        hd.tl.AbundanceRegressor.load(json_path)


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    import histodecon as hd
    from histodecon.tl._estimator._network import AbundanceNetwork

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def virtual_bytes():
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmSize"].split()[0]) * 1024

    torch.set_num_threads(1)
    good, forged = sys.argv[1:3]
    hd.tl.AbundanceRegressor.load(good)  # warm-up: imports and first allocations
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # resets the peak to the current resident size
    before = peak_mb()
    resource.setrlimit(resource.RLIMIT_AS, (virtual_bytes() + 128 * 2**20, resource.RLIM_INFINITY))
    errors = []
    for path in forged.split(","):
        try:
            hd.tl.AbundanceRegressor.load(path)
        except ValueError as error:
            errors.append(str(error))
    refused = peak_mb() - before
    arch = json.load(open(forged.split(",")[-1]))["architecture"]
    try:
        AbundanceNetwork(arch["n_features"], arch["hidden"], arch["n_outputs"])
        blocked = None
    except (MemoryError, RuntimeError) as error:
        blocked = type(error).__name__
    print(json.dumps({"refused_mb": refused, "blocked": blocked, "errors": errors}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads and resets the peak through /proc")
def test_huge_architectures_are_refused_without_allocating(model, tmp_path):
    """Forged JSONs (checksums recomputed) asking for huge networks are refused at the baseline's memory.

    Torch allocations escape tracemalloc, so a fresh process measures its peak resident size
    (reset first); the resident size can also shrink as the kernel drops file pages, so the
    loads run under an address-space limit of 128 MiB more than the process has: the network
    the last JSON asks for (257 MiB) cannot be allocated under it, loading it must not try.
    """
    model.save(tmp_path / "good")
    forgeries = []
    for name, widths in [("beyond_bounds", [1_000_000] * 7), ("within_bounds", [8192, 8192])]:
        model.save(tmp_path / name)
        forged(tmp_path / f"{name}.json", _hidden(widths))
        forgeries.append(str(tmp_path / f"{name}.json"))
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "good"), ",".join(forgeries)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert "field `architecture.hidden[0]`" in measured["errors"][0]
    assert "does not hold the tensors of the recorded architecture" in measured["errors"][1]
    assert measured["refused_mb"] < 16, measured
    assert measured["blocked"] in ("MemoryError", "RuntimeError"), measured


# ------------------------------------------------------------------------------------------ model card
def test_save_writes_a_model_card_beside_the_files(model, tmp_path):
    model.save(tmp_path / "m")
    card = (tmp_path / "m.md").read_text()
    assert card.startswith("---\nlibrary_name: histodecon\ntags:\n- histodecon\n")
    assert "- Samples (3): `s1`, `s2`, `s3`" in card
    assert "| `conch` | 4 |\n| `uni` | 2 |" in card
    assert "`tumour`, `T cells`, `fibroblasts`" in card
    assert f"An MLP 6 -> 16 -> 8 -> 3 (SiLU activations, {model.network.output} output)." in card
    assert f"| cc | {model.validation_scores['cc']:.4f} |" in card
    assert f"Trained for {model.best_epoch} epochs (3 early-stopping folds holding out disjoint groups" in card
    record = json.loads((tmp_path / "m.json").read_text())
    assert f"SHA-256 `{record['tensors']['sha256']}`" in card
    assert "`m.safetensors`" in card

    folder = tmp_path / "folder"
    folder.mkdir()
    model.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.json", "model.safetensors"]
    np.testing.assert_array_equal(hd.tl.AbundanceRegressor.load(folder).predict(x_new()), model.predict(x_new()))
    model.save(f"{tmp_path / 'new' / 'folder'}/")  # a trailing slash names a folder, created
    assert sorted(p.name for p in (tmp_path / "new" / "folder").iterdir()) == sorted(p.name for p in folder.iterdir())


def test_an_existing_card_is_not_overwritten(model, tmp_path):
    (tmp_path / "README.md").write_text("my project")
    with pytest.raises(FileExistsError, match=r"README.md exists; pass `overwrite=True`"):
        model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
    assert (tmp_path / "README.md").read_text() == "my project"
    model.save(tmp_path / "m")  # beside a project's README.md, a named model gets its own card
    assert (tmp_path / "README.md").read_text() == "my project"


# ------------------------------------------------------------------------------------ Hugging Face Hub
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache in ``tmp_path / "hf"``."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_hf_cache(cache, repo_id, folder):
    """Lay ``folder``'s files out as ``huggingface_hub`` caches a repository: blobs, a snapshot, ``refs/main``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(blob)
    return snapshot


def embedded_table(x):
    table = AnnData(obs=pd.DataFrame(index=[f"spot{i}" for i in range(len(x))]))
    table.obsm["X_conch"], table.obsm["X_uni"] = x[:, :4], x[:, 4:]
    return table


def test_model_loads_offline_by_repo_id_from_the_hf_cache(model, tmp_path, hf_cache):
    folder = tmp_path / "upload"
    folder.mkdir()
    model.save(folder)
    put_in_hf_cache(hf_cache, REPO, folder)
    loaded = hd.tl.AbundanceRegressor.load(REPO)
    x = x_new()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.cell_types == model.cell_types and loaded.feature_keys == ["conch", "uni"]

    table, expected = embedded_table(x), embedded_table(x)
    hd.tl.predict(table, REPO)
    hd.tl.predict(expected, model)
    pd.testing.assert_frame_equal(table.obsm["pred_abund"], expected.obsm["pred_abund"])
    np.testing.assert_array_equal(table.obsm["pred_abund"].to_numpy(), model.predict(x))

    many = embedded_table(x)
    hd.tl.predict_many([many], REPO)
    pd.testing.assert_frame_equal(many.obsm["pred_abund"], expected.obsm["pred_abund"])


def test_cached_files_are_checked_like_local_ones(model, tmp_path, hf_cache):
    folder = tmp_path / "upload"
    folder.mkdir()
    model.save(folder)
    snapshot = put_in_hf_cache(hf_cache, REPO, folder)
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"does not match the checksum recorded in .*model.json: it was modified"):
        hd.tl.AbundanceRegressor.load(REPO)


def test_a_local_path_wins_over_a_repo_of_the_same_name(model, tmp_path, hf_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-lab").mkdir()
    model.save(tmp_path / "my-lab" / "tiny-model")
    np.testing.assert_array_equal(hd.tl.AbundanceRegressor.load(REPO).predict(x_new()), model.predict(x_new()))


def test_uncached_repo_offline_says_what_to_do(hf_cache):
    with pytest.raises(FileNotFoundError, match="No saved model at 'my-lab/absent'") as error:
        hd.tl.AbundanceRegressor.load("my-lab/absent")
    message = str(error.value)
    assert "No saved model at 'my-lab/absent': no such local file or folder" in message
    assert "not in the cache while offline (HF_HUB_OFFLINE is set)" in message
    assert "hf download my-lab/absent model.json model.safetensors README.md" in message
    with pytest.raises(FileNotFoundError, match=r"nope\.json not found; a saved model is a \.safetensors file"):
        hd.tl.predict(embedded_table(x_new()), "nope")


class FakeHfApi:
    """Records what :meth:`push_to_hub` asks of the Hub, and the files of the folder it uploads."""

    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, *, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, commit_message):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, commit_message, files))


def test_push_to_hub_uploads_the_saved_folder(model, monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    assert model.push_to_hub(REPO, token="hf_secret") == f"https://huggingface.co/{REPO}"
    (_, token), create, upload = FakeHfApi.calls
    assert token == "hf_secret"
    assert create == ("create_repo", REPO, True, True)
    assert upload[:3] == ("upload_folder", REPO, "Upload histodecon AbundanceRegressor")
    files = upload[3]
    assert sorted(files) == ["README.md", "model.json", "model.safetensors"]
    assert files["README.md"].startswith(b"---\nlibrary_name: histodecon\n")
    assert json.loads(files["model.json"])["cell_types"] == model.cell_types


def test_push_to_hub_needs_a_login_and_a_repo_id(model, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(RuntimeError, match=r"Not logged in to the Hugging Face Hub: log in with `hf auth login`"):
        model.push_to_hub(REPO)
    with pytest.raises(ValueError, match=r"'not a repo' is not a Hugging Face repository id"):
        model.push_to_hub("not a repo", token="hf_secret")
    with pytest.raises(RuntimeError, match="not fitted"):
        hd.tl.AbundanceRegressor().push_to_hub(REPO, token="hf_secret")
