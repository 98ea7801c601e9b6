"""Finding and reading an encoder's published weights, safely (no pickle is ever executed)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from histodecon._constants import Key
from histodecon._settings import logger

if TYPE_CHECKING:
    from ._registry import Encoder


def read_weights(entry: Encoder, explicit: str | os.PathLike | None) -> tuple[dict[str, torch.Tensor], Path, str]:
    """Locate ``entry``'s weights and return ``(state_dict, path, sha256)``.

    Looks, in order, at ``explicit``, ``$HISTODECON_WEIGHTS_DIR/<name>/<filename>``, the
    Hugging Face cache, then the Hub (when online and the gated repository is accessible).
    """
    path = locate_weights(entry, explicit)
    return read_state_dict(path), path, sha256sum(path)


def locate_weights(entry: Encoder, explicit: str | os.PathLike | None) -> Path:
    """The weights file of ``entry``; raises an error that says where to put it when none is found."""
    source = entry.weights
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / source.filename
        if not path.is_file():
            raise FileNotFoundError(
                f"Weights file {path} for encoder {entry.name!r} does not exist. Check the path, or leave "
                f"`weights=` out to use ${Key.env.weights_dir}/{entry.name}/ or the Hugging Face cache."
            )
        return path
    local_dir = os.environ.get(Key.env.weights_dir)
    if local_dir:
        path = Path(local_dir).expanduser() / entry.name / source.filename
        if path.is_file():
            return path
    hub_path = _from_hub(source.repo_id, source.filename) if source.repo_id is not None else None
    if hub_path is not None:
        return hub_path
    target = Path(local_dir or f"${Key.env.weights_dir}").expanduser() / entry.name / source.filename
    if source.repo_id is None:
        origin = "the weights file"
        login = ""
    else:
        origin = f"`{source.filename}` from https://huggingface.co/{source.repo_id} (where the repository is gated, request access there first)"
        login = (
            "  - once access is granted, log in with `hf auth login` and rerun: the file is downloaded and cached, or\n"
        )
    raise FileNotFoundError(
        f"No weights found for encoder {entry.name!r}. Either\n"
        f"  - put {origin} at {target} (${Key.env.weights_dir} sets the folder), or\n"
        f"{login}"
        f"  - pass its path: `weights={{{entry.name!r}: '/path/to/{source.filename}'}}` to `hd.tl.embed`."
    )


def _from_hub(repo_id: str, filename: str) -> Path | None:
    """The file from the Hugging Face cache, else downloaded; ``None`` when neither works."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    try:
        return Path(hf_hub_download(repo_id, filename))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        logger.debug(f"Hub download of {repo_id}/{filename} failed: {error}")
        return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch checkpoint with ``weights_only=True`` (pickled code is refused).

    Checkpoints in torch's zip format are memory-mapped: only the tensors the model keeps are
    read, e.g. the image tower out of CONCH's whole 1.6 GB CoCa checkpoint.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises UnpicklingError or RuntimeError for unsafe or corrupt files
        raise ValueError(
            f"Refusing to read {path}: it is not a plain tensor checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}). Only safetensors files and state dicts readable with "
            "`torch.load(weights_only=True)` are accepted, so that no code from a file is ever run."
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def sha256sum(path: Path, chunk_bytes: int = 2**24) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
