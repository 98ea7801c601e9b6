"""Fixtures shared by the tests of ``hd.tl``."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests.

    Tiny networks gain nothing from intra-op threads and lose much on a shared CPU, and dask
    workers run torch on one thread: a single-process reference must too, to match bit for bit.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
