"""UNI, UNI2-h and any timm model as registry entries: exact timm architectures, published weights.

The timm keyword arguments are those of the official model cards (huggingface.co/MahmoodLab/UNI
and /UNI2-h), so the published ``pytorch_model.bin`` files load strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import Any

import torch
from torch import nn

from ._registry import IMAGENET_MEAN, IMAGENET_STD, Encoder, WeightsSource, register, register_scheme

#: File name of a ``timm:<name>`` model's weights, as timm publishes them on the Hugging Face Hub.
TIMM_WEIGHTS_FILE = "model.safetensors"
#: Resize modes the patch encoder supports; other timm interpolations fall back to bicubic.
RESIZE_MODES = ("bilinear", "bicubic")


def build_uni() -> nn.Module:
    """UNI: ViT-L/16 at 224 px with LayerScale (init 1e-5); the CLS token gives 1024 features."""
    import timm

    return timm.create_model(
        "vit_large_patch16_224",
        img_size=224,
        patch_size=16,
        init_values=1e-5,
        num_classes=0,
        dynamic_img_size=True,
    )


def build_uni2() -> nn.Module:
    """UNI2-h: ViT-H/14 with SwiGLU MLPs, SiLU and 8 register tokens; the CLS token gives 1536 features."""
    import timm

    return timm.create_model(
        "vit_giant_patch14_224",
        img_size=224,
        patch_size=14,
        depth=24,
        num_heads=24,
        init_values=1e-5,
        embed_dim=1536,
        mlp_ratio=2.66667 * 2,
        num_classes=0,
        no_embed_class=True,
        mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU,
        reg_tokens=8,
        dynamic_img_size=True,
    )


register(
    Encoder(
        name="uni",
        dim=1024,
        build=build_uni,
        weights=WeightsSource("MahmoodLab/UNI", "pytorch_model.bin"),
        description="UNI (Chen et al. 2024): ViT-L/16 self-supervised on 100k H&E slides, 224 px at 0.5 um/px.",
    )
)

register(
    Encoder(
        name="uni2",
        dim=1536,
        build=build_uni2,
        weights=WeightsSource("MahmoodLab/UNI2-h", "pytorch_model.bin"),
        description="UNI2-h: ViT-H/14 with register tokens, self-supervised on 350k slides, 224 px at 0.5 um/px.",
    )
)


@lru_cache
def timm_entry(model_name: str) -> Encoder:
    """The entry ``timm:<model_name>``: any timm model without its classifier, randomly initialised.

    Preprocessing (input size, mean, std, interpolation) comes from timm's pretrained config of
    the model; the embedding length from a forward pass on the meta device (``num_features`` is
    not always the output length, e.g. MobileNetV3). Weights come from an explicit path,
    ``$HISTODECON_WEIGHTS_DIR/timm:<model_name>/model.safetensors``, or the model's timm
    repository on the Hugging Face Hub; classifier weights in the file are dropped.

    Examples
    --------
    >>> import histodecon as hd
    >>> hd.encoders.get("timm:resnet18").dim
    512
    """
    import timm

    if not timm.is_model(model_name):
        raise KeyError(f"'timm:{model_name}' names no timm model. List them with `timm.list_models('*pattern*')`.")
    return timm_encoder(
        f"timm:{model_name}",
        partial(timm.create_model, model_name, pretrained=False, num_classes=0),
        weights_file=TIMM_WEIGHTS_FILE,
        description=f"timm model {model_name!r} without its classifier.",
    )


def timm_encoder(
    name: str,
    build: Callable[[], nn.Module],
    *,
    config: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    weights_file: str,
    description: str,
) -> Encoder:
    """The entry of a timm model built without its classifier, preprocessed as its pretrained config says.

    ``config`` is that config; ``None`` takes the built model's ``pretrained_cfg`` (timm resolves
    deprecated names and default tags on building), and ``repo_id=None`` its ``hf_hub_id``.
    Input size, mean, std and resize mode come from it (timm's defaults where absent; resize
    modes other than bilinear fall back to bicubic); the embedding length from a forward pass on
    the meta device (``num_features`` is not always the output length, e.g. MobileNetV3).
    Classifier weights in the weights file are dropped.
    """
    with torch.device("meta"):
        model = build()
        config = model.pretrained_cfg if config is None else config
        size = config.get("input_size", (3, 224, 224))[-1]
        dim = model(torch.empty(1, 3, size, size)).shape[-1]
    classifier = config.get("classifier") or ()
    interpolation = config.get("interpolation", "bicubic")
    return Encoder(
        name=name,
        dim=dim,
        build=build,
        input_size=size,
        patch_size=size,
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        interpolation=interpolation if interpolation in RESIZE_MODES else "bicubic",
        weights=WeightsSource(
            repo_id or config.get("hf_hub_id"),
            weights_file,
            extract=partial(drop_classifier, classifier=(classifier,) if isinstance(classifier, str) else classifier),
        ),
        description=description,
    )


register_scheme("timm", timm_entry, description="any timm model")


def drop_classifier(state: dict[str, torch.Tensor], *, classifier: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``state`` without the classifier's weights, which a model built with ``num_classes=0`` lacks."""
    prefixes = tuple(f"{name}." for name in classifier)
    return {key: value for key, value in state.items() if not key.startswith(prefixes)}
