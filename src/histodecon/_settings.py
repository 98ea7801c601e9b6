"""Package-wide settings: verbosity and the default compute device."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Torch device types histodecon runs models on.
_DEVICE_TYPES = ("cpu", "cuda", "mps")
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
        Show progress bars for long loops (embedding, training, deconvolution), on a terminal
        or in a notebook; output to a file or pipe gets none. The functions with bars take
        ``progress=`` to choose for one call.
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

    def torch_device(self, device=None):
        """Resolve ``device`` (or the default) to a :class:`torch.device`, refusing unknown or absent devices.

        ``None`` picks CUDA when available, else CPU. A name torch does not know (``"gpu"``) or
        a device this machine lacks (``"cuda"`` without a GPU, ``"cuda:3"`` with two GPUs,
        ``"mps"`` off Apple silicon) raises a :class:`ValueError` that says what to pass instead.
        """
        import torch

        name = device if device is not None else self.device
        if name is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        resolved = self.check_device_name(name)
        if resolved.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(
                    f"CUDA was requested (device={name!r}) but torch.cuda.is_available() is False; use device='cpu' "
                    "(or install a CUDA build of torch on a machine with an NVIDIA GPU)."
                )
            count = torch.cuda.device_count()
            if resolved.index is not None and resolved.index >= count:
                raise ValueError(
                    f"device={name!r} asks for GPU {resolved.index}, but this machine has {count} "
                    f"(cuda:0 .. cuda:{count - 1}); pass one of those, or device='cpu'."
                )
        elif resolved.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(
                f"MPS was requested (device={name!r}) but torch.backends.mps.is_available() is False; use device='cpu'."
            )
        return resolved

    @staticmethod
    def check_device_name(device):
        """``device`` as a :class:`torch.device` if its name is one histodecon runs on; availability is not checked.

        For a client that schedules work on other machines (:func:`histodecon.tl.embed_many`),
        where the device is resolved.
        """
        import torch

        if isinstance(device, torch.device):
            resolved = device
        elif isinstance(device, str):
            try:
                resolved = torch.device(device)
            except RuntimeError:
                resolved = None
        else:
            raise TypeError(f"`device` must be a device name such as 'cpu' or 'cuda', got {type(device).__name__}.")
        if resolved is None or resolved.type not in _DEVICE_TYPES:
            raise ValueError(
                f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:<index>' or 'mps' (None picks CUDA when available)."
            )
        return resolved


settings = Settings()
logger = settings._logger


@contextlib.contextmanager
def progress_scope(progress: bool | None) -> Iterator[None]:
    """:attr:`Settings.progress` set to ``progress`` for the duration (``None``: left as it is)."""
    if progress is None:
        yield
        return
    if not isinstance(progress, bool):
        raise TypeError(
            f"`progress` must be True, False or None (the `hd.settings.progress` switch), got {progress!r}."
        )
    shown, settings.progress = settings.progress, progress
    try:
        yield
    finally:
        settings.progress = shown


def progress_option(func: Callable) -> Callable:
    """Run ``func`` with :attr:`Settings.progress` taken from its keyword ``progress=`` (``None``: the setting)."""

    @functools.wraps(func)
    def with_progress(*args: Any, progress: bool | None = None, **kwargs: Any) -> Any:
        with progress_scope(progress):
            return func(*args, progress=progress, **kwargs)

    return with_progress


def progress_bar(iterable: Any = None, **kwargs: Any):
    """A tqdm bar, shown when :attr:`Settings.progress` is on and there is somewhere to draw it.

    In a Jupyter kernel with ipywidgets it is a widget; elsewhere tqdm's text bar, which draws
    only on a terminal (``disable=None``): output piped to a file gets no line per refresh.
    """
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(iterable, disable=None if settings.progress else True, **kwargs)


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where stderr is not a terminal, but widgets draw)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config
