"""Virchow2, H-optimus-0/1, Prov-GigaPath, Phikon-v2 and CONCH v1.5: architectures, preprocessing, loading."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import histodecon as hd
from histodecon.encoders._foundation import (
    HOPTIMUS_MEAN,
    HOPTIMUS_STD,
    ClassAndMeanPatchToken,
    build_gigapath,
    build_hoptimus,
)

transforms = pytest.importorskip("torchvision.transforms", reason="torchvision gives the model cards' transforms")


@pytest.mark.parametrize(
    ("name", "millions", "dim"),
    [
        ("virchow2", 631, 2560),  # published: 632M (ViT-H/14); 631.24M counted
        ("hoptimus0", 1135, 1536),  # published: 1.1B (ViT-g/14)
        ("hoptimus1", 1135, 1536),
        ("gigapath", 1135, 1536),  # published: 1.13B
        ("phikon2", 303, 1024),  # published: 300M (ViT-L/16)
        ("conch15", 307, 768),  # ViT-L/16 at 448 px (785 positions) + pooler; 306.7M
    ],
)
def test_parameter_count_and_dim(name, millions, dim, meta_count_and_dim):
    count, out_dim = meta_count_and_dim(name)
    assert round(count / 1e6) == millions
    assert out_dim == hd.encoders.get(name).dim == dim


@pytest.mark.parametrize(
    ("name", "input_size", "patch_size", "mean", "std"),
    [
        ("virchow2", 224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("hoptimus0", 224, 224, HOPTIMUS_MEAN, HOPTIMUS_STD),
        ("hoptimus1", 224, 224, HOPTIMUS_MEAN, HOPTIMUS_STD),
        ("gigapath", 224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("phikon2", 224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("conch15", 448, 512, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_entries_record_the_model_cards_preprocessing(name, input_size, patch_size, mean, std):
    entry = hd.encoders.get(name)
    assert (entry.input_size, entry.patch_size, entry.mpp, entry.mean, entry.std) == (
        input_size,
        patch_size,
        0.5,
        mean,
        std,
    )


def card_transform(name: str):
    """The torchvision transform each model card (or TITAN's ``return_conch``) gives."""
    entry = hd.encoders.get(name)
    normalize = [transforms.ToTensor(), transforms.Normalize(entry.mean, entry.std)]
    bicubic, bilinear = transforms.InterpolationMode.BICUBIC, transforms.InterpolationMode.BILINEAR
    resize = {
        "virchow2": [transforms.Resize(224, interpolation=bicubic), transforms.CenterCrop(224)],
        "hoptimus0": [],
        "phikon2": [transforms.Resize(224, interpolation=bicubic), transforms.CenterCrop(224)],
        "conch15": [transforms.Resize(448, interpolation=bilinear), transforms.CenterCrop(448)],
    }[name]
    return transforms.Compose(resize + normalize)


@pytest.mark.parametrize(("name", "size"), [("virchow2", 224), ("hoptimus0", 224), ("phikon2", 224), ("conch15", 512)])
def test_preprocessing_matches_the_model_card(name, size):
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    expected = card_transform(name)(Image.fromarray(image))
    encoder = hd.encoders.PatchEncoder(hd.encoders.get(name), torch.nn.Identity(), {})
    ours = encoder.preprocess(torch.from_numpy(image)[None])[0]
    # PIL resizes in uint8, the encoder in float: one grey level at most after normalisation.
    torch.testing.assert_close(ours, expected, rtol=0, atol=1.01 / 255 / min(encoder.entry.std))


def test_gigapath_centre_crop_of_256_tiles_is_a_224_patch_at_the_same_scale():
    """The card resizes 256-px tiles to 256 and crops 224: the model sees a 224-px patch at 0.5 um/px."""
    image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    card = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    encoder = hd.encoders.PatchEncoder(hd.encoders.get("gigapath"), torch.nn.Identity(), {})
    centre = torch.from_numpy(image[16:240, 16:240].copy())[None]
    torch.testing.assert_close(encoder.preprocess(centre)[0], card(Image.fromarray(image)))


def test_virchow2_architecture_matches_the_model_card():
    with torch.device("meta"):
        trunk = hd.encoders.get("virchow2").build().trunk
    assert (trunk.patch_embed.patch_size, len(trunk.blocks), trunk.embed_dim, trunk.num_reg_tokens) == (
        (14, 14),
        32,
        1280,
        4,
    )
    assert trunk.num_prefix_tokens == 5 and trunk.pos_embed.shape == (1, 261, 1280)
    mlp = trunk.blocks[0].mlp  # SwiGLU packed, SiLU gate: fc1 6832 -> fc2 3416, as in the published file
    assert isinstance(mlp, timm.layers.GluMlp) and isinstance(mlp.act, torch.nn.SiLU)
    assert (mlp.fc1.weight.shape, mlp.fc2.weight.shape) == ((6832, 1280), (1280, 3416))


class TokensTrunk(torch.nn.Module):
    """Stands in for a ViT trunk: fixed tokens, 1 class and 4 register tokens first."""

    num_prefix_tokens = 5

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.tokens = tokens

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens


def test_virchow2_embedding_is_class_token_and_mean_patch_token():
    """Registers are left out of the mean, as the card's ``output[:, 5:]``."""
    tokens = torch.randn(2, 5 + 256, 8, generator=torch.Generator().manual_seed(0))
    out = ClassAndMeanPatchToken(TokensTrunk(tokens))(torch.empty(2, 3, 224, 224))
    torch.testing.assert_close(out, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))


def test_hoptimus_and_gigapath_architectures():
    with torch.device("meta"):
        hoptimus, gigapath = build_hoptimus(), build_gigapath()
    assert (hoptimus.patch_embed.patch_size, len(hoptimus.blocks), hoptimus.num_reg_tokens) == ((14, 14), 40, 4)
    assert hoptimus.no_embed_class and hoptimus.pos_embed.shape == (1, 256, 1536)
    assert not hoptimus.dynamic_img_size and hoptimus.global_pool == "token"
    assert (gigapath.patch_embed.patch_size, len(gigapath.blocks), gigapath.num_reg_tokens) == ((16, 16), 40, 0)
    assert gigapath.pos_embed.shape == (1, 197, 1536)
    mlp = gigapath.blocks[0].mlp  # DINOv2 ViT-g's SwiGLU: fc1 8192 -> fc2 4096
    assert isinstance(mlp, timm.layers.GluMlp) and isinstance(mlp.act, torch.nn.SiLU)
    assert (mlp.fc1.weight.shape, mlp.fc2.weight.shape) == ((8192, 1536), (1536, 4096))
