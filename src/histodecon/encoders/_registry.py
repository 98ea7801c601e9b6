"""The encoder registry: each model is one declarative :class:`Encoder` entry, found by name.

Entries and name schemes (``"timm:<model name>"``) are only recorded here; building a model
and loading its weights is :mod:`histodecon.encoders._factory`'s job, as timm separates its
``_registry`` from its ``_factory``. This module imports nothing else from the package's
encoders, so entry modules import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from histodecon._settings import logger

if TYPE_CHECKING:
    import torch
    from torch import nn

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
        Registry name, also the ``obsm`` key suffix: embeddings go to
        ``obsm[Key.obsm.embedding(name)]`` (``"X_<name>"``).
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
        Not used where ``field_spots`` is set.
    field_spots
        Patch side in spot diameters, or ``None``. When set, each sample's patches are cut at
        ``field_spots * spot_diameter_um / patch_size`` micrometres per pixel, so that the
        field follows the spot size of the technology (wider on 100 um legacy ST spots than
        on 55 um Visium spots) instead of a fixed ``mpp``.
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
    field_spots: float | None = None
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    interpolation: str = "bilinear"
    weights: WeightsSource | None = None
    description: str = ""


_REGISTRY: dict[str, Encoder] = {}


@dataclass(frozen=True)
class _Scheme:
    """How :func:`get` resolves the names ``"<prefix>:<placeholder>"`` (see :func:`register_scheme`)."""

    resolve: Callable[[str], Encoder]
    description: str
    placeholder: str


_SCHEMES: dict[str, _Scheme] = {}


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


def register_scheme(
    prefix: str,
    resolve: Callable[[str], Encoder],
    *,
    description: str,
    placeholder: str = "model name",
    overwrite: bool = False,
) -> None:
    """Let :func:`get` resolve every name ``"<prefix>:<model name>"`` by ``resolve("<model name>")``.

    A scheme reaches a whole family of models without registering each one, e.g. ``timm:``
    any timm model. ``resolve`` should cache its entries, so that a name gives the same entry
    each time. Prefixes may nest (``"timm:hf-hub"`` within ``"timm"``): the longest that
    matches a name wins.

    Parameters
    ----------
    prefix
        The scheme, written before the colon.
    resolve
        Returns the entry of a model name, or raises :class:`KeyError` naming the problem.
    description
        What the scheme reaches, for the message of an unknown name, e.g. ``"any timm model"``.
    placeholder
        What follows the colon, for that message, e.g. ``"repo id"``.
    overwrite
        Replace an existing scheme of the same prefix.

    Examples
    --------
    How :mod:`histodecon.encoders._vit` registers ``timm:``:

    >>> from histodecon.encoders._registry import get, register_scheme
    >>> from histodecon.encoders._vit import timm_entry
    >>> register_scheme("timm", timm_entry, description="any timm model", overwrite=True)
    >>> get("timm:resnet18").dim
    512
    """
    if prefix in _SCHEMES and not overwrite:
        raise KeyError(f"A name scheme {prefix!r} is already registered. Pass `overwrite=True` to replace it.")
    _SCHEMES[prefix] = _Scheme(resolve, description, placeholder)


def available() -> list[str]:
    """Names of the registered encoders; name schemes such as ``"timm:<model name>"`` reach more.

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
    for prefix in sorted(_SCHEMES, key=len, reverse=True):
        if name.startswith(f"{prefix}:"):
            return _SCHEMES[prefix].resolve(name.removeprefix(f"{prefix}:"))
    schemes = "".join(
        f", or '{prefix}:<{scheme.placeholder}>' for {scheme.description}" for prefix, scheme in _SCHEMES.items()
    )
    raise KeyError(
        f"Unknown encoder {name!r}. Available: {available()}{schemes}. Add your own with `hd.encoders.register`."
    )
