"""GenBio-PathFM: the authors' architecture and key layout, channel-wise encoding, rotary positions, preprocessing."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import histodecon as hd
from histodecon._constants import Key
from histodecon.encoders._genbio import GENBIO_MEAN, GENBIO_STD, ChannelwiseViT, RotaryPositions
from histodecon.io._build import build_sdata

#: Every key and shape of ``VisionTransformer(img_size=224, patch_size=16, embed_dim=1536, depth=40,
#: num_heads=24, ffn_ratio=4, in_chans=1, n_storage_tokens=4, ffn_layer="swiglu64", qkv_bias=False, ...)``
#: in genbio-ai/genbio-pathfm's model.py, whose state dict is the published model.pth.
TOP = {
    "cls_token": (1, 1, 1536),
    "storage_tokens": (1, 4, 1536),
    "patch_embed.proj.weight": (1536, 1, 16, 16),
    "patch_embed.proj.bias": (1536,),
    "rope_embed.periods": (16,),
    "norm.weight": (1536,),
    "norm.bias": (1536,),
}
BLOCK = {
    "norm1.weight": (1536,),
    "norm1.bias": (1536,),
    "attn.qkv.weight": (4608, 1536),  # no qkv bias
    "attn.proj.weight": (1536, 1536),
    "attn.proj.bias": (1536,),
    "ls1.gamma": (1536,),
    "norm2.weight": (1536,),
    "norm2.bias": (1536,),
    "mlp.w1.weight": (4096, 1536),  # int(6144 * 2 / 3) = 4096, already a multiple of 64
    "mlp.w1.bias": (4096,),
    "mlp.w2.weight": (4096, 1536),
    "mlp.w2.bias": (4096,),
    "mlp.w3.weight": (1536, 4096),
    "mlp.w3.bias": (1536,),
    "ls2.gamma": (1536,),
}


def test_parameter_count_dim_and_the_authors_key_layout(meta_count_and_dim):
    count, dim = meta_count_and_dim("genbio_pathfm")
    assert round(count / 1e6) == 1134  # published: 1.1B
    assert dim == hd.encoders.get("genbio_pathfm").dim == 4608  # 3 channels x 1536
    with torch.device("meta"):
        state = hd.encoders.get("genbio_pathfm").build().state_dict()
    official = TOP | {f"blocks.{i}.{key}": shape for i in range(40) for key, shape in BLOCK.items()}
    assert {key: tuple(value.shape) for key, value in state.items()} == official
    assert state["rope_embed.periods"].dtype == torch.bfloat16  # the authors' rotary dtype, stored in the file


def test_entry_records_the_model_cards_preprocessing():
    entry = hd.encoders.get("genbio_pathfm")
    assert (entry.input_size, entry.patch_size, entry.mpp, entry.interpolation) == (224, 224, 0.5, "bilinear")
    assert (entry.mean, entry.std) == ((0.697, 0.575, 0.728), (0.188, 0.240, 0.187)) == (GENBIO_MEAN, GENBIO_STD)
    assert (entry.weights.repo_id, entry.weights.filename) == ("genbio-ai/genbio-pathfm", "model.pth")


def test_preprocessing_matches_the_model_card():
    transforms = pytest.importorskip("torchvision.transforms")
    card = transforms.Compose(
        [
            transforms.Resize(224),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(GENBIO_MEAN, GENBIO_STD),
        ]
    )
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    encoder = hd.encoders.PatchEncoder(hd.encoders.get("genbio_pathfm"), torch.nn.Identity(), {})
    torch.testing.assert_close(encoder.preprocess(torch.from_numpy(image)[None])[0], card(Image.fromarray(image)))


@pytest.fixture(scope="module")
def small():
    """The architecture at a toy width, randomly initialised, with non-trivial LayerScale."""
    torch.manual_seed(0)
    model = ChannelwiseViT(embed_dim=96, depth=2, num_heads=4, layerscale=0.5).eval()
    return model


def test_each_colour_channel_is_encoded_alone_and_concatenated_in_rgb_order(small):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = small(images)
        changed = images.clone()
        changed[:, 1] = torch.randn(2, 64, 64)  # a new green plane
        out_changed = small(changed)
        planes = [small.class_tokens(images[:, [c]]) for c in range(3)]
    assert out.shape == (2, 3 * 96)
    torch.testing.assert_close(out, torch.cat(planes, dim=-1))
    torch.testing.assert_close(out_changed[:, :96], out[:, :96])  # red and blue untouched
    torch.testing.assert_close(out_changed[:, 192:], out[:, 192:])
    assert not torch.allclose(out_changed[:, 96:192], out[:, 96:192])


def test_rotary_positions_are_the_authors_closed_form_in_bfloat16():
    """Patch (r, c) of an h x w grid sits at ((2r + 1) / h - 1, (2c + 1) / w - 1); period k is 100 ** (2k / 32)."""
    sin, cos = RotaryPositions(64)(14, 14)
    assert sin.dtype == cos.dtype == torch.bfloat16 and sin.shape == (196, 64)
    periods = 100.0 ** (2 * np.arange(16) / 32)
    r, c = np.divmod(np.arange(196), 14)
    coords = np.stack([(2 * r + 1) / 14 - 1, (2 * c + 1) / 14 - 1], axis=1)
    angles = np.tile((2 * math.pi * coords[:, :, None] / periods).reshape(196, 32), 2)
    # bfloat16 keeps 8 bits of mantissa: angles of up to 2 pi, rounded at each of three steps, are off by < 0.05
    np.testing.assert_allclose(sin.float().numpy(), np.sin(angles), atol=0.05)
    np.testing.assert_allclose(cos.float().numpy(), np.cos(angles), atol=0.05)


def test_rotary_positions_make_attention_see_the_patch_order(small):
    """Without absolute position embeddings only the rotations tell patches apart: shuffling them changes the output."""
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    shuffled = images.roll(16, dims=-1)  # patch columns moved one place to the right, patches unchanged
    with torch.inference_mode():
        assert not torch.allclose(small(images), small(shuffled), atol=1e-4)
        small.rope_embed.periods.fill_(float("inf"))  # angle 0 everywhere: no rotation, a bag of patches
        try:
            torch.testing.assert_close(small(images), small(shuffled), atol=1e-4, rtol=1e-4)
        finally:
            small.rope_embed.periods.copy_(RotaryPositions(96 // 4).periods)  # head_dim 24


@pytest.mark.slow  # a random 1.1B-parameter ViT (4.5 GB) written to disk and read back
def test_official_checkpoint_loads_strictly_and_embeds_four_spots(tmp_path):
    torch.manual_seed(0)
    source = hd.encoders.get("genbio_pathfm").build().eval()
    path = tmp_path / "model.pth"
    torch.save(source.state_dict(), path)  # as the authors' checkpoint: the plain ViT state dict
    encoder = hd.encoders.load("genbio_pathfm", weights=path, device="cpu")
    patches = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(encoder(patches), source(encoder.preprocess(patches)), rtol=0, atol=0)
    del source, encoder
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 640, 640), dtype=np.uint8)
    centres = 320 + rng.uniform(-100, 100, (4, 2))
    slide = build_sdata(
        image, centres, sample="S", mpp=0.5, spot_diameter_px=110.0, spot_ids=[f"s{i}" for i in range(4)]
    )
    hd.tl.embed(slide, models=["genbio_pathfm"], weights={"genbio_pathfm": path}, batch_size=2, device="cpu")
    embedding = slide.tables[Key.tables.table].obsm[Key.obsm.embedding("genbio_pathfm")]
    assert embedding.shape == (4, 4608) and np.isfinite(embedding).all()
    assert not np.allclose(embedding[0], embedding[1])


def test_a_checkpoint_in_the_authors_layout_loads_strictly_through_the_factory(registry, tmp_path):
    """``torch.save`` of the bare ViT's state dict (as model.pth) is read safely and loaded with every key used.

    The full-size model is exercised the same way by the slow test below; here a toy width keeps it fast.
    """
    from dataclasses import replace
    from functools import partial

    toy = replace(hd.encoders.get("genbio_pathfm"), dim=3 * 96, build=partial(ChannelwiseViT, embed_dim=96, depth=2))
    hd.encoders.register(toy, overwrite=True)
    torch.manual_seed(3)
    source = toy.build().eval()
    for name, parameter in source.named_parameters():  # the file must not match a fresh build by chance
        if name.endswith("gamma"):
            parameter.data.fill_(0.5)
    torch.save(source.state_dict(), tmp_path / "model.pth")
    encoder = hd.encoders.load("genbio_pathfm", weights=tmp_path, device="cpu")
    patches = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(encoder(patches), source(encoder.preprocess(patches)), rtol=0, atol=0)
    assert encoder.model.rope_embed.periods.dtype == torch.bfloat16
    assert encoder.provenance["weights"] == str(tmp_path / "model.pth")
