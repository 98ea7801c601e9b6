"""``timm:hf-hub:<repo id>``: built from the repository's config.json, weights through the safe loader, offline."""

import json
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

import histodecon as hd
from histodecon.encoders._hf_hub import hf_hub_entry

REPO = "acme/tiny-vit.path"
CONFIG = {
    "architecture": "vit_tiny_patch16_224",
    "num_classes": 7,
    "num_features": 192,
    "global_pool": "token",
    "model_args": {"img_size": 64, "depth": 2, "num_classes": 7},
    "pretrained_cfg": {
        "input_size": [3, 64, 64],
        "fixed_input_size": True,
        "interpolation": "bilinear",
        "mean": [0.6, 0.5, 0.7],
        "std": [0.2, 0.25, 0.15],
        "num_classes": 7,
        "classifier": "head",
    },
}


def source_model() -> torch.nn.Module:
    """The repository's model with its 7-class head and random weights."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=7).eval()


def put_in_hf_cache(files: dict[str, Callable[[Path], object]]) -> None:
    """Write files of ``REPO`` as ``huggingface_hub`` caches them: blobs behind a snapshot and ``refs/main``."""
    folder = Path(huggingface_hub.constants.HF_HUB_CACHE) / ("models--" + REPO.replace("/", "--"))
    commit = "0" * 40
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(snapshot / name)


@pytest.fixture
def cached_repo():
    source = source_model()
    put_in_hf_cache(
        {
            "config.json": lambda path: path.write_text(json.dumps(CONFIG)),
            "model.safetensors": lambda path: save_file(source.state_dict(), path),
        }
    )
    hf_hub_entry.cache_clear()
    yield source
    hf_hub_entry.cache_clear()


def test_entry_comes_from_the_cached_config(cached_repo):
    entry = hd.encoders.get(f"timm:hf-hub:{REPO}")
    assert (entry.name, entry.dim, entry.input_size, entry.patch_size) == (f"timm:hf-hub:{REPO}", 192, 64, 64)
    assert (entry.mean, entry.std, entry.interpolation) == ((0.6, 0.5, 0.7), (0.2, 0.25, 0.15), "bilinear")
    assert (entry.weights.repo_id, entry.weights.filename) == (REPO, "model.safetensors")


def test_cached_weights_load_offline_without_the_classifier(cached_repo):
    encoder = hd.encoders.load(f"timm:hf-hub:{REPO}", device="cpu")
    patches = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = cached_repo.forward_head(cached_repo.forward_features(encoder.preprocess(patches)), pre_logits=True)
        torch.testing.assert_close(encoder(patches), expected, rtol=0, atol=0)
    assert encoder.provenance["weights"].endswith("model.safetensors")


def test_a_repository_with_only_a_pytorch_checkpoint_loads_it():
    source = source_model()
    put_in_hf_cache(
        {
            "config.json": lambda path: path.write_text(json.dumps(CONFIG)),
            "pytorch_model.bin": lambda path: torch.save(source.state_dict(), path),
        }
    )
    hf_hub_entry.cache_clear()
    try:
        encoder = hd.encoders.load(f"timm:hf-hub:{REPO}", device="cpu")
    finally:
        hf_hub_entry.cache_clear()
    assert encoder.provenance["weights"].endswith("pytorch_model.bin")
    patches = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = source.forward_head(source.forward_features(encoder.preprocess(patches)), pre_logits=True)
        torch.testing.assert_close(encoder(patches), expected, rtol=0, atol=0)


def test_weights_dir_is_read_before_the_cache(tmp_path, monkeypatch):
    folder = tmp_path / f"timm:hf-hub:{REPO}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG | {"model_args": {"img_size": 64, "depth": 1}}))
    monkeypatch.setenv("HISTODECON_WEIGHTS_DIR", str(tmp_path))
    hf_hub_entry.cache_clear()
    with torch.device("meta"):
        assert len(hf_hub_entry(REPO).build().blocks) == 1
    hf_hub_entry.cache_clear()


def test_missing_config_offline_says_where_to_put_it():
    hf_hub_entry.cache_clear()
    with pytest.raises(FileNotFoundError, match=r"\$HISTODECON_WEIGHTS_DIR/timm:hf-hub:acme/nope.*config\.json"):
        hd.encoders.get("timm:hf-hub:acme/nope")


def test_unknown_architecture_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "timm:hf-hub:acme/odd"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG | {"architecture": "not_a_timm_model"}))
    monkeypatch.setenv("HISTODECON_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(KeyError, match="'not_a_timm_model', which timm"):
        hf_hub_entry("acme/odd")
