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

#: The weights files read, as error messages name them.
EXPECTED_FORMAT = "a safetensors file or a PyTorch zip checkpoint saved with torch.save"
_ZIP_SIGNATURE = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"


def read_weights(entry: Encoder, explicit: str | os.PathLike | None) -> tuple[dict[str, torch.Tensor], Path, str]:
    """Locate ``entry``'s weights and return ``(state_dict, path, sha256)``.

    Looks, in order, at ``explicit``, ``$HISTODECON_WEIGHTS_DIR/<name>/<filename>``, the
    Hugging Face cache, then the Hub (only when online and not ``HF_HUB_OFFLINE``, and the gated
    repository is accessible); offline, a missing file fails at once.
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
    """The file from the Hugging Face cache, else downloaded; ``None`` when neither works.

    The Hub is only asked when it can be reached: offline (``HF_HUB_OFFLINE``, or no route to
    the Hub) the lookup fails at once instead of after huggingface_hub's retries (~23 s).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if not hub_reachable():
        logger.debug(f"Not downloading {repo_id}/{filename}: the Hugging Face Hub is offline or unreachable.")
        return None
    try:
        return Path(hf_hub_download(repo_id, filename))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        logger.debug(f"Hub download of {repo_id}/{filename} failed: {error}")
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether to ask the Hugging Face Hub: not ``HF_HUB_OFFLINE``, and its host answers within ``timeout`` s.

    One TCP connection to the endpoint's host (no request is sent); a machine without network
    fails it at name resolution, in milliseconds.
    """
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch zip checkpoint with ``weights_only=True`` (pickled code is refused).

    The format is told from the file's first bytes, not its name (:func:`weights_format`).
    Checkpoints in torch's zip format are memory-mapped: only the tensors the model keeps are
    read, e.g. the image tower out of CONCH's whole 1.6 GB CoCa checkpoint.

    Raises
    ------
    ValueError
        Naming the file and what was expected, for a folder, an empty, truncated or corrupt
        file, a pickle (renamed or in torch's legacy format) or a file in another format.
    """
    if weights_format(path) == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as error:
            raise ValueError(
                f"{path} is a truncated or corrupt safetensors file ({_first_line(error)}); expected "
                f"{EXPECTED_FORMAT}. Download or copy it again."
            ) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError for unsafe or corrupt files
        raise ValueError(
            f"Refusing to read {path}: it is not a plain tensor checkpoint ({_first_line(error)}). Only "
            f"{EXPECTED_FORMAT} whose state dict is readable with `torch.load(weights_only=True)` is "
            "accepted, so that no code from a file is ever run."
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def weights_format(path: Path) -> str:
    """``"safetensors"`` or ``"zip"`` (a torch checkpoint), from the first bytes of ``path``; else a ValueError.

    Nothing is unpickled to tell: a safetensors file starts with its header's length and a
    JSON object, a torch checkpoint with a zip file's signature (and a zip file ends with its
    directory, which a truncated copy lacks).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a weights file; expected {EXPECTED_FORMAT}.")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes); expected {EXPECTED_FORMAT}. Download or copy it again.")
    with open(path, "rb") as file:
        head = file.read(9)
    if head.startswith(_ZIP_SIGNATURE):
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path} starts like a PyTorch zip checkpoint but is truncated or corrupt (its zip directory is "
                f"missing); expected {EXPECTED_FORMAT}. Download or copy it again."
            )
        return "zip"
    if head[8:9] == b"{":
        header_bytes = int.from_bytes(head[:8], "little")
        if header_bytes > size - 8:
            raise ValueError(
                f"{path} starts like a safetensors file but is truncated or corrupt: its header should be "
                f"{header_bytes} bytes, the whole file is {size}; expected {EXPECTED_FORMAT}. Download or copy it again."
            )
        return "safetensors"
    what = (
        "a pickle (torch.save's legacy format, or a pickled file renamed)"
        if head.startswith(_PICKLE_PROTOCOL)
        else "in an unknown format"
    )
    raise ValueError(
        f"{path} is {what}; expected {EXPECTED_FORMAT}. Pickles are never read, as unpickling can run code: "
        "convert it where it was made, with `safetensors.torch.save_file(state_dict, 'model.safetensors')`."
    )


def _first_line(error: BaseException) -> str:
    """``error``'s type and the first line of its message (which may be empty)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def sha256sum(path: Path, chunk_bytes: int = 2**24) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
