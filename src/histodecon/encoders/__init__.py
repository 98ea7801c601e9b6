"""Pathology foundation-model encoders: a registry of declarative entries and the factory that builds them."""

# Importing the entry modules registers the foundation models (UNI, UNI2-h, CONCH, CONCH v1.5, Virchow2,
# H-optimus, GigaPath, Phikon-v2, GenBio-PathFM), the timm: and timm:hf-hub: name schemes and the weights-free encoder.
from . import _conch, _conch15, _foundation, _genbio, _handcrafted, _hf_hub, _phikon, _vit
from ._factory import PatchEncoder, load
from ._registry import Encoder, WeightsSource, available, get, register

__all__ = ["Encoder", "PatchEncoder", "WeightsSource", "available", "get", "load", "register"]
