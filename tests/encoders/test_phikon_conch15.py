"""Phikon-v2's transformers-to-timm key conversion and CONCH v1.5's pooler and position embedding."""

import numpy as np
import pytest
import timm
import torch

import histodecon as hd
from histodecon._constants import Key
from histodecon.encoders._conch15 import ConchV15Pooler, conch15_state, dino_resample_pos_embed
from histodecon.encoders._phikon import timm_state_from_dinov2
from histodecon.io._build import build_sdata

transformers = pytest.importorskip("transformers", reason="transformers (the test extra) gives Phikon-v2's own model")


def tiny_dinov2(seed: int = 0):
    """A small random ``Dinov2Model`` laid out as Phikon-v2 (patch 16, LayerScale, GELU MLP of ratio 4)."""
    config = transformers.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=16, image_size=64, layerscale_value=1e-5
    )
    torch.manual_seed(seed)
    model = transformers.Dinov2Model(config).eval()
    for parameter in model.parameters():  # LayerScale at 1e-5 would hide a wrong mapping in the output
        parameter.data.normal_(0.0, 0.2)
    return model


def embed_four_spots(name: str, weights) -> np.ndarray:
    """``hd.tl.embed`` of a random 0.5 um/px slide with 4 spots; returns the embeddings."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 640, 640), dtype=np.uint8)
    centres = 320 + rng.uniform(-100, 100, (4, 2))
    sdata = build_sdata(image, centres, sample="S", mpp=0.5, spot_diameter_px=110.0, spot_ids=list("abcd"))
    hd.tl.embed(sdata, models=[name], weights={name: weights}, batch_size=2, device="cpu")
    return sdata.tables[Key.tables.table].obsm[Key.obsm.embedding(name)]


def test_dinov2_file_converts_to_timm_and_gives_the_same_class_token(tmp_path):
    """The official layout (written by ``save_pretrained``) loads strictly into timm and matches transformers."""
    from safetensors.torch import load_file

    source = tiny_dinov2()
    source.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "encoder.layer.0.attention.attention.query.weight" in state  # the published key layout
    vit = timm.create_model(
        "vit_large_patch16_224", img_size=64, embed_dim=64, depth=2, num_heads=4, init_values=1e-5, num_classes=0
    ).eval()
    vit.load_state_dict(timm_state_from_dinov2(state), strict=True)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = source(pixel_values=images).last_hidden_state[:, 0]
        torch.testing.assert_close(vit(images), expected, rtol=1e-5, atol=1e-5)


def test_incomplete_attention_is_named():
    state = {"encoder.layer.0.attention.attention.query.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match=r"Block 0 .* lacks \['key', 'value'\]"):
        timm_state_from_dinov2(state)


def test_conch15_pooler_is_bias_free_multihead_attention():
    """The pooler equals ``nn.MultiheadAttention`` given its q, k, v and output projections."""
    torch.manual_seed(0)
    pooler = ConchV15Pooler(48, 64, n_heads=4, n_queries=1).eval()
    attention = torch.nn.MultiheadAttention(48, 4, kdim=64, vdim=64, bias=False, batch_first=True)
    with torch.no_grad():
        attention.q_proj_weight.copy_(pooler.to_q.weight)
        attention.k_proj_weight.copy_(pooler.to_kv.weight[:48])
        attention.v_proj_weight.copy_(pooler.to_kv.weight[48:])
        attention.out_proj.weight.copy_(pooler.to_out.weight)
    tokens = torch.randn(3, 10, 64)
    query = pooler.ln_q(pooler.query).expand(3, -1, -1)
    context = pooler.ln_k(tokens)
    with torch.inference_mode():
        expected = attention(query, context, context, need_weights=False)[0]
        torch.testing.assert_close(pooler(tokens), expected, rtol=1e-5, atol=1e-6)


def test_conch15_position_embedding_is_resampled_as_titan_does():
    """DINO-style: bicubic with scale (28 + 0.1) / 14, class position kept; constants stay constant."""
    pos_embed = torch.randn(1, 1 + 14 * 14, 8, generator=torch.Generator().manual_seed(0))
    resampled = dino_resample_pos_embed(pos_embed, 28)
    assert resampled.shape == (1, 1 + 28 * 28, 8)
    torch.testing.assert_close(resampled[:, 0], pos_embed[:, 0])
    grid = pos_embed[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    by_scale = torch.nn.functional.interpolate(grid, scale_factor=28.1 / 14, mode="bicubic")
    by_size = torch.nn.functional.interpolate(grid, size=(28, 28), mode="bicubic")
    torch.testing.assert_close(resampled[0, 1:].T.reshape(8, 28, 28), by_scale[0])
    assert not torch.allclose(by_scale, by_size)  # a target size would give other positions
    constant = dino_resample_pos_embed(torch.full((1, 197, 4), 0.25), 28)
    torch.testing.assert_close(constant, torch.full((1, 785, 4), 0.25))


def test_conch15_file_without_trunk_is_named():
    with pytest.raises(ValueError, match="conch_v1_5_pytorch_model.bin.*MahmoodLab/TITAN"):
        conch15_state({"visual.trunk.pos_embed": torch.zeros(1)})


@pytest.mark.slow  # about a minute: two ViT-L/16 and a 1.2 GB file
def test_phikon2_official_file_loads_strictly_and_matches_transformers(tmp_path):
    config = transformers.Dinov2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16, image_size=224,
        layerscale_value=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    source = transformers.Dinov2Model(config).eval()
    source.save_pretrained(tmp_path)
    encoder = hd.encoders.load("phikon2", weights=tmp_path / "model.safetensors", device="cpu")
    patches = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = source(pixel_values=encoder.preprocess(patches)).last_hidden_state[:, 0]
        torch.testing.assert_close(encoder(patches), expected, rtol=1e-4, atol=1e-4)
    assert expected.shape == (2, 1024)
    embedding = embed_four_spots("phikon2", tmp_path / "model.safetensors")
    assert embedding.shape == (4, 1024) and np.isfinite(embedding).all()


@pytest.mark.slow  # about a minute: a ViT-L/16 at 448 px and its 1.2 GB file
def test_conch15_official_file_loads_strictly(tmp_path):
    """TITAN's layout: the trunk at 224 px (197 positions), pooler and LayerNorm; embeddings differ per patch."""
    torch.manual_seed(0)
    trunk = timm.create_model("vit_large_patch16_224", init_values=1.0, num_classes=0)
    pooler = ConchV15Pooler(768, 1024, n_heads=8, n_queries=1)
    state = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    state |= {f"attn_pool_contrast.{k}": v for k, v in pooler.state_dict().items()}
    state |= {"ln_contrast.weight": torch.ones(768), "ln_contrast.bias": torch.zeros(768)}
    torch.save(state, tmp_path / "conch_v1_5_pytorch_model.bin")
    encoder = hd.encoders.load("conch15", weights=tmp_path / "conch_v1_5_pytorch_model.bin", device="cpu")
    patches = torch.randint(0, 256, (2, 512, 512, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = encoder(patches)
    assert out.shape == (2, 768) and not torch.allclose(out[0], out[1], atol=1e-3)
    torch.testing.assert_close(
        encoder.model.trunk.pos_embed.detach(), dino_resample_pos_embed(trunk.pos_embed.detach(), 28)
    )
    embedding = embed_four_spots("conch15", tmp_path / "conch_v1_5_pytorch_model.bin")
    assert embedding.shape == (4, 768) and np.isfinite(embedding).all()
