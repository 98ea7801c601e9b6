import hashlib
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import histodecon as hd
from histodecon._constants import Key
from histodecon.encoders._weights import EXPECTED_FORMAT, _first_line, read_state_dict, weights_format


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


@pytest.fixture
def tiny(registry):
    """A small registered encoder whose weights come from the gated repository 'example/tiny'."""
    entry = hd.encoders.Encoder(
        name="tiny",
        dim=2,
        input_size=32,
        build=tiny_model,
        weights=hd.encoders.WeightsSource("example/tiny", "tiny.bin"),
    )
    return hd.encoders.register(entry)


@pytest.fixture
def source():
    torch.manual_seed(0)
    return tiny_model().eval()


@pytest.fixture
def patches():
    return torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def assert_same_outputs(encoder, source, patches):
    with torch.inference_mode():
        torch.testing.assert_close(encoder(patches), source(encoder.preprocess(patches)), rtol=0, atol=0)


def test_explicit_file_loads_strictly_with_its_sha256(tiny, source, patches, tmp_path):
    path = tmp_path / "tiny.bin"
    torch.save(source.state_dict(), path)
    encoder = hd.encoders.load("tiny", weights=path, device="cpu")
    assert_same_outputs(encoder, source, patches)
    assert encoder.provenance["weights"] == str(path)
    assert encoder.provenance["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_folder_and_wrapped_state_dict(tiny, source, patches, tmp_path):
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "tiny.bin")
    assert_same_outputs(hd.encoders.load("tiny", weights=tmp_path, device="cpu"), source, patches)


def test_safetensors(tiny, source, patches, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), path)
    assert_same_outputs(hd.encoders.load("tiny", weights=path, device="cpu"), source, patches)


def test_weights_dir_lookup(tiny, source, patches, tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    torch.save(source.state_dict(), tmp_path / "tiny" / "tiny.bin")
    monkeypatch.setenv(Key.env.weights_dir, str(tmp_path))
    encoder = hd.encoders.load("tiny", device="cpu")
    assert encoder.provenance["weights"] == str(tmp_path / "tiny" / "tiny.bin")
    assert_same_outputs(encoder, source, patches)


def test_mismatched_weights_fail_readably(tiny, source, tmp_path):
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(1)
    state["3.weight"] = torch.zeros(5, 4)
    del state["0.bias"]
    torch.save(state, tmp_path / "tiny.bin")
    with pytest.raises(ValueError, match="do not fit the 'tiny' architecture") as error:
        hd.encoders.load("tiny", weights=tmp_path / "tiny.bin")
    message = str(error.value)
    assert "missing keys: 0.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "shape mismatches: 3.weight: file (5, 4) vs model (2, 4)" in message


class RunsCode:
    """Unpickling this object would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tiny, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"0.weight": RunsCode(marker)}, tmp_path / "tiny.bin")
    with pytest.raises(ValueError, match="Refusing to read .*tiny.bin.*weights_only=True"):
        hd.encoders.load("tiny", weights=tmp_path / "tiny.bin")
    assert not marker.exists()


def test_missing_explicit_file(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Weights file .*nope\.bin for encoder 'tiny' does not exist"):
        hd.encoders.load("tiny", weights=tmp_path / "nope.bin")


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv(Key.env.weights_dir, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No weights found for encoder 'uni'") as error:
        hd.encoders.load("uni")
    message = str(error.value)
    assert "https://huggingface.co/MahmoodLab/UNI" in message
    assert "gated" in message
    assert f"at {tmp_path / 'uni' / 'pytorch_model.bin'} (${Key.env.weights_dir} sets the folder)" in message
    assert "weights={'uni': '/path/to/pytorch_model.bin'}" in message


def test_missing_weights_without_weights_dir_name_the_variable():
    with pytest.raises(FileNotFoundError, match=r"at \$HISTODECON_WEIGHTS_DIR/conch/pytorch_model\.bin"):
        hd.encoders.load("conch")


# ------------------------------------------------------------------------ damaged or wrong-format files
def _truncated(save):
    def write(path):
        save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return write


def _state():
    return tiny_model().state_dict()


@pytest.mark.parametrize(
    ("name", "write", "problem"),
    [
        ("tiny.bin", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        ("tiny.safetensors", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        ("tiny.safetensors", _truncated(lambda p: save_file(_state(), p)), r"truncated or corrupt safetensors file"),
        ("tiny.safetensors", lambda p: p.write_bytes(b"\x40\0\0\0\0\0\0\0{}"), r"starts like a safetensors file but"),
        ("tiny.bin", _truncated(lambda p: torch.save(_state(), p)), r"zip checkpoint but is truncated or corrupt"),
        ("tiny.pth", _truncated(lambda p: torch.save(_state(), p)), r"zip checkpoint but is truncated or corrupt"),
        ("tiny.safetensors", lambda p: p.write_bytes(pickle.dumps(_state())), r"is a pickle"),
        ("tiny.bin", lambda p: torch.save(_state(), p, _use_new_zipfile_serialization=False), r"is a pickle"),
        ("tiny.bin", lambda p: p.write_bytes(b"<html>Access denied</html>"), r"is in an unknown format"),
        ("tiny.bin", lambda p: p.mkdir(), r"is a folder, not a weights file"),
    ],
)
def test_damaged_or_wrong_format_files_name_the_file_and_the_format(tmp_path, name, write, problem):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=problem) as error:
        read_state_dict(path)
    message = str(error.value)
    assert str(path) in message
    assert EXPECTED_FORMAT in message
    assert EXPECTED_FORMAT == "a safetensors file or a PyTorch zip checkpoint saved with torch.save"


def test_a_pickle_renamed_safetensors_is_never_unpickled(tiny, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "tiny.safetensors").write_bytes(pickle.dumps({"0.weight": RunsCode(marker)}))
    with pytest.raises(ValueError, match=r"tiny\.safetensors is a pickle .*Pickles are never read"):
        hd.encoders.load("tiny", weights=tmp_path / "tiny.safetensors")
    assert not marker.exists()


def test_format_comes_from_the_content_not_the_name(tiny, source, patches, tmp_path):
    """A safetensors file named ``.bin`` (as some repositories name theirs) reads as safetensors, and back."""
    save_file(source.state_dict(), tmp_path / "tiny.bin")
    assert_same_outputs(hd.encoders.load("tiny", weights=tmp_path / "tiny.bin", device="cpu"), source, patches)
    torch.save(source.state_dict(), tmp_path / "zip.safetensors")
    assert weights_format(tmp_path / "zip.safetensors") == "zip"


def test_an_empty_exception_message_is_reported_not_raised_again(tmp_path):
    """A zip that is no torch checkpoint: torch's error is wrapped (the former handler failed on empty messages)."""
    with zipfile.ZipFile(tmp_path / "tiny.bin", "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    with pytest.raises(ValueError, match=r"Refusing to read .*tiny\.bin: it is not a plain tensor checkpoint \(\w+"):
        read_state_dict(tmp_path / "tiny.bin")
    assert _first_line(EOFError()) == "EOFError"
    assert _first_line(RuntimeError("\nsecond line")) == "RuntimeError: second line"


def _refuse_downloads(monkeypatch):
    """Fail the test if the Hub is asked for a file (a cache lookup, ``local_files_only=True``, is allowed)."""
    import huggingface_hub

    real = huggingface_hub.hf_hub_download

    def download(*args, local_files_only=False, **kwargs):
        assert local_files_only, "the Hub was asked although it is offline"
        return real(*args, local_files_only=True, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def test_missing_weights_offline_fail_without_asking_the_hub(tiny, monkeypatch):
    # HF_HUB_OFFLINE=1 (the autouse fixture): the cache is read, the Hub never asked.
    # Mutation: dropping the offline check in hub_reachable makes the download run and the assert fire.
    _refuse_downloads(monkeypatch)
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: pytest.fail("the Hub's host was contacted"))
    with pytest.raises(FileNotFoundError, match="No weights found for encoder 'tiny'"):
        hd.encoders.load("tiny", device="cpu")


def test_unreachable_hub_fails_fast_without_retries(tiny, monkeypatch):
    """Online settings but no route to the Hub (no network): no download attempt, no retries."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    contacted = []

    def no_route(address, timeout=None):
        contacted.append(address)
        raise OSError("Name or service not known")

    monkeypatch.setattr("socket.create_connection", no_route)
    _refuse_downloads(monkeypatch)  # mutation: calling hf_hub_download without the reachability check fails here
    with pytest.raises(FileNotFoundError, match="No weights found for encoder 'tiny'"):
        hd.encoders.load("tiny", device="cpu")
    assert contacted == [("huggingface.co", 443)]
