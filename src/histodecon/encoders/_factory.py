"""Building an encoder from its registry entry: the architecture, its weights, its preprocessing.

The registry (:mod:`histodecon.encoders._registry`) says what a model is; this module makes
it, as timm's ``_factory`` builds what its ``_registry`` names.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import torch
from torch import nn

from histodecon._settings import settings

from ._registry import Encoder, get
from ._weights import read_weights


class PatchEncoder(nn.Module):
    """A built encoder with its preprocessing: uint8 RGB patches in, float32 embeddings out.

    ``forward`` takes a ``(b, h, w, 3)`` uint8 tensor, as :func:`histodecon.pp.spot_patches`
    yields, and returns ``(b, dim)`` float32.
    """

    def __init__(self, entry: Encoder, model: nn.Module, provenance: dict[str, Any]) -> None:
        super().__init__()
        self.entry = entry
        self.model = model
        self.provenance = provenance
        if entry.mean is not None:
            self.register_buffer("mean", torch.tensor(entry.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(entry.std).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        """Length of one embedding."""
        return self.entry.dim

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 ``(b, h, w, 3)`` to the normalised float ``(b, 3, input_size, input_size)`` the model sees."""
        x = patches.permute(0, 3, 1, 2).float().div_(255.0)
        size = self.entry.input_size
        if x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(
                x, size=(size, size), mode=self.entry.interpolation, align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        if self.entry.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Embed a batch of uint8 RGB patches."""
        return self.model(self.preprocess(patches)).float()


def load(name: str, *, weights: str | PathLike | None = None, device: str | torch.device | None = None) -> PatchEncoder:
    """Build encoder ``name``, load its weights and return it in eval mode on ``device``.

    Parameters
    ----------
    name
        A registry name (see :func:`available`) or ``"timm:<model name>"``.
    weights
        Path to the weights file as the model's authors publish it. ``None`` looks in
        ``$HISTODECON_WEIGHTS_DIR/<name>/``, then the Hugging Face cache, then downloads.
    device
        Torch device; ``None`` uses :attr:`histodecon.settings.device`.

    Returns
    -------
    The encoder; its ``provenance`` records the weights file and sha256.

    Examples
    --------
    >>> import histodecon as hd
    >>> encoder = hd.encoders.load("handcrafted")
    """
    entry = get(name)
    if entry.weights is None and weights is not None:
        raise ValueError(f"Encoder {name!r} takes no weights, but `weights={weights!r}` was given.")
    # Weights are found before the model is built, so a missing file is reported at once.
    found = read_weights(entry, weights) if entry.weights is not None else None
    model = entry.build()
    provenance: dict[str, Any] = {
        "model": entry.name,
        "dim": entry.dim,
        "input_size": entry.input_size,
        "patch_size": entry.patch_size,
        "mpp": entry.mpp,
        "field_spots": entry.field_spots,
    }
    if found is not None:
        state, path, sha256 = found
        _load_strict(model, entry.weights.extract(state), entry.name, path)
        provenance |= {"weights": str(path), "weights_sha256": sha256}
    encoder = PatchEncoder(entry, model, provenance)
    return encoder.eval().requires_grad_(False).to(settings.torch_device(device))


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: Any) -> None:
    """``load_state_dict(strict=True)`` with a readable report of missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or misshapen:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "") if keys else "none"

        raise ValueError(
            f"The weights in {path} do not fit the {name!r} architecture.\n"
            f"  missing keys: {show(missing)}\n  unexpected keys: {show(unexpected)}\n"
            f"  shape mismatches: {show(misshapen)}\n"
            "Check that the file is the official checkpoint of this model."
        )
    model.load_state_dict(state, strict=True)
