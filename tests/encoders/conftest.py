"""Fixtures of the encoder tests: no test may reach the Hugging Face Hub or a real weights folder."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

import histodecon as hd
from histodecon._constants import Key
from histodecon.encoders import _registry


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path_factory):
    """Offline Hub with an empty cache and no ``$HISTODECON_WEIGHTS_DIR``.

    huggingface_hub reads its settings at import, so its constants are patched as well.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    monkeypatch.delenv(Key.env.weights_dir, raising=False)


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry and its name schemes that the test may change freely."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    monkeypatch.setattr(_registry, "_SCHEMES", dict(_registry._SCHEMES))
    return _registry._REGISTRY


def _meta_count_and_dim(name: str) -> tuple[int, int]:
    """Parameter count and output length of an entry's architecture, without allocating it."""
    entry = hd.encoders.get(name)
    with torch.device("meta"):
        model = entry.build()
        out = model(torch.empty(2, 3, entry.input_size, entry.input_size))
    assert out.shape[0] == 2
    return sum(p.numel() for p in model.parameters()), out.shape[-1]


@pytest.fixture
def meta_count_and_dim():
    """``name -> (parameter count, output length)`` of a registered encoder, built on the meta device."""
    return _meta_count_and_dim
