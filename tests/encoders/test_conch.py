import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import histodecon as hd

coca_model = pytest.importorskip(
    "conch.open_clip_custom.coca_model", reason="conch-fork (the test extra) is needed to cross-check CONCH"
)


def test_parameter_counts():
    with torch.device("meta"):
        model = hd.encoders.get("conch_proj").build()
        out = model(torch.empty(2, 3, 448, 448))
    assert out.shape == (2, 512)
    assert round(sum(p.numel() for p in model.trunk.parameters()) / 1e6) == 86
    head = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("trunk."))
    query, attention = 512, 512 * 512 + 2 * 512 * 768 + 3 * 512 + 512 * 512 + 512  # q, k, v, in bias, out
    norms = 2 * 512 + 2 * 768 + 2 * 512  # ln_q, ln_k, ln_contrast
    assert head == query + attention + norms + 512 * 512  # + proj_contrast


def test_checkpoint_without_image_tower_is_named():
    with pytest.raises(ValueError, match="no `visual.\\*` keys.*MahmoodLab/CONCH"):
        hd.encoders.get("conch").weights.extract({"text.weight": torch.zeros(1)})


def test_preprocessing_matches_conch():
    from conch.open_clip_custom.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from conch.open_clip_custom.transform import image_transform

    entry = hd.encoders.get("conch")
    assert (entry.input_size, entry.interpolation) == (448, "bicubic")
    image = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    expected = image_transform(448, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)(Image.fromarray(image))
    encoder = hd.encoders.PatchEncoder(entry, torch.nn.Identity(), {})
    torch.testing.assert_close(encoder.preprocess(torch.from_numpy(image)[None])[0], expected)


def test_image_tower_loads_strictly_and_matches_conch(tmp_path):
    """Fast check on CONCH's image tower alone, next to keys the loader must drop; small 224 px input."""
    config = json.loads((Path(coca_model.__file__).parent / "model_configs" / "conch_ViT-B-16.json").read_text())
    torch.manual_seed(0)
    visual = coca_model._build_vision_tower(config["embed_dim"], config["vision_cfg"], config["embed_dim_caption"])
    visual.eval()
    state = {f"visual.{key}": value for key, value in visual.state_dict().items()}
    state |= {"logit_scale": torch.ones(()), "text.token_embedding.weight": torch.zeros(3, 768)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    encoder = hd.encoders.load("conch", weights=tmp_path / "pytorch_model.bin", device="cpu")
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(encoder.model(images), visual.forward_no_head(images), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def coca(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """CONCH's whole CoCa model with random weights, saved as MahmoodLab/CONCH publishes its checkpoint."""
    config_path = Path(coca_model.__file__).parent / "model_configs" / "conch_ViT-B-16.json"
    config = json.loads(config_path.read_text())
    del config["custom_text"]
    torch.manual_seed(0)
    model = coca_model.CoCa(**config).eval()
    path = tmp_path_factory.mktemp("conch") / "pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    return torch.randint(0, 256, (2, 448, 448, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("name", "proj_contrast"),
    [("conch", False), ("conch_proj", True)],
)
@pytest.mark.slow  # about a minute each: a 395M-parameter CoCa, its 1.6 GB checkpoint and two 448 px ViT-B passes
def test_official_checkpoint_matches_conch(coca, patches, name, proj_contrast):
    """The whole CoCa checkpoint loads strictly into the image tower, which gives CONCH's own embedding."""
    model, path = coca
    encoder = hd.encoders.load(name, weights=path, device="cpu")
    with torch.inference_mode():
        ours = encoder(patches)
        expected = model.encode_image(encoder.preprocess(patches), proj_contrast=proj_contrast, normalize=False)
    assert ours.shape == (2, 512)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)
    assert encoder.provenance["weights"] == str(path)
