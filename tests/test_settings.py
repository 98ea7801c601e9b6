"""Progress bars: per call (``progress=``), distinct labels, nothing per refresh off a terminal."""

import io
import sys

import numpy as np
import pytest

import histodecon as hd
from histodecon._settings import progress_bar, progress_scope


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True


@pytest.fixture(scope="module")
def slides():
    """Two small slides with random 8-dim embeddings, enough for a 2-epoch fit."""
    slides = [hd.datasets.synthetic(n_spots=30, counts=False, seed=seed) for seed in range(2)]
    for seed, sdata in enumerate(slides):
        table = sdata.tables["table"]
        table.obsm["X_fake"] = np.random.default_rng(seed).normal(size=(table.n_obs, 8)).astype(np.float32)
    return slides


def _fit_output(slides, monkeypatch, stderr, **kwargs):
    monkeypatch.setattr(sys, "stderr", stderr)
    hd.tl.fit(slides, features=["fake"], max_epochs=2, **kwargs)
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    return stderr.getvalue()


def test_fit_bars_follow_the_call_and_name_their_stage(slides, monkeypatch):
    monkeypatch.setattr(hd.settings, "progress", False)
    shown = _fit_output(slides, monkeypatch, Terminal(), progress=True)
    # mutation: one label for both loops (the old "training") fails the two asserts below
    assert "training (early stopping)" in shown and "training (final model)" in shown
    assert hd.settings.progress is False  # the call's choice does not outlive it
    monkeypatch.setattr(hd.settings, "progress", True)
    assert "training" not in _fit_output(slides, monkeypatch, Terminal(), progress=False)
    assert "training (final model)" in _fit_output(slides, monkeypatch, Terminal())  # None: the setting


def test_no_bar_lines_when_output_is_not_a_terminal(slides, monkeypatch):
    # mutation: tqdm's default disable=False writes every refresh to the file
    monkeypatch.setattr(hd.settings, "progress", True)
    assert "training" not in _fit_output(slides, monkeypatch, io.StringIO(), progress=True)
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress_bar(range(3), desc="drawn") as bar:
        list(bar)
    assert "drawn" in sys.stderr.getvalue()


def test_progress_must_be_a_switch():
    with pytest.raises(TypeError, match="`progress` must be True, False or None"), progress_scope("yes"):
        pass
