"""The encoder registry: each model is one declarative :class:`Encoder` entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
from torch import nn

from histodecon._settings import logger

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's published weights live and how to read them.

    Attributes
    ----------
    repo_id
        Hugging Face repository, e.g. ``"MahmoodLab/UNI"`` (gated: request access first);
        ``None`` where the weights are only read from a local file.
    filename
        File in that repository, e.g. ``"pytorch_model.bin"``.
    extract
        Turns the file's state dict into the one of the built module, e.g. takes the
        ``visual.*`` image tower out of CONCH's whole CoCa checkpoint.
    """

    repo_id: str | None
    filename: str
    extract: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = lambda state: state


@dataclass(frozen=True)
class Encoder:
    """One patch encoder: its architecture, preprocessing and weights.

    Attributes
    ----------
    name
        Registry name, also the ``obsm`` key suffix: embeddings go to ``obsm[f"X_{name}"]``.
    dim
        Length of the embedding of one patch.
    build
        Returns the exact architecture, randomly initialised; the module maps a preprocessed
        float batch ``(b, 3, input_size, input_size)`` to ``(b, dim)``.
    input_size
        Side in pixels of the square the network sees; patches are resized to it.
    patch_size
        Side in pixels of the patch cut around each spot at ``mpp``.
    mpp
        Micrometres per pixel the model was trained at; ``None`` uses the slide's own.
    mean, std
        Per-channel normalisation of ``[0, 1]`` RGB, or ``None`` to feed ``[0, 1]`` RGB as is.
    interpolation
        Resize mode (``"bilinear"`` or ``"bicubic"``) when ``patch_size != input_size``.
    weights
        Where the weights come from; ``None`` for models that need none.
    description
        One line for :func:`available`.
    """

    name: str
    dim: int
    build: Callable[[], nn.Module]
    input_size: int = 224
    patch_size: int = 224
    mpp: float | None = 0.5
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    interpolation: str = "bilinear"
    weights: WeightsSource | None = None
    description: str = ""


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


_REGISTRY: dict[str, Encoder] = {}


def register(entry: Encoder, *, overwrite: bool = False) -> Encoder:
    """Add an encoder to the registry so that ``hd.tl.embed(models=[entry.name])`` can use it.

    Parameters
    ----------
    entry
        The declarative entry. To use your own torch module, pass ``build=lambda: module``.
    overwrite
        Replace an existing entry of the same name.

    Returns
    -------
    The registered entry.

    Examples
    --------
    >>> import torch, histodecon as hd
    >>> mean_rgb = hd.encoders.Encoder(
    ...     name="mean_rgb",
    ...     dim=3,
    ...     mean=None,
    ...     std=None,
    ...     build=lambda: torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
    ... )
    >>> hd.encoders.register(mean_rgb)  # doctest: +ELLIPSIS
    Encoder(name='mean_rgb', dim=3, ...)
    """
    if not isinstance(entry, Encoder):
        raise TypeError(f"register() takes an `hd.encoders.Encoder` entry, got {type(entry).__name__}.")
    if entry.name in _REGISTRY and not overwrite:
        raise KeyError(f"An encoder named {entry.name!r} is already registered. Pass `overwrite=True` to replace it.")
    _REGISTRY[entry.name] = entry
    logger.debug(f"Registered encoder {entry.name!r} ({entry.dim}-d)")
    return entry


def available() -> list[str]:
    """Names of the registered encoders; ``"timm:<model name>"`` reaches any timm model too.

    Examples
    --------
    >>> import histodecon as hd
    >>> "uni" in hd.encoders.available()
    True
    """
    return sorted(_REGISTRY)


def get(name: str) -> Encoder:
    """The registry entry of ``name`` (its dim, preprocessing and weights source).

    Examples
    --------
    >>> import histodecon as hd
    >>> hd.encoders.get("uni").dim
    1024
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm:"):
        from ._vit import timm_entry

        return timm_entry(name.removeprefix("timm:"))
    raise KeyError(
        f"Unknown encoder {name!r}. Available: {available()}, or 'timm:<model name>' for any timm model. "
        "Add your own with `hd.encoders.register`."
    )


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
    from histodecon._settings import settings

    from ._weights import read_weights

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
