"""Arguments checked in one place per kind (issue 15): counts, devices, and a batch size that only bounds memory."""

import re

import numpy as np
import pytest
import torch

import histodecon as hd
from histodecon._utils import check_positive_int
from histodecon.tl._estimator._network import PREDICT_BLOCK


@pytest.mark.usefixtures("one_thread")
def test_predictions_are_bit_identical_whatever_the_batch_size():
    rng = np.random.default_rng(0)
    n = 2 * PREDICT_BLOCK + 77  # three blocks, the last one padded
    X = rng.normal(size=(n, 40)).astype(np.float32)
    Y = np.exp(X[:, :3])
    model = hd.tl.AbundanceRegressor(hidden=(64, 32), max_epochs=2).fit(X, Y)
    default = model.predict(X)
    assert default.shape == (n, 3) and np.isfinite(default).all()
    for batch_size in (1, 7, 256):
        assert np.array_equal(model.predict(X, batch_size=batch_size), default), batch_size
    # a spot's prediction does not depend on the spots predicted with it either
    assert np.array_equal(model.predict(X[:PREDICT_BLOCK]), default[:PREDICT_BLOCK])


@pytest.mark.parametrize("value", [0, -1, 2.5, 2.0, True, np.float32(3)])
def test_counts_must_be_positive_integers(value):
    with pytest.raises(ValueError, match=re.escape(f"`batch_size` must be a positive integer, got {value!r}")):
        check_positive_int(value, "batch_size")


def test_count_of_another_type_is_a_type_error():
    with pytest.raises(TypeError, match="`epochs` must be a positive integer, got '10'"):
        check_positive_int("10", "epochs")
    assert check_positive_int(np.int64(3), "epochs") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused_with_the_fix(device):
    with pytest.raises(
        ValueError, match=r"CUDA was requested .* torch\.cuda\.is_available\(\) is False; use device='cpu'"
    ):
        hd.settings.torch_device(device)


@pytest.mark.parametrize("device", ["gpu", "CPU", "cuda:x", "tpu"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(ValueError, match=rf"Unknown device '{device}'; use 'cpu', 'cuda', 'cuda:<index>' or 'mps'"):
        hd.settings.check_device_name(device)


def test_known_devices_resolve():
    assert hd.settings.torch_device("cpu") == torch.device("cpu")
    assert hd.settings.torch_device(torch.device("cpu")) == torch.device("cpu")
    assert hd.settings.check_device_name("cuda:1") == torch.device("cuda", 1)  # availability is the worker's
