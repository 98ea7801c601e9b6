import pytest
import torch
from torch import nn

import histodecon as hd
from histodecon.encoders._registry import register_scheme


def mean_rgb_entry(name: str = "mean_rgb") -> hd.encoders.Encoder:
    """A weights-free encoder whose output is known: the mean of each channel in [0, 1]."""
    return hd.encoders.Encoder(
        name=name,
        dim=3,
        mean=None,
        std=None,
        build=lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )


def test_builtin_entries_are_registered():
    names = hd.encoders.available()
    assert {"uni", "uni2", "conch", "conch_proj"} <= set(names)
    assert names == sorted(names)
    assert {name: hd.encoders.get(name).dim for name in ["uni", "uni2", "conch", "conch_proj"]} == {
        "uni": 1024,
        "uni2": 1536,
        "conch": 512,
        "conch_proj": 512,
    }


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(KeyError, match=r"Unknown encoder 'unii'\. Available: \[.*'uni'.*timm:"):
        hd.encoders.get("unii")


def test_schemes_resolve_their_names_longest_prefix_first(registry):
    register_scheme("rgb", mean_rgb_entry, description="the mean colour")
    register_scheme("rgb:half", lambda name: mean_rgb_entry(f"half {name}"), description="it", placeholder="size")
    assert hd.encoders.get("rgb:a").name == "a"
    assert hd.encoders.get("rgb:half:b").name == "half b"
    assert "rgb:a" not in hd.encoders.available()
    with pytest.raises(KeyError, match=r"Unknown encoder 'rgbx:a'.*, or 'rgb:<model name>' for the mean colour"):
        hd.encoders.get("rgbx:a")
    with pytest.raises(KeyError, match="scheme 'rgb' is already registered.*overwrite=True"):
        register_scheme("rgb", mean_rgb_entry, description="again")


def test_register_refuses_a_duplicate_name_without_overwrite(registry):
    first = hd.encoders.register(mean_rgb_entry())
    assert hd.encoders.get("mean_rgb") is first
    with pytest.raises(KeyError, match="already registered.*overwrite=True"):
        hd.encoders.register(mean_rgb_entry())
    second = hd.encoders.register(mean_rgb_entry(), overwrite=True)
    assert hd.encoders.get("mean_rgb") is second
    with pytest.raises(TypeError, match="takes an `hd.encoders.Encoder` entry, got Sequential"):
        hd.encoders.register(nn.Sequential())


def test_registered_module_embeds_uint8_patches(registry):
    hd.encoders.register(mean_rgb_entry())
    encoder = hd.encoders.load("mean_rgb", device="cpu")
    patches = torch.zeros(2, 224, 224, 3, dtype=torch.uint8)
    patches[0, ..., 0] = 51  # red 0.2
    patches[1, :112, :, 2] = 255  # blue on the upper half
    embedding = encoder(patches)
    assert embedding.dtype == torch.float32
    torch.testing.assert_close(embedding, torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.0, 0.5]]))
    assert encoder.provenance == {
        "model": "mean_rgb",
        "dim": 3,
        "input_size": 224,
        "patch_size": 224,
        "mpp": 0.5,
        "field_spots": None,
    }


def test_patches_are_resized_and_normalised(registry):
    entry = hd.encoders.Encoder(
        name="identity",
        dim=3,
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        build=nn.Identity,
    )
    hd.encoders.register(entry)
    encoder = hd.encoders.load("identity", device="cpu")
    x = encoder.preprocess(torch.full((1, 64, 64, 3), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x, torch.full((1, 3, 32, 32), 2.0))


def test_weights_for_a_weights_free_encoder_are_refused(registry, tmp_path):
    hd.encoders.register(mean_rgb_entry())
    with pytest.raises(ValueError, match="'mean_rgb' takes no weights"):
        hd.encoders.load("mean_rgb", weights=tmp_path / "w.bin")
