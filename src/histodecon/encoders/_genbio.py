"""GenBio-PathFM (GenBio AI 2026): a ViT-g/16 with rotary positions that sees each colour channel alone.

The architecture, the key layout of the published ``model.pth`` and the preprocessing are those
of ``GenBio_PathFM_Inference`` in github.com/genbio-ai/genbio-pathfm (``genbio-pathfm/model.py``):
a single-channel DINOv3-style ViT (patch 16, width 1536, 40 blocks of 24 heads, 4 storage
tokens, SwiGLU MLP of width 4096, LayerScale, no absolute position embedding but rotary
positions with base 100, computed in bfloat16 as the authors do). Each of the R, G and B planes
of a normalised patch is encoded on its own; the three class tokens, concatenated, are the
4608-d embedding. The module below keeps the authors' parameter names, so their file loads
strictly with no conversion. It is written here rather than imported because the authors
publish no installable package; only inference is implemented (no stochastic depth, no
training-time jitter of the rotary coordinates).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._registry import Encoder, WeightsSource, register

#: Normalisation of the model card's transform (``transforms.Normalize`` after ``ToTensor``).
GENBIO_MEAN = (0.697, 0.575, 0.728)
GENBIO_STD = (0.188, 0.240, 0.187)


class RotaryPositions(nn.Module):
    """Sines and cosines of the rotary position of every patch token, as the authors compute them.

    Coordinates are the patch centres scaled to ``[-1, 1]`` separately along each axis; the
    ``head_dim // 4`` periods are ``base ** (2 k / (head_dim / 2))``. Everything is computed in
    ``dtype`` (bfloat16 in the published model), which the strict reproduction requires.
    ``periods`` is a persistent buffer, part of the published file.
    """

    def __init__(self, head_dim: int, *, base: float = 100.0, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype
        exponents = 2 * torch.arange(head_dim // 4, dtype=dtype) / (head_dim // 2)
        self.register_buffer("periods", base**exponents, persistent=True)

    def forward(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sin, cos)``, each ``(height * width, head_dim)``, row-major over the patch grid."""
        like = {"device": self.periods.device, "dtype": self.dtype}
        rows = torch.arange(0.5, height, **like) / height
        cols = torch.arange(0.5, width, **like) / width
        coords = 2.0 * torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1) - 1.0
        angles = (2 * math.pi * coords[:, :, None] / self.periods[None, None, :]).flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with the "rotate half" pairing (dimension ``i`` with ``i + d/2``)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class Attention(nn.Module):
    """Multi-head self-attention; rotary positions on the patch tokens' queries and keys only."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``(b, n, dim)`` tokens, prefix tokens first, to ``(b, n, dim)``."""
        b, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, dim // self.num_heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        sin, cos = rope
        prefix = n - sin.shape[0]
        # The authors rotate in the dtype of the sines (bfloat16), then return to the activations' dtype.
        q, k = (
            torch.cat([t[:, :, :prefix].to(sin.dtype), rotate(t[:, :, prefix:].to(sin.dtype), sin, cos)], dim=2).to(
                x.dtype
            )
            for t in (q, k)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)`` with the hidden width rounded up to a multiple of 64."""

    def __init__(self, dim: int, ratio: float, align_to: int = 64) -> None:
        super().__init__()
        hidden = int(int(dim * ratio) * 2 / 3)
        hidden += -hidden % align_to
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated MLP token-wise."""
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` of a residual branch."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``x`` channel-wise."""
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float, layerscale: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layerscale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, ffn_ratio)
        self.ls2 = LayerScale(dim, layerscale)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One block over ``(b, n, dim)`` tokens."""
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ChannelwiseViT(nn.Module):
    """GenBio-PathFM: a single-channel ViT applied to R, G and B apart, class tokens concatenated.

    Maps a normalised ``(b, 3, h, w)`` batch to ``(b, 3 * embed_dim)``, R's class token first,
    as ``GenBio_PathFM_Inference.forward``.

    Parameters
    ----------
    embed_dim, depth, num_heads
        Width, number of blocks and of attention heads.
    patch_size
        Side in pixels of a patch token.
    storage_tokens
        Register ("storage") tokens between the class token and the patch tokens.
    ffn_ratio
        MLP width over ``embed_dim`` before SwiGLU's 2/3.
    layerscale
        Initial LayerScale (the published values replace it).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 1536,
        depth: int = 40,
        num_heads: int = 24,
        patch_size: int = 16,
        storage_tokens: int = 4,
        ffn_ratio: float = 4.0,
        layerscale: float = 1e-5,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.storage_tokens = nn.Parameter(torch.randn(1, storage_tokens, embed_dim) * 0.02)
        self.rope_embed = RotaryPositions(embed_dim // num_heads)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ffn_ratio, layerscale) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def class_tokens(self, planes: torch.Tensor) -> torch.Tensor:
        """Normalised class tokens ``(n, embed_dim)`` of single-channel images ``(n, 1, h, w)``."""
        grid = self.patch_embed.proj(planes)
        height, width = grid.shape[-2:]
        tokens = grid.flatten(2).transpose(1, 2)
        prefix = torch.cat([self.cls_token, self.storage_tokens], dim=1).expand(len(planes), -1, -1)
        tokens = torch.cat([prefix, tokens], dim=1)
        rope = self.rope_embed(height, width)
        for block in self.blocks:
            tokens = block(tokens, rope)
        return self.norm(tokens)[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised RGB ``(b, 3, h, w)`` to ``(b, 3 * embed_dim)``."""
        b, channels, h, w = images.shape
        return self.class_tokens(images.reshape(b * channels, 1, h, w)).reshape(b, channels * self.embed_dim)


register(
    Encoder(
        name="genbio_pathfm",
        dim=4608,
        build=ChannelwiseViT,
        interpolation="bilinear",
        mean=GENBIO_MEAN,
        std=GENBIO_STD,
        weights=WeightsSource("genbio-ai/genbio-pathfm", "model.pth"),
        description=(
            "GenBio-PathFM (Kapse et al. 2026): ViT-g/16 with rotary positions trained with JEPA + DINO on public "
            "slides; each colour channel encoded alone, the three class tokens concatenated; 224 px, 0.5 um/px "
            "assumed (the card states no magnification)."
        ),
    )
)
