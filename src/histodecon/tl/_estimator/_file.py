"""The file format of a saved regressor: a safetensors file, a checksummed JSON record and a model card.

Version 4 adds the ``calibration`` of prediction intervals (:mod:`._calibration`); version 2
stores the loss weights as ``mae_weight`` / ``pearson_weight``; versions 1 (their former
names ``l1`` / ``l2``) to 3 are still read, without calibration.

Reading checks, in this order and before any tensor is allocated: the JSON's size, its
schema (exact types and bounds, :mod:`._schema`), its checksum, and the tensor file's
header (names, dtypes, shapes and byte ranges of the recorded architecture, and the file's
exact size). Only then are the tensor bytes read, hashed against the record and loaded. The
checksums catch damaged or edited copies; they are not a security boundary (anyone can
recompute them): the bounds and the header check are.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from histodecon._settings import logger

from ._card import model_card
from ._network import AbundanceNetwork
from ._schema import FORMAT, FORMAT_VERSION, MAX_RECORD_BYTES, check_record

#: File names of a model saved into a folder, as on the Hugging Face Hub.
FOLDER_STEM = "model"
FOLDER_CARD = "README.md"
#: A model's safetensors header is a few kB; a longer one is refused unread.
MAX_HEADER_BYTES = 2**20
_TENSOR_DTYPE = "F32"


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """The tensor and JSON files of a saved model.

    ``path`` is a folder (holding ``model.safetensors`` and ``model.json``) or a file name
    ending in either suffix or none.
    """
    path = Path(path)
    if path.is_dir():
        return path / f"{FOLDER_STEM}.safetensors", path / f"{FOLDER_STEM}.json"
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return Path(f"{stem}.safetensors"), Path(f"{stem}.json")


def card_path(path: str | Path) -> Path:
    """The model card of a saved model: ``README.md`` in a folder, else ``<name>.md`` beside the files.

    A card named after its model keeps two models saved in one folder (or in a project with
    its own ``README.md``) from sharing, or overwriting, one card.
    """
    if Path(path).is_dir():
        return Path(path) / FOLDER_CARD
    return model_paths(path)[0].with_suffix(".md")


def write_model_file(path: str | Path, network: AbundanceNetwork, record: dict, *, overwrite: bool) -> None:
    """Write ``network``'s tensors, ``record`` (features, cell types, ...) with their checksums, and a model card."""
    tensor_path, json_path = model_paths(path)
    card = card_path(path)
    for existing in (tensor_path, json_path, card):
        if existing.exists() and not overwrite:
            raise FileExistsError(f"{existing} exists; pass `overwrite=True` to replace it.")
    blob = save_tensors({name: t.detach().cpu().contiguous() for name, t in network.state_dict().items()})
    sidecar = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": network.architecture(),
        **record,
        "tensors": {"file": tensor_path.name, "sha256": hashlib.sha256(blob).hexdigest()},
    }
    sidecar["record_sha256"] = record_checksum(sidecar)
    tensor_path.write_bytes(blob)
    json_path.write_text(json.dumps(sidecar, indent=2))
    card.write_text(model_card(sidecar, tensor_path.name, json_path.name))
    logger.info(f"Saved model to {tensor_path} and {json_path}, with its model card {card}")


def read_model_file(path: str | Path) -> tuple[dict, AbundanceNetwork]:
    """The checked JSON record of a saved model and its network, in eval mode on the CPU."""
    tensor_path, json_path = model_paths(path)
    for needed in (json_path, tensor_path):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} not found; a saved model is a .safetensors file and a .json file of the same name "
                f"(or a folder holding {FOLDER_STEM}.safetensors and {FOLDER_STEM}.json)."
            )
    sidecar = _read_sidecar(json_path)
    arch = sidecar["architecture"]
    with torch.device("meta"):  # names and shapes of the recorded architecture, without allocating them
        network = AbundanceNetwork(arch["n_features"], arch["hidden"], arch["n_outputs"], output=arch["output"])
    expected = {name: list(t.shape) for name, t in network.state_dict().items()}
    size = _check_header(tensor_path, expected, arch)
    blob = tensor_path.read_bytes()
    if len(blob) != size or hashlib.sha256(blob).hexdigest() != sidecar["tensors"]["sha256"]:
        raise ValueError(
            f"{tensor_path} does not match the checksum recorded in {json_path}: it was modified or "
            "truncated after saving. Use an intact copy or save the model again."
        )
    tensors = load_tensors(blob)
    del blob
    found = {name: list(t.shape) for name, t in tensors.items()}
    if found != expected:  # the header was checked; this guards against a file replaced since
        raise ValueError(f"{tensor_path} does not hold the tensors of the recorded architecture {arch}.")
    _check_tensor_values(tensors, tensor_path)
    network.load_state_dict(tensors, assign=True)
    network.eval()
    return sidecar, network


def read_provenance(path: str | Path) -> dict:
    """The provenance of a saved model (its record checked), without loading its network."""
    return _read_sidecar(model_paths(path)[1])["provenance"]


def _read_sidecar(json_path: Path) -> dict:
    """The JSON record of a saved model, checked for size, schema and checksum."""
    size = json_path.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise ValueError(
            f"{json_path} is {size:,} bytes, more than the {MAX_RECORD_BYTES:,} a model record may have; "
            "it is not a saved histodecon model."
        )
    try:
        sidecar = json.loads(json_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{json_path} is not valid JSON ({error}); it is not a saved histodecon model.") from error
    check_record(sidecar, json_path)
    if record_checksum(sidecar) != sidecar["record_sha256"]:
        raise ValueError(
            f"{json_path} was edited after saving (its checksum `record_sha256` does not match its content). "
            "Use an intact copy, or load the original and save it again."
        )
    return sidecar


def _check_header(tensor_path: Path, expected: Mapping[str, list[int]], arch: dict) -> int:
    """The size of ``tensor_path`` once its safetensors header describes exactly the ``expected`` float32 tensors.

    Only the 8-byte length and the header are read; the tensors' byte ranges must tile the
    rest of the file exactly, so the file's size is bounded by the (bounded) architecture.
    """
    size = tensor_path.stat().st_size
    with open(tensor_path, "rb") as file:
        length = int.from_bytes(file.read(8), "little") if size >= 8 else -1
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(
                f"{tensor_path} is not a safetensors file of a saved model (its {size} bytes do not start with a "
                "valid header length): it was modified or truncated after saving. Use an intact copy or save "
                "the model again."
            )
        text = file.read(length)
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{tensor_path} has a corrupt safetensors header ({error}); use an intact copy.") from error
    if not isinstance(header, dict):
        raise ValueError(f"{tensor_path} has a corrupt safetensors header (not a JSON object); use an intact copy.")
    header.pop("__metadata__", None)
    found = {name: entry.get("shape") if isinstance(entry, dict) else None for name, entry in header.items()}
    if found != expected:
        differ = sorted(set(found) ^ set(expected) | {n for n in set(found) & set(expected) if found[n] != expected[n]})
        raise ValueError(
            f"{tensor_path} does not hold the tensors of the recorded architecture {arch}: the tensors "
            f"{differ[:8]}{' ...' if len(differ) > 8 else ''} are missing, extra or of another shape "
            f"(expected {dict(expected)})."
        )
    ranges = []
    for name, entry in header.items():
        offsets = entry.get("data_offsets")
        n_bytes = 4 * math.prod(expected[name])
        if (
            entry.get("dtype") != _TENSOR_DTYPE
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or offsets[1] - offsets[0] != n_bytes
        ):
            raise ValueError(
                f"{tensor_path}: tensor `{name}` is not stored as {_TENSOR_DTYPE} of {n_bytes} bytes "
                f"(dtype {entry.get('dtype')!r}, data_offsets {offsets!r}); use an intact copy."
            )
        ranges.append(offsets)
    ranges.sort()
    data_bytes = size - 8 - length
    if [r[0] for r in ranges] != [0] + [r[1] for r in ranges[:-1]] or ranges[-1][1] != data_bytes:
        raise ValueError(
            f"{tensor_path} is {size} bytes, but its header describes tensors of "
            f"{sum(b - a for a, b in ranges)} bytes after it: it was modified or truncated after saving. "
            "Use an intact copy or save the model again."
        )
    return size


def record_checksum(sidecar: dict) -> str:
    """SHA-256 of a model's JSON record without its own checksum, in a canonical serialisation."""
    content = {key: value for key, value in sidecar.items() if key != "record_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_tensor_values(tensors: Mapping[str, torch.Tensor], tensor_path: Path) -> None:
    """Refuse non-finite weights and a scaler whose scales are not positive."""
    not_finite = sorted(name for name, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if not_finite:
        raise ValueError(f"{tensor_path} has NaN or infinite values in {not_finite}; the model cannot predict.")
    for name in ("x_scale", "y_scale"):
        if not bool((tensors[name] > 0).all()):
            raise ValueError(f"{tensor_path}: the scaler `{name}` has values <= 0; scales must be positive.")
