"""Every foundation entry against its authors' own recipe, written here independently of the registry.

Each recipe is the ``timm.create_model(...)`` call of the model card (with the ``model_args``
of the ``config.json`` that ``hf-hub:`` reads), or for CONCH v1.5 the layout of TITAN's file.
Fast tests build both on the meta device and compare module structure, key names and shapes;
slow tests save the recipe's random weights as the authors publish them, load the file through
``hd.encoders.load`` and compare embeddings with the recipe's own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import timm
import torch
from torch import nn

import histodecon as hd
from histodecon._constants import Key
from histodecon.io._build import build_sdata

#: UNI2-h's model card, word for word (huggingface.co/MahmoodLab/UNI2-h).
UNI2_KWARGS = {
    "img_size": 224,
    "patch_size": 14,
    "depth": 24,
    "num_heads": 24,
    "init_values": 1e-5,
    "embed_dim": 1536,
    "mlp_ratio": 2.66667 * 2,
    "num_classes": 0,
    "no_embed_class": True,
    "mlp_layer": timm.layers.SwiGLUPacked,
    "act_layer": torch.nn.SiLU,
    "reg_tokens": 8,
    "dynamic_img_size": True,
}


def uni() -> nn.Module:
    """huggingface.co/MahmoodLab/UNI: the card's ``timm.create_model`` without the Hub."""
    return timm.create_model(
        "vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True
    )


def uni2() -> nn.Module:
    return timm.create_model("vit_giant_patch14_224", pretrained=False, **UNI2_KWARGS)


def virchow2() -> nn.Module:
    """``create_model("hf-hub:paige-ai/Virchow2", mlp_layer=SwiGLUPacked, act_layer=SiLU)``: its config.json's args."""
    return timm.create_model(
        "vit_huge_patch14_224",
        img_size=224,
        init_values=1e-5,
        num_classes=0,
        mlp_ratio=5.3375,
        reg_tokens=4,
        global_pool="",
        dynamic_img_size=True,
        mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU,
    )


def virchow2_embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The card's embedding: class token and mean of the patch tokens (after 1 class and 4 register tokens)."""
    output = model(images)
    return torch.cat([output[:, 0], output[:, 5:].mean(1)], dim=-1)


def hoptimus() -> nn.Module:
    """``create_model("hf-hub:bioptimus/H-optimus-0", init_values=1e-5, dynamic_img_size=False)`` (and -1)."""
    return timm.create_model(
        "vit_giant_patch14_reg4_dinov2", img_size=224, num_classes=0, init_values=1e-5, dynamic_img_size=False
    )


def gigapath() -> nn.Module:
    """``create_model("hf_hub:prov-gigapath/prov-gigapath")``: the ``model_args`` of its config.json."""
    return timm.create_model(
        "vit_giant_patch14_dinov2",
        img_size=224,
        in_chans=3,
        patch_size=16,
        embed_dim=1536,
        depth=40,
        num_heads=24,
        init_values=1e-5,
        mlp_ratio=5.33334,
        num_classes=0,
    )


class Conch15(nn.Module):
    """CONCH v1.5 as TITAN's ``return_conch()`` computes it, from torch and timm parts only.

    The trunk is a 224-px timm ViT-L/16 whose position embedding is resampled at every forward
    pass to the 448-px grid (bicubic, scale ``(28 + 0.1) / 14``, DINO's ``interpolate_pos_encoding``);
    the pooler is one learned query attending to the tokens without biases, written here with
    torch's own multi-head attention; then a LayerNorm. Its state dict has the keys of TITAN's file.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = timm.create_model("vit_large_patch16_224", init_values=1.0, num_classes=0)
        self.attn_pool_contrast = nn.Module()
        self.attn_pool_contrast.query = nn.Parameter(torch.randn(1, 768))
        self.attn_pool_contrast.ln_q = nn.LayerNorm(768)
        self.attn_pool_contrast.ln_k = nn.LayerNorm(1024)
        self.attn_pool_contrast.to_q = nn.Linear(768, 768, bias=False)
        self.attn_pool_contrast.to_kv = nn.Linear(1024, 2 * 768, bias=False)
        self.attn_pool_contrast.to_out = nn.Linear(768, 768, bias=False)
        self.ln_contrast = nn.LayerNorm(768)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        trunk, pool = self.trunk, self.attn_pool_contrast
        tokens = trunk.patch_embed.proj(images).flatten(2).transpose(1, 2)  # any image size, as TITAN's ViT
        grid = images.shape[-1] // 16
        patch_pos = trunk.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
        patch_pos = nn.functional.interpolate(patch_pos, scale_factor=(grid + 0.1) / 14, mode="bicubic")
        pos = torch.cat([trunk.pos_embed[:, :1], patch_pos.flatten(2).transpose(1, 2)], dim=1)
        tokens = torch.cat([trunk.cls_token.expand(len(images), -1, -1), tokens], dim=1) + pos
        tokens = trunk.norm(trunk.blocks(tokens))
        query = pool.ln_q(pool.query).expand(len(images), -1, -1).transpose(0, 1)  # (1, b, 768)
        context = pool.ln_k(tokens).transpose(0, 1)
        key_weight, value_weight = pool.to_kv.weight.chunk(2)
        pooled, _ = nn.functional.multi_head_attention_forward(
            query, context, context, 768, 8, None, None, None, None, False, 0.0, pool.to_out.weight, None,
            training=False, need_weights=False, use_separate_proj_weight=True,
            q_proj_weight=pool.to_q.weight, k_proj_weight=key_weight, v_proj_weight=value_weight,
        )  # fmt: skip
        return self.ln_contrast(pooled[0])


def class_token(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The embedding of the cards that use the model's output as it is (its pooled class token)."""
    return model(images)


@dataclass(frozen=True)
class Recipe:
    """An encoder as its authors build it: ``build()`` and the card's ``embed(model, images)``."""

    build: Callable[[], nn.Module]
    embed: Callable[[nn.Module, torch.Tensor], torch.Tensor] = class_token
    input_size: int = 224


RECIPES = {
    "uni": Recipe(uni),
    "uni2": Recipe(uni2),
    "virchow2": Recipe(virchow2, virchow2_embedding),
    "hoptimus0": Recipe(hoptimus),
    "hoptimus1": Recipe(hoptimus),
    "gigapath": Recipe(gigapath),
    "conch15": Recipe(Conch15, input_size=448),
}


def token_handling(vit: nn.Module) -> tuple:
    """How a timm ViT pools and places its tokens: settings without parameters of their own."""
    return (vit.global_pool, vit.num_prefix_tokens, vit.no_embed_class, vit.dynamic_img_size, vit.has_class_token)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


@pytest.mark.parametrize("name", list(RECIPES))
def test_entry_is_the_authors_architecture(name):
    """The authors' keys and shapes, after the entry's ``extract``, are exactly its module's; so are its layers.

    The layers (activations, norms, MLP kind) and the token handling are what key names and
    shapes cannot show; CONCH v1.5's pooler is compared by value in the slow test.
    """
    entry = hd.encoders.get(name)
    with torch.device("meta"):
        authors, ours = RECIPES[name].build(), entry.build()
    assert shapes(entry.weights.extract(authors.state_dict())) == shapes(ours.state_dict())
    if name != "conch15":
        ours = getattr(ours, "trunk", ours)  # Virchow2's pooling wraps the card's model
        assert repr(ours) == repr(authors)
        assert token_handling(ours) == token_handling(authors)


def test_conch15_file_layout_is_titans():
    """TITAN's ``conch_v1_5_pytorch_model.bin``: a 224-px trunk (197 positions), the pooler and its LayerNorm."""
    with torch.device("meta"):
        state = Conch15().state_dict()
    assert shapes(state)["trunk.pos_embed"] == (1, 197, 1024)
    assert {k: v for k, v in shapes(state).items() if not k.startswith("trunk.")} == {
        "attn_pool_contrast.query": (1, 768),
        "attn_pool_contrast.ln_q.weight": (768,),
        "attn_pool_contrast.ln_q.bias": (768,),
        "attn_pool_contrast.ln_k.weight": (1024,),
        "attn_pool_contrast.ln_k.bias": (1024,),
        "attn_pool_contrast.to_q.weight": (768, 768),
        "attn_pool_contrast.to_kv.weight": (1536, 1024),
        "attn_pool_contrast.to_out.weight": (768, 768),
        "ln_contrast.weight": (768,),
        "ln_contrast.bias": (768,),
    }


def four_spot_slide():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 640, 640), dtype=np.uint8)
    centres = 320 + rng.uniform(-100, 100, (4, 2))
    return build_sdata(image, centres, sample="S", mpp=0.5, spot_diameter_px=110.0, spot_ids=list("abcd"))


@pytest.mark.slow  # a random ViT-L to ViT-g built twice, written to disk and read back: 1 to 5 min each
@pytest.mark.parametrize("name", list(RECIPES))
def test_authors_checkpoint_gives_the_authors_embedding(name, tmp_path):
    recipe, entry = RECIPES[name], hd.encoders.get(name)
    torch.manual_seed(0)
    source = recipe.build().eval()
    for key, parameter in source.named_parameters():  # LayerScale at 1e-5 would hide a wrong block
        if key.endswith(".gamma"):
            parameter.data.fill_(0.2)
    path = tmp_path / entry.weights.filename
    torch.save(source.state_dict(), path)
    encoder = hd.encoders.load(name, weights=path, device="cpu")
    assert encoder.provenance["weights"] == str(path)
    size = recipe.input_size
    patches = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = recipe.embed(source, encoder.preprocess(patches))
        torch.testing.assert_close(encoder(patches), expected, rtol=1e-4, atol=1e-4)
    assert expected.shape == (2, entry.dim) and not torch.allclose(expected[0], expected[1], atol=1e-3)
    del source, encoder
    slide = four_spot_slide()
    hd.tl.embed(slide, models=[name], weights={name: path}, batch_size=2, device="cpu")
    embedding = slide.tables[Key.tables.table].obsm[Key.obsm.embedding(name)]
    assert embedding.shape == (4, entry.dim) and np.isfinite(embedding).all()
