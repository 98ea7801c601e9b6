"""Phikon-v2 (Owkin): a DINOv2 ViT-L/16 published as a Hugging Face ``transformers`` ``Dinov2Model``.

The official ``model.safetensors`` (huggingface.co/owkin/phikon-v2) uses the ``transformers``
key layout (``embeddings.*``, ``encoder.layer.<i>.*``, ``layernorm.*``, separate query, key and
value projections). :func:`timm_state_from_dinov2` renames it to the equivalent timm ViT-L/16,
so that the encoder needs timm only and the file still loads strictly: every key of the file
is used, except DINOv2's ``mask_token``, which only masked-image training reads.
The embedding is the class token after the final LayerNorm, as the model card's
``outputs.last_hidden_state[:, 0, :]``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ._registry import Encoder, WeightsSource, register

#: ``transformers`` Dinov2 key patterns and their timm names; ``{i}`` is the block index.
_BLOCK_KEYS = {
    "norm1": "norm1",
    "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale2.lambda1": "ls2.gamma",
}
_TOP_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_BLOCK = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def build_phikon2() -> nn.Module:
    """Phikon-v2's architecture in timm: ViT-L/16 at 224 px with LayerScale; the class token gives 1024 features."""
    import timm

    return timm.create_model("vit_large_patch16_224", img_size=224, init_values=1e-5, num_classes=0)


def timm_state_from_dinov2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``transformers`` ``Dinov2Model`` state dict to timm's ViT names.

    Query, key and value projections are stacked into timm's single ``qkv`` projection, in that
    order; ``embeddings.mask_token`` is dropped. A key the mapping does not know is kept under
    its own name, so that the strict load reports it as unexpected.
    """
    converted: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.mask_token":
            continue
        if key in _TOP_KEYS:
            converted[_TOP_KEYS[key]] = value
            continue
        match = _BLOCK.fullmatch(key)
        if match is None:
            converted[key] = value
            continue
        index, module, kind = match.groups()
        projection = module.removeprefix("attention.attention.")
        if projection in ("query", "key", "value") and module.startswith("attention.attention."):
            qkv.setdefault((index, kind), {})[projection] = value
        elif module in _BLOCK_KEYS or f"{module}.{kind}" in _BLOCK_KEYS:
            name = _BLOCK_KEYS.get(f"{module}.{kind}") or f"{_BLOCK_KEYS[module]}.{kind}"
            converted[f"blocks.{index}.{name}"] = value
        else:
            converted[key] = value
    for (index, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(
                f"Block {index} of the Phikon-v2 file lacks {sorted({'query', 'key', 'value'} - set(parts))} "
                f"{kind}s. Check that the file is the complete `model.safetensors` of owkin/phikon-v2."
            )
        converted[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return converted


register(
    Encoder(
        name="phikon2",
        dim=1024,
        build=build_phikon2,
        interpolation="bicubic",
        weights=WeightsSource("owkin/phikon-v2", "model.safetensors", extract=timm_state_from_dinov2),
        description="Phikon-v2 (Filiot et al. 2024): DINOv2 ViT-L/16 trained on 460M tiles, class token, 224 px.",
    )
)
