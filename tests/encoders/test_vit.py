import pytest
import timm
import torch
from safetensors.torch import save_file

import histodecon as hd
from histodecon._constants import Key


@pytest.mark.parametrize(("name", "millions", "dim"), [("uni", 303, 1024), ("uni2", 681, 1536)])
def test_parameter_count_and_dim(name, millions, dim, meta_count_and_dim):
    count, out_dim = meta_count_and_dim(name)
    assert round(count / 1e6) == millions
    assert out_dim == hd.encoders.get(name).dim == dim


def test_uni2_architecture_matches_the_model_card():
    with torch.device("meta"):
        model = hd.encoders.get("uni2").build()
    assert (model.patch_embed.patch_size, len(model.blocks), model.embed_dim) == ((14, 14), 24, 1536)
    assert model.num_reg_tokens == 8 and model.no_embed_class
    assert model.pos_embed.shape == (1, 256, 1536)  # 16 x 16 patches, no class or register positions
    mlp = model.blocks[0].mlp  # SwiGLU packed: one fc1 gives value and gate, SiLU on the gate
    assert isinstance(mlp, timm.layers.GluMlp) and isinstance(mlp.act, torch.nn.SiLU) and not mlp.gate_last
    assert (mlp.fc1.out_features, mlp.fc2.in_features) == (2 * 4096, 4096)


def test_timm_entry_takes_preprocessing_from_timm():
    entry = hd.encoders.get("timm:vit_small_patch16_224.augreg_in21k")
    assert entry is hd.encoders.get("timm:vit_small_patch16_224.augreg_in21k")
    assert (entry.name, entry.dim, entry.input_size, entry.patch_size) == (
        "timm:vit_small_patch16_224.augreg_in21k",
        384,
        224,
        224,
    )
    assert (entry.mean, entry.std, entry.interpolation) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert (entry.weights.repo_id, entry.weights.filename) == (
        "timm/vit_small_patch16_224.augreg_in21k",
        "model.safetensors",
    )


def test_timm_dim_is_the_output_length_not_num_features():
    with torch.device("meta"):
        model = timm.create_model("mobilenetv3_small_100", num_classes=0)
    assert model.num_features != 1024
    assert hd.encoders.get("timm:mobilenetv3_small_100").dim == 1024


def test_timm_unknown_model():
    with pytest.raises(KeyError, match="'timm:resnet_nope' names no timm model"):
        hd.encoders.get("timm:resnet_nope")


def test_timm_hub_checkpoint_from_weights_dir(tmp_path, monkeypatch):
    """A timm checkpoint as published on the Hub, classifier included, loads without its classifier."""
    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=1000).eval()
    folder = tmp_path / "timm:resnet18"
    folder.mkdir()
    save_file(source.state_dict(), folder / "model.safetensors")
    monkeypatch.setenv(Key.env.weights_dir, str(tmp_path))
    encoder = hd.encoders.load("timm:resnet18", device="cpu")
    patches = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = source.forward_head(source.forward_features(encoder.preprocess(patches)), pre_logits=True)
        torch.testing.assert_close(encoder(patches), expected)
    assert expected.shape == (2, 512)


def test_timm_weights_only_from_a_local_file_when_offline():
    with pytest.raises(FileNotFoundError, match=r"\$HISTODECON_WEIGHTS_DIR/timm:resnet18/model\.safetensors"):
        hd.encoders.load("timm:resnet18")
