"""histodecon: cell-type composition from H&E histology with pathology foundation models."""

from ._settings import settings

__version__ = "0.1.0.dev0"

__all__ = ["settings", "__version__"]
