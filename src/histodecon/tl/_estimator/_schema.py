"""The schema of a saved regressor's JSON record: exact types and bounds, checked before anything is allocated.

A model file comes from whoever shared it, and its checksums can be recomputed by anyone: they
catch accidents (a truncated copy, an edit), not forgeries. What keeps a hostile file harmless
is this schema (every field of an exact JSON type, every size within a bound) and the check of
the tensor file's header against the architecture, both done before a tensor is allocated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from histodecon.pp._stain import STAIN_REFERENCE, reference_from_record

from ._hyperparameters import ADDED_FIELDS, DEPRECATED_NAMES, Hyperparameters
from ._inputs import LEGACY as LEGACY_INPUTS
from ._inputs import InputOptions
from ._network import ACTIVATION, OUTPUTS

FORMAT = "histodecon.AbundanceRegressor"
FORMAT_VERSION = 4
#: Versions this release reads, each with the keys its ``hyperparameters`` record has (3 added
#: ``target_scale`` and the top-level ``inputs``: per-slide feature scaling and neighbourhood radius;
#: 4 the top-level ``calibration`` of the prediction intervals).
READABLE = {version: Hyperparameters.record_keys(version) for version in (1, 2, 3, 4)}

#: Bounds on what a model file may ask for: far above any trained model, far below what exhausts memory.
MAX_WIDTH = 65_536
MAX_LAYERS = 64
MAX_FEATURE_BLOCKS = 64
MAX_CELL_TYPES = 10_000
MAX_PARAMETERS = 2**28  # 1 GiB of float32 weights
MAX_RECORD_BYTES = 64 * 2**20
MAX_NAME_LENGTH = 1_000
MAX_CALIBRATION_RANKS = 10_000

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOP_LEVEL = (
    "record_sha256",
    "format",
    "version",
    "architecture",
    "features",
    "cell_types",
    "hyperparameters",
    "provenance",
    "history",
    "best_epoch",
    "validation_scores",
    "tensors",
)
#: What a field holds, added to messages about it.
_DESCRIPTIONS = {
    "record_sha256": "the checksum of this record",
    "tensors.sha256": "the checksum of the tensor file",
    "tensors.file": "the name of the tensor file",
}
_FIX = "The file was not written by `AbundanceRegressor.save`, or was edited after; use the original files."


def check_record(record: Any, json_path: Path) -> dict:
    """``record`` (the parsed JSON of ``json_path``) when every field has its exact type and lies within bounds.

    Raises
    ------
    ValueError
        Naming the file and the first field that is missing, extra, of another type or out of bounds.
    """
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a saved AbundanceRegressor (no `format: {FORMAT}`).")
    version = record.get("version")
    if type(version) is not int or version not in READABLE:
        raise ValueError(
            f"{json_path} has format version {version!r}; this histodecon reads versions {sorted(READABLE)}. "
            "Load it with the histodecon release that saved it."
        )
    check = _Checker(json_path)
    check.keys(record, "", _TOP_LEVEL + ("inputs",) * (version >= 3) + ("calibration",) * (version >= 4))
    check.sha256(record["record_sha256"], "record_sha256")
    arch = check.keys(
        record["architecture"], "architecture", ("n_features", "hidden", "n_outputs", "activation", "output")
    )
    n_features = check.integer(arch["n_features"], "architecture.n_features", 1, MAX_WIDTH)
    hidden = check.integers(arch["hidden"], "architecture.hidden", 1, MAX_WIDTH, max_length=MAX_LAYERS)
    n_outputs = check.integer(arch["n_outputs"], "architecture.n_outputs", 1, MAX_CELL_TYPES)
    if arch["activation"] != ACTIVATION:
        check.fail(
            "architecture.activation", f"is {arch['activation']!r}: histodecon's network has activation {ACTIVATION!r}"
        )
    if arch["output"] not in OUTPUTS.values():
        check.fail(
            "architecture.output", f"is {arch['output']!r}; histodecon's network has output {sorted(OUTPUTS.values())}"
        )
    widths = [n_features, *hidden, n_outputs]
    n_parameters = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    if n_parameters > MAX_PARAMETERS:
        check.fail("architecture", f"asks for {n_parameters:,} parameters, more than the {MAX_PARAMETERS:,} allowed")

    features = check.array(record["features"], "features", max_length=MAX_FEATURE_BLOCKS, min_length=1)
    for i, block in enumerate(features):
        check.keys(block, f"features[{i}]", ("key", "dim"))
        check.string(block["key"], f"features[{i}].key")
        check.integer(block["dim"], f"features[{i}].dim", 1, MAX_WIDTH)
    keys = [block["key"] for block in features]
    inputs = _check_inputs(check, record["inputs"]) if version >= 3 else InputOptions(**LEGACY_INPUTS)
    if len(set(keys)) != len(keys) or inputs.width(sum(block["dim"] for block in features)) != n_features:
        check.fail(
            "features",
            f"keys {keys} must be unique and their dims must add up to `architecture.n_features` ({n_features}; "
            "half of it with a neighbourhood feature)",
        )
    cell_types = check.array(record["cell_types"], "cell_types", max_length=MAX_CELL_TYPES)
    for i, name in enumerate(cell_types):
        check.string(name, f"cell_types[{i}]")
    if len(cell_types) != n_outputs or len(set(cell_types)) != len(cell_types):
        check.fail("cell_types", f"{len(cell_types)} cell types recorded for {n_outputs} outputs, or duplicates")

    _check_hyperparameters(check, record["hyperparameters"], READABLE[version], hidden)
    target_scale = record["hyperparameters"].get("target_scale", ADDED_FIELDS["target_scale"])
    if target_scale not in OUTPUTS:
        check.fail("hyperparameters.target_scale", f"must be one of {sorted(OUTPUTS)}, got {target_scale!r}")
    if arch["output"] != OUTPUTS[target_scale]:
        check.fail(
            "architecture.output",
            f"is {arch['output']!r} but target_scale {target_scale!r} needs {OUTPUTS[target_scale]!r}",
        )
    provenance = check.keys(record["provenance"], "provenance", None)
    if provenance.get(STAIN_REFERENCE) is not None:
        try:
            reference_from_record(provenance[STAIN_REFERENCE])
        except ValueError as error:
            check.fail(f"provenance.{STAIN_REFERENCE}", f"is not a stain reference ({error})")
    history = check.keys(record["history"], "history", None)
    lengths = {len(check.numbers(values, f"history.{name}")) for name, values in history.items()}
    if len(lengths) > 1:
        check.fail("history", f"columns of different lengths {sorted(lengths)}")
    check.integer(record["best_epoch"], "best_epoch", 0, 2**31)
    for name, value in check.keys(record["validation_scores"], "validation_scores", None).items():
        check.number(value, f"validation_scores.{name}")
    if version >= 4 and record["calibration"] is not None:
        _check_calibration(check, record["calibration"], n_outputs)
    tensors = check.keys(record["tensors"], "tensors", ("file", "sha256"))
    check.string(tensors["file"], "tensors.file")
    check.sha256(tensors["sha256"], "tensors.sha256")
    return record


def _check_inputs(check: _Checker, record: Any) -> InputOptions:
    """The :class:`InputOptions` of a version-3 record: exact keys, a known scaling, a positive radius or null."""
    check.keys(record, "inputs", tuple(LEGACY_INPUTS))
    check.string(record["feature_scaling"], "inputs.feature_scaling")
    if record["context_radius"] is not None:
        check.number(record["context_radius"], "inputs.context_radius")
    try:
        return InputOptions(**record)
    except ValueError as error:
        check.fail("inputs", f"holds an invalid value ({error})")


def _check_calibration(check: _Checker, record: Any, n_outputs: int) -> None:
    """The conformal calibration of a version-4 record, checked field by field.

    Ranks increase strictly from >= 1 up to ``n_spots``; one row of finite residuals >= 0 per
    rank, one value per cell type, non-decreasing from rank to rank (order statistics).
    """
    check.keys(record, "calibration", ("method", "held_out", "n_spots", "ranks", "residuals"))
    check.string(record["method"], "calibration.method")
    check.string(record["held_out"], "calibration.held_out")
    n_spots = check.integer(record["n_spots"], "calibration.n_spots", 1, 2**31)
    ranks = check.integers(record["ranks"], "calibration.ranks", 1, n_spots, max_length=MAX_CALIBRATION_RANKS)
    if any(b <= a for a, b in zip(ranks[:-1], ranks[1:], strict=True)) or ranks[-1] != n_spots:
        check.fail("calibration.ranks", f"must increase strictly up to `calibration.n_spots` ({n_spots})")
    rows = check.array(record["residuals"], "calibration.residuals", max_length=len(ranks))
    if len(rows) != len(ranks):
        check.fail("calibration.residuals", f"must have one row per rank ({len(ranks)}), got {len(rows)}")
    for i, row in enumerate(rows):
        field = f"calibration.residuals[{i}]"
        if len(check.numbers(row, field)) != n_outputs or not all(math.isfinite(v) and v >= 0 for v in row):
            check.fail(field, f"must hold {n_outputs} finite residuals >= 0, one per cell type")
        if i and any(b < a for a, b in zip(rows[i - 1], row, strict=True)):
            check.fail(field, "must not be below the row before (residuals sorted by rank)")


def _check_hyperparameters(check: _Checker, record: Any, expected: set[str], hidden: list[int]) -> None:
    """Exact keys for the file's version, numbers of the declared kind, values valid for :class:`Hyperparameters`."""
    if not isinstance(record, dict) or set(record) != expected:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        check.fail("hyperparameters", f"must have exactly the keys {sorted(expected)}, got {got}")
    kinds = {f.name: type(f.default) for f in fields(Hyperparameters)}
    for name, value in record.items():
        field = f"hyperparameters.{name}"
        kind = kinds[DEPRECATED_NAMES.get(name, name)]
        if kind is int:
            check.integer(value, field, -(2**63), 2**63 - 1)
        elif kind is float:
            check.number(value, field)
        elif kind is str:
            check.string(value, field)
    if record["hidden"] != hidden:
        check.fail("hyperparameters.hidden", f"is {record['hidden']!r} but `architecture.hidden` is {hidden!r}")
    try:
        Hyperparameters.from_record(record)
    except (ValueError, TypeError) as error:
        check.fail("hyperparameters", f"holds an invalid value ({error})")


class _Checker:
    """Type and bound checks whose failures name the file and the field."""

    def __init__(self, json_path: Path) -> None:
        self.json_path = json_path

    def fail(self, field: str, problem: str) -> None:
        description = f" ({_DESCRIPTIONS[field]})" if field in _DESCRIPTIONS else ""
        raise ValueError(f"{self.json_path}: field `{field}`{description} {problem}. {_FIX}")

    def keys(self, value: Any, field: str, expected: Sequence[str] | None) -> dict:
        """``value`` when it is a JSON object with exactly the ``expected`` keys (``None``: any string keys)."""
        where = field or "(top level)"
        if not isinstance(value, dict):
            self.fail(where, f"must be a JSON object, got {_kind(value)}")
        if expected is not None:
            prefix = f"{field}." if field else ""
            missing = [key for key in expected if key not in value]
            if missing:
                self.fail(f"{prefix}{missing[0]}", "is missing")
            extra = sorted(set(value) - set(expected))
            if extra:
                self.fail(f"{prefix}{extra[0]}", f"is not part of the format (expected only {list(expected)})")
        return value

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if type(value) is not int:
            self.fail(field, f"must be an integer, got {_kind(value)}")
        if not low <= value <= high:
            self.fail(field, f"must be an integer in [{low}, {high}], got {value}")
        return value

    def number(self, value: Any, field: str) -> float:
        if type(value) not in (int, float):
            self.fail(field, f"must be a number, got {_kind(value)}")
        return value

    def string(self, value: Any, field: str) -> str:
        if type(value) is not str or not 0 < len(value) <= MAX_NAME_LENGTH:
            self.fail(field, f"must be a non-empty string of at most {MAX_NAME_LENGTH} characters, got {_kind(value)}")
        return value

    def sha256(self, value: Any, field: str) -> str:
        if type(value) is not str or not _SHA256.fullmatch(value):
            self.fail(field, f"must be a SHA-256 in hex (64 characters 0-9a-f), got {_kind(value)}")
        return value

    def array(self, value: Any, field: str, *, max_length: int, min_length: int = 0) -> list:
        if type(value) is not list:
            self.fail(field, f"must be a JSON list, got {_kind(value)}")
        if not min_length <= len(value) <= max_length:
            self.fail(field, f"must have {min_length} to {max_length} entries, got {len(value)}")
        return value

    def integers(self, value: Any, field: str, low: int, high: int, *, max_length: int) -> list[int]:
        for i, item in enumerate(self.array(value, field, max_length=max_length, min_length=1)):
            self.integer(item, f"{field}[{i}]", low, high)
        return value

    def numbers(self, value: Any, field: str) -> list:
        if type(value) is not list:
            self.fail(field, f"must be a JSON list, got {_kind(value)}")
        for i, item in enumerate(value):
            self.number(item, f"{field}[{i}]")
        return value


def _kind(value: Any) -> str:
    """``value`` and its JSON type, for messages (long values cut)."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({names.get(type(value), type(value).__name__)})"
