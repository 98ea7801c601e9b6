import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import histodecon as hd
from histodecon.tl._estimator._file import record_checksum
from histodecon.tl._estimator._network import loss_terms, training_loss
from histodecon.tl._estimator._training import validation_folds as _validation_folds
from histodecon.tl._estimator._training import weighted_loss

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"hidden": (32, 32, 16), "lr": 1e-2, "max_epochs": 60, "batch_size": 64, "patience": 5}


def nonlinear_data(n, seed):
    """Features with a known nonlinear, non-negative relation to three abundances."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = np.stack([np.exp(x[:, 0]), 2 * np.maximum(x[:, 1], 0), x[:, 2] ** 2 + np.abs(x[:, 3])], axis=1)
    return x, pd.DataFrame(y, columns=["tumour", "T cells", "fibroblasts"])


@pytest.fixture(scope="module")
def trained():
    x, y = nonlinear_data(600, seed=0)
    return hd.tl.AbundanceRegressor(seed=0, target_scale="abundance", **SMALL).fit(x, y, feature_dims={"a": 4, "b": 2})


def test_loss_terms_hand_computed():
    pred = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 5.0]])
    target = torch.tensor([[0.0, 0.0], [2.0, 1.0], [4.0, 2.0]])
    mse, mae, pearson_loss = loss_terms(pred, target)
    errors = np.array([[0, 1], [-1, -1], [-2, 3]], dtype=float)
    assert mse.item() == pytest.approx(np.mean(errors**2))  # 16 / 6
    assert mae.item() == pytest.approx(np.mean(np.abs(errors)))  # 8 / 6
    r0 = 1.0  # pred column 0 is target column 0 halved
    r1 = np.corrcoef([1.0, 0.0, 5.0], [0.0, 1.0, 2.0])[0, 1]
    assert pearson_loss.item() == pytest.approx(1 - (r0 + r1) / 2, abs=1e-6)


def test_pearson_term_skips_constant_targets_and_has_gradients():
    pred = torch.tensor([[1.0, 3.0], [0.0, 3.0]], requires_grad=True)
    target = torch.tensor([[0.0, 7.0], [1.0, 7.0]])
    _, _, pearson_loss = loss_terms(pred, target)
    assert pearson_loss.item() == pytest.approx(2.0, abs=1e-6)  # r = -1 on column 0; column 1 left out
    pearson_loss.backward()
    assert torch.isfinite(pred.grad).all()
    _, _, none_varies = loss_terms(pred.detach(), torch.ones(2, 2))
    assert none_varies.item() == 0


def test_total_loss_weights_the_terms():
    pred, target = torch.rand(5, 3), torch.rand(5, 3)
    mse, mae, pearson_loss = loss_terms(pred, target)
    expected = (mse + 0.3 * mae + 2.0 * pearson_loss).item()
    assert training_loss(pred, target, mae_weight=0.3, pearson_weight=2.0).item() == pytest.approx(expected)
    model = hd.tl.AbundanceRegressor(mae_weight=0.3, pearson_weight=2.0)
    assert weighted_loss(model.hyperparameters, pred, target).item() == pytest.approx(expected)


def test_former_loss_weight_names_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="`l1=` is deprecated.*`mae_weight=`"):
        model = hd.tl.AbundanceRegressor(l1=0.3)
    assert model.hyperparameters.mae_weight == 0.3 and model.hyperparameters.pearson_weight == 1.0
    with pytest.warns(FutureWarning, match="`l2=` is deprecated.*`pearson_weight=`"):
        options = hd.tl.Hyperparameters.from_options({"l2": 2.0})
    assert options == hd.tl.Hyperparameters(pearson_weight=2.0)
    with pytest.raises(TypeError, match="only"):
        hd.tl.AbundanceRegressor(l1=0.3, mae_weight=0.3)


def test_hyperparameters_are_declared_once_and_checked():
    options = hd.tl.Hyperparameters(hidden=[np.int64(8), 4], lr=1, seed=np.int64(3))
    assert options.hidden == (8, 4) and type(options.lr) is float and type(options.seed) is int
    assert hd.tl.AbundanceRegressor(hyperparameters=options, max_epochs=7).hyperparameters == hd.tl.Hyperparameters(
        hidden=(8, 4), lr=1.0, seed=3, max_epochs=7
    )
    with pytest.raises(TypeError, match=r"Unknown hyperparameters \['dropout'\]; valid: .*'seed'"):
        hd.tl.AbundanceRegressor(dropout=0.5)
    with pytest.raises(ValueError, match="`patience` must be a positive integer"):
        hd.tl.Hyperparameters(patience=0)


def test_fit_beats_mean_predictor_on_held_out_data(trained):
    x_test, y_test = nonlinear_data(400, seed=1)
    pred = trained.predict(x_test)
    mse_model = np.mean((pred - y_test.values) ** 2)
    mse_mean = np.mean((y_test.values - y_test.values.mean(axis=0)) ** 2)
    assert mse_model < 0.1 * mse_mean
    assert hd.metrics.cc_score(y_test.values, pred) > 0.9
    assert (pred >= 0).all() and pred.dtype == np.float32


def test_fitted_attributes(trained):
    assert trained.feature_keys == ["a", "b"] and trained.feature_dims == [4, 2]
    assert trained.cell_types == ["tumour", "T cells", "fibroblasts"]
    history = trained.history
    assert list(history.columns) == ["fold", "epoch", "train_loss", "val_loss"]
    fold_best = []
    for _, fold in history.groupby("fold"):  # every fold counts its epochs from 1 and keeps its best one
        assert fold["epoch"].tolist() == list(range(1, len(fold) + 1))
        fold_best.append(fold.loc[fold["val_loss"].idxmin(), "epoch"])
    prov = trained.provenance
    assert prov["early_stopping"]["fold_epochs"] == fold_best and len(fold_best) == 3
    assert trained.best_epoch == round(np.median(fold_best))  # the refit's epochs: the folds' median
    assert trained.validation_scores["loss"] == pytest.approx(history.groupby("fold")["val_loss"].min().mean())
    assert trained.validation_scores["cc"] > 0.8
    assert prov["validation_split"] == "spots" and prov["n_validation_spots"] == 180  # 3 disjoint folds of 60
    assert prov["early_stopping"]["fold_validation_spots"] == [60, 60, 60]
    assert prov["n_training_spots"] == 600 and prov["seed"] == 0
    assert prov["loss_weights"] == {"mse": 1.0, "mae": 1.0, "pearson": 1.0}
    assert set(prov["versions"]) == {"histodecon", "torch", "numpy"}


def test_early_stopping_keeps_the_best_epoch():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 5)), rng.random((200, 2))  # no signal: validation loss soon rises
    model = hd.tl.AbundanceRegressor(hidden=(64, 64), lr=1e-2, max_epochs=500, patience=3, batch_size=32).fit(x, y)
    for (_, fold), best in zip(
        model.history.groupby("fold"), model.provenance["early_stopping"]["fold_epochs"], strict=True
    ):
        assert len(fold) == best + 3 < 500  # each fold stops `patience` epochs after its best
    assert model.cell_types == ["0", "1"] and model.feature_keys == ["features"]


def test_same_seed_same_predictions_other_seed_differs():
    x, y = nonlinear_data(200, seed=4)
    options = {"hidden": (16, 16), "max_epochs": 5}
    first = hd.tl.AbundanceRegressor(seed=7, **options).fit(x, y).predict(x)
    second = hd.tl.AbundanceRegressor(seed=7, **options).fit(x, y).predict(x)
    other = hd.tl.AbundanceRegressor(seed=8, **options).fit(x, y).predict(x)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


DETERMINISM_SCRIPT = """
import hashlib, sys
import numpy as np, torch
torch.set_num_threads(1)
from histodecon.tl import AbundanceRegressor
rng = np.random.default_rng(4)
x = rng.normal(size=(200, 6)).astype(np.float32)
y = np.exp(x[:, :3])
pred = AbundanceRegressor(seed=7, hidden=(16, 16), max_epochs=5).fit(x, y).predict(x)
sys.stdout.write(hashlib.sha256(pred.tobytes()).hexdigest())
"""


def test_same_seed_gives_bit_identical_predictions_in_another_process():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    pred = hd.tl.AbundanceRegressor(seed=7, hidden=(16, 16), max_epochs=5).fit(x, np.exp(x[:, :3])).predict(x)
    other = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT], capture_output=True, text=True, check=True)
    assert other.stdout == hashlib.sha256(pred.tobytes()).hexdigest()


def test_validation_folds_hold_out_every_group_in_turn():
    groups = np.repeat(["s1", "s2", "s3"], [10, 20, 30])
    folds, how = _validation_folds(60, groups, 0.1, np.random.default_rng(0))
    assert how == "groups" and len(folds) == 3  # each slide held out once, whatever the seed
    assert sorted(groups[f][0] for f in folds) == ["s1", "s2", "s3"]
    assert all(len(set(groups[f])) == 1 for f in folds) and sorted(np.concatenate(folds)) == list(range(60))
    folds, how = _validation_folds(30, groups[:30], 0.1, np.random.default_rng(0))  # two slides: spot folds
    assert how == "spots" and [len(f) for f in folds] == [3, 3, 3] and len(set(np.concatenate(folds))) == 9
    many = np.repeat([f"s{i}" for i in range(36)], 5)  # many slides: 3 folds of round(0.1 * 36) slides
    folds, how = _validation_folds(len(many), many, 0.1, np.random.default_rng(0))
    assert [len(set(many[f])) for f in folds] == [4, 4, 4]
    assert len(set(np.concatenate([many[f] for f in folds]))) == 12  # disjoint
    folds, how = _validation_folds(100, None, 0.1, np.random.default_rng(0))  # no groups: random spots
    assert how == "spots" and [len(f) for f in folds] == [10, 10, 10] and len(set(np.concatenate(folds))) == 30


def test_fit_with_groups_records_them():
    x, y = nonlinear_data(120, seed=5)
    groups = np.repeat(["s1", "s2", "s3"], 40)
    model = hd.tl.AbundanceRegressor(hidden=(8,), max_epochs=2).fit(x, y, groups=groups)
    assert model.provenance["validation_split"] == "groups" and model.provenance["n_validation_spots"] == 120
    assert sorted(g for fold in model.provenance["early_stopping"]["fold_validation_groups"] for g in fold) == [
        "s1",
        "s2",
        "s3",
    ]
    assert model.provenance["groups"] == ["s1", "s2", "s3"]


def test_constant_feature_is_harmless():
    x, y = nonlinear_data(100, seed=6)
    x[:, 5] = 3.0
    model = hd.tl.AbundanceRegressor(hidden=(8,), max_epochs=3).fit(x, y)
    assert model.network.x_scale[5].item() == 1.0 and model.network.x_mean[5].item() == 3.0
    assert np.isfinite(model.predict(x)).all()


def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "model")
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "model.json", "model.md"}
    loaded = hd.tl.AbundanceRegressor.load(tmp_path / "model.safetensors")
    x, _ = nonlinear_data(50, seed=9)
    np.testing.assert_array_equal(loaded.predict(x), trained.predict(x))
    assert loaded.feature_keys == trained.feature_keys and loaded.feature_dims == trained.feature_dims
    assert loaded.cell_types == trained.cell_types and loaded.best_epoch == trained.best_epoch
    assert loaded.hyperparameters == trained.hyperparameters
    assert loaded.validation_scores == trained.validation_scores
    assert loaded.calibration == trained.calibration and loaded.calibration["n_spots"] == 180
    pd.testing.assert_frame_equal(loaded.history, trained.history, check_dtype=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "model.json")
    trained.save(tmp_path / "model", overwrite=True)


def _saved(model, tmp_path):
    model.save(tmp_path / "m", overwrite=True)
    return tmp_path / "m.safetensors", tmp_path / "m.json"


def test_tampered_or_truncated_tensors_are_refused(trained, tmp_path):
    tensors, _ = _saved(trained, tmp_path)
    blob = bytearray(tensors.read_bytes())
    blob[-5] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="modified or truncated"):
        hd.tl.AbundanceRegressor.load(tmp_path / "m")
    tensors, _ = _saved(trained, tmp_path)
    tensors.write_bytes(tensors.read_bytes()[:-100])
    with pytest.raises(ValueError, match="modified or truncated"):
        hd.tl.AbundanceRegressor.load(tmp_path / "m")
    tensors.unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        hd.tl.AbundanceRegressor.load(tmp_path / "m")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(version=99), "version 99"),
        (lambda r: r.update(format="something"), "not a saved AbundanceRegressor"),
        (lambda r: r.pop("cell_types"), "cell_types"),
        (lambda r: r["cell_types"].append("NK"), "cell types recorded"),
        (lambda r: r["features"][0].update(dim=5), "add up"),
        (lambda r: r["features"][1].update(key="a"), "unique"),
        (lambda r: r["hyperparameters"].update(dropout=0.5), "exactly the keys"),
        (lambda r: r["tensors"].pop("sha256"), "checksum"),
        (lambda r: r["architecture"].update(activation="ReLU"), "activation 'SiLU'"),
    ],
)
def test_inconsistent_sidecar_is_refused(trained, tmp_path, edit, message):
    """Edits that keep the record's own checksum valid are still caught by the consistency checks."""
    _, sidecar = _saved(trained, tmp_path)
    record = json.loads(sidecar.read_text())
    edit(record)
    _write_signed(sidecar, record)
    with pytest.raises(ValueError, match=message):
        hd.tl.AbundanceRegressor.load(sidecar)


def _write_signed(sidecar, record):
    """Write a record with a valid `record_sha256`, as someone forging a model file would."""
    record["record_sha256"] = record_checksum(record)
    sidecar.write_text(json.dumps(record))


def test_edited_or_truncated_sidecar_is_refused(trained, tmp_path):
    _, sidecar = _saved(trained, tmp_path)
    text = sidecar.read_text()
    sidecar.write_text(text.replace('"tumour"', '"tumor"'))  # relabelled cell type, consistent otherwise
    with pytest.raises(ValueError, match="edited after saving"):
        hd.tl.AbundanceRegressor.load(sidecar)
    sidecar.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        hd.tl.AbundanceRegressor.load(sidecar)


def test_model_file_of_version_1_with_former_loss_weight_names_loads(trained, tmp_path):
    _, sidecar = _saved(trained, tmp_path)
    record = json.loads(sidecar.read_text())
    hyperparameters = record["hyperparameters"]
    hyperparameters["l1"], hyperparameters["l2"] = (
        hyperparameters.pop("mae_weight"),
        hyperparameters.pop("pearson_weight"),
    )
    del hyperparameters["target_scale"], record["inputs"], record["calibration"]  # added in versions 3 and 4
    record["version"] = 1
    _write_signed(sidecar, record)
    loaded = hd.tl.AbundanceRegressor.load(sidecar)
    assert loaded.hyperparameters == trained.hyperparameters
    x, _ = nonlinear_data(20, seed=9)
    np.testing.assert_array_equal(loaded.predict(x), trained.predict(x))
    record["version"] = 2  # the former names in a file of the current version are refused
    _write_signed(sidecar, record)
    with pytest.raises(ValueError, match="exactly the keys"):
        hd.tl.AbundanceRegressor.load(sidecar)


@pytest.mark.parametrize(
    ("tensor", "value", "message"),
    [("layers.0.weight", np.nan, "NaN or infinite values in \\['layers.0.weight'\\]"), ("x_scale", 0.0, "x_scale")],
)
def test_tensors_with_bad_values_are_refused(trained, tmp_path, tensor, value, message):
    tensors_path, sidecar = _saved(trained, tmp_path)
    tensors = load_file(tensors_path)
    tensors[tensor][0] = value
    save_file(tensors, tensors_path)
    record = json.loads(sidecar.read_text())
    record["tensors"]["sha256"] = hashlib.sha256(tensors_path.read_bytes()).hexdigest()
    _write_signed(sidecar, record)
    with pytest.raises(ValueError, match=message):
        hd.tl.AbundanceRegressor.load(sidecar)


def test_tensors_of_another_architecture_are_refused(trained, tmp_path):
    x, y = nonlinear_data(60, seed=2)
    other = hd.tl.AbundanceRegressor(hidden=(32, 32, 8), max_epochs=1).fit(x, y, feature_dims={"a": 4, "b": 2})
    (tmp_path / "other").mkdir()
    other_tensors, other_sidecar = _saved(other, tmp_path / "other")
    _, sidecar = _saved(trained, tmp_path)
    record = json.loads(sidecar.read_text())
    record["tensors"]["sha256"] = json.loads(other_sidecar.read_text())["tensors"]["sha256"]
    _write_signed(sidecar, record)
    (tmp_path / "m.safetensors").write_bytes(other_tensors.read_bytes())
    with pytest.raises(ValueError, match="does not hold the tensors of the recorded architecture"):
        hd.tl.AbundanceRegressor.load(sidecar)


def test_bad_inputs_are_refused(trained):
    with pytest.raises(RuntimeError, match="not fitted"):
        hd.tl.AbundanceRegressor().predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="has 5 features but the model was trained on 6"):
        trained.predict(np.zeros((2, 5)))
    x, y = nonlinear_data(20, seed=0)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 20 rows"):
        hd.tl.AbundanceRegressor().fit(x, y)
    with pytest.raises(ValueError, match="negative"):
        hd.tl.AbundanceRegressor().fit(np.zeros((20, 2)), -np.ones((20, 2)))
    with pytest.raises(ValueError, match="one target row"):
        hd.tl.AbundanceRegressor().fit(np.zeros((20, 2)), np.ones((19, 2)))
    with pytest.raises(ValueError, match="add up"):
        hd.tl.AbundanceRegressor().fit(np.zeros((20, 2)), np.ones((20, 2)), feature_dims={"a": 3})
    with pytest.raises(ValueError, match="validation_fraction"):
        hd.tl.AbundanceRegressor(validation_fraction=1.0)
    with pytest.raises(ValueError, match="hidden"):
        hd.tl.AbundanceRegressor(hidden=(16, 0))
