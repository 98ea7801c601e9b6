"""CONCH v1.5, TITAN's patch encoder: a ViT-L/16 at 448 px and an attentional pooler, 768-d.

The official checkpoint is ``conch_v1_5_pytorch_model.bin`` in huggingface.co/MahmoodLab/TITAN
(TITAN's ``return_conch()`` loads it). Its keys are ``trunk.*`` (a timm-layout ViT-L/16 built for
224 px, so its position embedding has 14 x 14 + 1 entries), ``attn_pool_contrast.*`` and
``ln_contrast.*``. TITAN feeds 448-pixel images and interpolates the position embedding at every
forward pass, DINO-style (bicubic, scale factor ``(28 + 0.1) / 14``); :func:`conch15_state` does
that interpolation once when loading, so the module here is a plain 448-pixel timm ViT and
computes the same embedding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._registry import Encoder, WeightsSource, register

TRUNK_DIM = 1024
EMBED_DIM = 768
POOLER_HEADS = 8
INPUT_SIZE = 448
PATCH = 16


class ConchV15Pooler(nn.Module):
    """CONCH v1.5's attentional pooler: learned queries attend to the trunk's tokens, no biases.

    Its parameters are those of CONCH v1's :class:`~histodecon.encoders._conch.AttentionalPooler`;
    the projections are its own ``to_q`` / ``to_kv`` / ``to_out``, as TITAN names them.
    """

    def __init__(self, dim: int, context_dim: int, *, n_heads: int, n_queries: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Parameter(torch.randn(n_queries, dim))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(b, n_tokens, context_dim)`` to ``(b, n_queries, dim)``."""
        b, n, _ = tokens.shape
        n_queries, dim = self.query.shape
        head = dim // self.n_heads
        query = self.to_q(self.ln_q(self.query)).view(1, n_queries, self.n_heads, head).transpose(1, 2)
        key, value = self.to_kv(self.ln_k(tokens)).view(b, n, 2, self.n_heads, head).permute(2, 0, 3, 1, 4)
        attention = (query * head**-0.5 @ key.transpose(-2, -1)).softmax(dim=-1)
        pooled = (attention @ value).transpose(1, 2).reshape(b, n_queries, dim)
        return self.to_out(pooled)


class ConchV15Visual(nn.Module):
    """CONCH v1.5's image tower: ViT-L/16 trunk at 448 px, attentional pooler, LayerNorm; 768 features."""

    def __init__(self) -> None:
        import timm

        super().__init__()
        self.trunk = timm.create_model(
            "vit_large_patch16_224", img_size=INPUT_SIZE, init_values=1.0, num_classes=0, global_pool=""
        )
        self.attn_pool_contrast = ConchV15Pooler(EMBED_DIM, TRUNK_DIM, n_heads=POOLER_HEADS, n_queries=1)
        self.ln_contrast = nn.LayerNorm(EMBED_DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(b, 3, 448, 448)`` images to ``(b, 768)`` embeddings."""
        return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(images))[:, 0])


def dino_resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """A class-token-first ``(1, 1 + g * g, d)`` position embedding resampled to ``grid x grid``, as DINO does.

    Bicubic with the scale factor ``(grid + 0.1) / g`` (not a target size), which is what the
    ``interpolate_pos_encoding`` of TITAN's CONCH v1.5 computes at every forward pass.
    """
    source = math.isqrt(pos_embed.shape[1] - 1)
    if source == grid:
        return pos_embed
    class_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    scale = (grid + 0.1) / source
    patch_pos = nn.functional.interpolate(
        patch_pos.reshape(1, source, source, -1).permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic"
    )
    return torch.cat([class_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def conch15_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official CONCH v1.5 state dict with its position embedding resampled to the 448-pixel grid."""
    if "trunk.pos_embed" not in state:
        raise ValueError(
            "The weights file holds no `trunk.pos_embed`. The 'conch15' encoder expects CONCH v1.5's image "
            "tower, `conch_v1_5_pytorch_model.bin` from https://huggingface.co/MahmoodLab/TITAN."
        )
    return state | {"trunk.pos_embed": dino_resample_pos_embed(state["trunk.pos_embed"], INPUT_SIZE // PATCH)}


register(
    Encoder(
        name="conch15",
        dim=EMBED_DIM,
        build=ConchV15Visual,
        input_size=INPUT_SIZE,
        patch_size=512,
        weights=WeightsSource("MahmoodLab/TITAN", "conch_v1_5_pytorch_model.bin", extract=conch15_state),
        description=(
            "CONCH v1.5 (TITAN's patch encoder, Ding et al. 2024): ViT-L/16 at 448 px with an attentional "
            "pooler; 512-px patches at 0.5 um/px resized to 448."
        ),
    )
)
