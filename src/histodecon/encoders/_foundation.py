"""Virchow2, H-optimus-0/1 and Prov-GigaPath: timm ViTs with their published keyword arguments.

Each build function passes timm the keyword arguments of the model card (or of the
``config.json`` next to the weights on the Hugging Face Hub), so that the published
checkpoint, saved with timm's own key names, loads strictly with no conversion (Virchow2's
under the ``trunk.`` of the module that pools its tokens).
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import Encoder, WeightsSource, register

#: Normalisation of H-optimus-0 and H-optimus-1 (huggingface.co/bioptimus/H-optimus-0).
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


class ClassAndMeanPatchToken(nn.Module):
    """A timm ViT ``trunk`` whose embedding is its class token concatenated with its mean patch token.

    Register tokens sit between the class token and the patch tokens and are left out of the
    mean, as in Virchow2's model card (``output[:, 5:]`` for 1 class and 4 register tokens).

    Parameters
    ----------
    trunk
        A timm ``VisionTransformer``; its ``forward_features`` gives the normalised tokens.
    """

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(b, 3, h, w)`` images to ``(b, 2 * width)`` embeddings."""
        tokens = self.trunk.forward_features(images)
        return torch.cat([tokens[:, 0], tokens[:, self.trunk.num_prefix_tokens :].mean(dim=1)], dim=-1)


def build_virchow2() -> nn.Module:
    """Virchow2: ViT-H/14, SwiGLU MLP (ratio 5.3375) with SiLU, LayerScale and 4 register tokens.

    The keyword arguments are those of ``timm.create_model("hf-hub:paige-ai/Virchow2",
    mlp_layer=SwiGLUPacked, act_layer=SiLU)`` with the ``model_args`` of the repository's
    ``config.json``.
    """
    import timm

    trunk = timm.create_model(
        "vit_huge_patch14_224",
        img_size=224,
        init_values=1e-5,
        mlp_ratio=5.3375,
        mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=nn.SiLU,
        reg_tokens=4,
        num_classes=0,
        global_pool="",
        dynamic_img_size=True,
    )
    return ClassAndMeanPatchToken(trunk)


def under_trunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT's state dict as the ``trunk`` of :class:`ClassAndMeanPatchToken`."""
    return {f"trunk.{key}": value for key, value in state.items()}


def build_hoptimus() -> nn.Module:
    """H-optimus-0 and -1: ViT-g/14 with 4 register tokens and SwiGLU, LayerScale 1e-5, 224 px; class token out."""
    import timm

    return timm.create_model(
        "vit_giant_patch14_reg4_dinov2", img_size=224, init_values=1e-5, num_classes=0, dynamic_img_size=False
    )


def build_gigapath() -> nn.Module:
    """Prov-GigaPath tile encoder: DINOv2 ViT-g with 16-pixel patches at 224 px; class token out.

    The keyword arguments are the ``model_args`` of ``config.json`` in
    huggingface.co/prov-gigapath/prov-gigapath: the ``vit_giant_patch14_dinov2`` architecture
    (DINOv2 ViT-g: SwiGLU MLP, fc1 width 8192 for mlp_ratio 5.33334) with 16-pixel patches.
    """
    import timm

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


register(
    Encoder(
        name="virchow2",
        dim=2560,
        build=build_virchow2,
        interpolation="bicubic",
        weights=WeightsSource("paige-ai/Virchow2", "pytorch_model.bin", extract=under_trunk),
        description=(
            "Virchow2 (Zimmermann et al. 2024): ViT-H/14 trained on 3.1M slides; class token and mean patch "
            "token concatenated, 224 px at 0.5 um/px."
        ),
    )
)

for _name, _repo, _title in (
    ("hoptimus0", "bioptimus/H-optimus-0", "H-optimus-0 (Bioptimus 2024)"),
    ("hoptimus1", "bioptimus/H-optimus-1", "H-optimus-1 (Bioptimus 2025)"),
):
    register(
        Encoder(
            name=_name,
            dim=1536,
            build=build_hoptimus,
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            interpolation="bicubic",
            weights=WeightsSource(_repo, "pytorch_model.bin"),
            description=f"{_title}: ViT-g/14 with 4 register tokens, class token, 224 px at 0.5 um/px.",
        )
    )

register(
    Encoder(
        name="gigapath",
        dim=1536,
        build=build_gigapath,
        interpolation="bicubic",
        weights=WeightsSource("prov-gigapath/prov-gigapath", "pytorch_model.bin"),
        description=(
            "Prov-GigaPath tile encoder (Xu et al. 2024): ViT-g/16 trained with DINOv2 on 171k slides, "
            "class token, 224 px at 0.5 um/px."
        ),
    )
)
