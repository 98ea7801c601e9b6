"""Package-wide settings: verbosity and the default compute device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


@dataclass
class Settings:
    """Global settings of histodecon, like :data:`scanpy.settings`.

    Attributes
    ----------
    verbosity
        0 errors, 1 warnings, 2 info (default: every write to an AnnData is logged), 3 debug.
    device
        Default torch device for models (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
        ``None`` picks CUDA when available, else CPU.
    progress
        Show progress bars for long loops (embedding, training, deconvolution).
    """

    _verbosity: int = 2
    device: str | None = None
    progress: bool = True
    _logger: logging.Logger = field(default_factory=lambda: logging.getLogger("histodecon"), repr=False)

    def __post_init__(self) -> None:
        if not self._logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)
        self._logger.propagate = False
        self.verbosity = self._verbosity

    @property
    def verbosity(self) -> int:
        """Verbosity level from 0 (errors only) to 3 (debug)."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, level: int) -> None:
        if level not in _LEVELS:
            raise ValueError(f"verbosity must be one of {sorted(_LEVELS)}, got {level!r}.")
        self._verbosity = level
        self._logger.setLevel(_LEVELS[level])

    def torch_device(self, device: str | None = None):
        """Resolve ``device`` (or the default) to a :class:`torch.device`."""
        import torch

        name = device or self.device
        if name is None:
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(name)


settings = Settings()
logger = settings._logger
