"""CONCH's image tower: a timm ViT-B/16 trunk at 448 px and CoCa's attentional pooler.

Parameter names match the ``visual.*`` keys of the official checkpoint
(huggingface.co/MahmoodLab/CONCH, ``pytorch_model.bin``: the whole CoCa model, text tower
and caption decoder included), so that checkpoint loads strictly once
:func:`visual_state` has taken the image tower out of it.

Two entries are registered:

- ``conch`` (512-d): the attentional pooler's output after its LayerNorm, *before* the
  contrastive projection. It is what CONCH's ``encode_image(image, proj_contrast=False,
  normalize=False)`` returns, the output CONCH's authors recommend for image-only downstream
  tasks (linear probes, MIL), and the one used by the source paper.
- ``conch_proj`` (512-d): the same followed by the 512 x 512 ``proj_contrast``, i.e. CONCH's
  joint image-text space (``encode_image(image, normalize=False)``), for comparisons with
  CONCH's text embeddings.

Patches are cut like the other encoders' (224 px at 0.5 um/px, 112 um of tissue) and resized
bicubically to the 448 px the trunk was trained at, so that every encoder sees the same field.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ._registry import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Encoder, WeightsSource, register

#: Width of the trunk's tokens and of the pooled embedding.
TRUNK_DIM = 768
EMBED_DIM = 512
POOLER_HEADS = 8
#: Checkpoint keys of the caption pooler, used only by CONCH's text decoder.
CAPTION_PREFIXES = ("attn_pool_caption.", "ln_caption.")


class AttentionalPooler(nn.Module):
    """Learned queries attending to the trunk's tokens (CoCa's pooler, one query for the image embedding).

    Parameters
    ----------
    dim
        Width of the queries and of the output.
    context_dim
        Width of the tokens attended to.
    n_heads
        Attention heads.
    n_queries
        Number of learned queries, i.e. of output vectors per image.
    """

    def __init__(self, dim: int, context_dim: int, *, n_heads: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, dim))
        self.attn = nn.MultiheadAttention(dim, n_heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(b, n_tokens, context_dim)`` to ``(b, n_queries, dim)``."""
        context = self.ln_k(tokens)
        query = self.ln_q(self.query).expand(tokens.shape[0], -1, -1)
        return self.attn(query, context, context, need_weights=False)[0]


class ConchVisual(nn.Module):
    """CONCH's image tower up to the contrastive embedding, optionally projected.

    Parameters
    ----------
    project
        Apply CONCH's 512 x 512 contrastive projection (``proj_contrast``).
    """

    def __init__(self, *, project: bool) -> None:
        import timm

        super().__init__()
        self.trunk = timm.create_model(
            "vit_base_patch16_224", img_size=448, num_classes=0, global_pool="", dynamic_img_size=True
        )
        self.attn_pool_contrast = AttentionalPooler(EMBED_DIM, TRUNK_DIM, n_heads=POOLER_HEADS, n_queries=1)
        self.ln_contrast = nn.LayerNorm(EMBED_DIM)
        self.proj_contrast = nn.Parameter(TRUNK_DIM**-0.5 * torch.randn(EMBED_DIM, EMBED_DIM)) if project else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(b, 3, 448, 448)`` images to ``(b, 512)`` embeddings."""
        tokens = self.trunk.forward_features(images)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled if self.proj_contrast is None else pooled @ self.proj_contrast


def visual_state(state: dict[str, torch.Tensor], *, project: bool) -> dict[str, torch.Tensor]:
    """The image tower's weights out of CONCH's whole CoCa state dict.

    Keeps the ``visual.*`` keys without their prefix (and without a ``module.`` prefix of
    checkpoints saved from DataParallel, which CONCH's own loader strips too), and deliberately
    drops what :class:`ConchVisual` does not use: the caption pooler, the projection unless
    ``project``, and the text tower, decoder and logit scale.
    """
    unused = CAPTION_PREFIXES + (() if project else ("proj_contrast",))
    visual = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("visual."):
            key = key.removeprefix("visual.")
            if not key.startswith(unused):
                visual[key] = value
    if not visual:
        raise ValueError(
            "The weights file holds no `visual.*` keys. The 'conch' encoders expect CONCH's whole CoCa "
            "checkpoint, `pytorch_model.bin` from https://huggingface.co/MahmoodLab/CONCH."
        )
    return visual


def conch_entry(*, project: bool) -> Encoder:
    """The registry entry of CONCH's image tower, with or without the contrastive projection."""
    return Encoder(
        name="conch_proj" if project else "conch",
        dim=EMBED_DIM,
        build=partial(ConchVisual, project=project),
        input_size=448,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        interpolation="bicubic",
        weights=WeightsSource("MahmoodLab/CONCH", "pytorch_model.bin", extract=partial(visual_state, project=project)),
        description=(
            "CONCH (Lu et al. 2024): vision-language ViT-B/16 at 448 px, "
            + ("projected into the image-text space." if project else "image embedding before the projection.")
        ),
    )


register(conch_entry(project=False))
register(conch_entry(project=True))
