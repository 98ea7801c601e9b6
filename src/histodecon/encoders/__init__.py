"""Pathology foundation-model encoders: a registry of declarative entries."""

from . import _conch, _handcrafted, _vit  # register the foundation models and the weights-free encoder
from ._registry import Encoder, PatchEncoder, WeightsSource, available, get, load, register

__all__ = ["Encoder", "PatchEncoder", "WeightsSource", "available", "get", "load", "register"]
