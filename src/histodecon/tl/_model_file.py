"""The file format of a saved regressor: a safetensors file and a checksummed JSON record.

Version 2 stores the loss weights as ``mae_weight`` / ``pearson_weight``; version 1 (their
former names ``l1`` / ``l2``) is still read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from histodecon._settings import logger

from ._hyperparameters import Hyperparameters
from ._network import ACTIVATION, OUTPUT, AbundanceNetwork

FORMAT = "histodecon.AbundanceRegressor"
FORMAT_VERSION = 2
#: Versions this release reads, each with the keys its ``hyperparameters`` record has.
_READABLE = {1: Hyperparameters.record_keys(legacy=True), 2: Hyperparameters.record_keys()}

_SCHEMA = {
    "record_sha256": str,
    "format": str,
    "version": int,
    "architecture": dict,
    "features": list,
    "cell_types": list,
    "hyperparameters": dict,
    "provenance": dict,
    "history": dict,
    "best_epoch": int,
    "validation_scores": dict,
    "tensors": dict,
}


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """The tensor and JSON files of a saved model; ``path`` may end in either suffix or none."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return Path(f"{stem}.safetensors"), Path(f"{stem}.json")


def write_model_file(path: str | Path, network: AbundanceNetwork, record: dict, *, overwrite: bool) -> None:
    """Write ``network``'s tensors and ``record`` (features, cell types, ...) with their checksums."""
    tensor_path, json_path = model_paths(path)
    for existing in (tensor_path, json_path):
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
    logger.info(f"Saved model to {tensor_path} and {json_path}")


def read_model_file(path: str | Path) -> tuple[dict, AbundanceNetwork]:
    """The checked JSON record of a saved model and its network, in eval mode on the CPU."""
    tensor_path, json_path = model_paths(path)
    for needed in (json_path, tensor_path):
        if not needed.exists():
            raise FileNotFoundError(
                f"{needed} not found; a saved model is a .safetensors file and a .json file of the same name."
            )
    sidecar = _read_sidecar(json_path)
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sidecar["tensors"]["sha256"]:
        raise ValueError(
            f"{tensor_path} does not match the checksum recorded in {json_path}: it was modified or "
            "truncated after saving. Use an intact copy or save the model again."
        )
    arch = sidecar["architecture"]
    network = AbundanceNetwork(arch["n_features"], arch["hidden"], arch["n_outputs"])
    tensors = load_tensors(blob)
    expected = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != expected:
        raise ValueError(
            f"{tensor_path} does not hold the tensors of the recorded architecture {arch}: "
            f"expected {expected}, found {found}."
        )
    _check_tensor_values(tensors, tensor_path)
    network.load_state_dict(tensors)
    network.eval()
    return sidecar, network


def _read_sidecar(json_path: Path) -> dict:
    """The JSON record of a saved model, checked for format, version and consistency."""
    try:
        sidecar = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{json_path} is not valid JSON ({error}); it is not a saved histodecon model.") from error
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a saved AbundanceRegressor (no `format: {FORMAT}`).")
    if sidecar.get("version") not in _READABLE:
        raise ValueError(
            f"{json_path} has format version {sidecar.get('version')!r}; this histodecon reads versions "
            f"{sorted(_READABLE)}. Load it with the histodecon release that saved it."
        )
    for key, kind in _SCHEMA.items():
        if not isinstance(sidecar.get(key), kind):
            raise ValueError(f"{json_path}: field `{key}` is missing or not a {kind.__name__}.")
    if record_checksum(sidecar) != sidecar["record_sha256"]:
        raise ValueError(
            f"{json_path} was edited after saving (its checksum `record_sha256` does not match its content). "
            "Use an intact copy, or load the original and save it again."
        )
    arch, features, cell_types = sidecar["architecture"], sidecar["features"], sidecar["cell_types"]
    if not all(isinstance(arch.get(k), int) for k in ("n_features", "n_outputs")) or not isinstance(
        arch.get("hidden"), list
    ):
        raise ValueError(f"{json_path}: `architecture` needs integer `n_features`, `n_outputs` and a `hidden` list.")
    hyperparameter_keys = _READABLE[sidecar["version"]]
    if set(sidecar["hyperparameters"]) != hyperparameter_keys:
        raise ValueError(
            f"{json_path}: `hyperparameters` must have exactly the keys {sorted(hyperparameter_keys)}, "
            f"got {sorted(sidecar['hyperparameters'])}."
        )
    if (arch.get("activation"), arch.get("output")) != (ACTIVATION, OUTPUT):
        raise ValueError(
            f"{json_path}: `architecture` must have activation {ACTIVATION!r} and output {OUTPUT!r}, "
            f"got {arch.get('activation')!r} and {arch.get('output')!r}."
        )
    if arch["hidden"] != sidecar["hyperparameters"]["hidden"]:
        raise ValueError(f"{json_path}: `architecture.hidden` and `hyperparameters.hidden` disagree.")
    if not all(
        isinstance(f, dict) and isinstance(f.get("key"), str) and isinstance(f.get("dim"), int) for f in features
    ):
        raise ValueError(f"{json_path}: every entry of `features` needs a string `key` and an integer `dim`.")
    keys = [f["key"] for f in features]
    if len(set(keys)) != len(keys) or sum(f["dim"] for f in features) != arch["n_features"]:
        raise ValueError(
            f"{json_path}: feature keys {keys} must be unique and their dims must add up to "
            f"`architecture.n_features` ({arch['n_features']})."
        )
    if len(cell_types) != arch["n_outputs"] or len(set(cell_types)) != len(cell_types):
        raise ValueError(
            f"{json_path}: {len(cell_types)} cell types recorded for {arch['n_outputs']} outputs, or duplicates."
        )
    if not isinstance(sidecar["tensors"].get("sha256"), str):
        raise ValueError(f"{json_path}: `tensors.sha256` (the checksum of the tensor file) is missing.")
    return sidecar


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
