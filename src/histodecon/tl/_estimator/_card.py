"""The model card of a saved regressor: a README in the Hugging Face Hub's format, written from its JSON record.

The card is generated from the same record as the JSON file, so the two cannot disagree. It
opens with YAML front matter (``library_name: histodecon`` and tags, which the Hub uses to
list and search models), then says what the model was trained on, what it reads (encoders and
their widths), what it predicts (cell types), how it was trained and how well it validated.
"""

from __future__ import annotations

from typing import Any

#: Tags of every histodecon model on the Hub.
TAGS = ("histodecon", "histology", "spatial-transcriptomics", "cell-type-deconvolution", "safetensors")


def model_card(record: dict, tensor_file: str, json_file: str) -> str:
    """The Markdown model card of a saved model whose JSON ``record`` :func:`write_model_file` wrote."""
    provenance = record.get("provenance") or {}
    versions = provenance.get("versions") or {}
    arch = record["architecture"]
    features = record["features"]
    cell_types = record["cell_types"]
    scores = record.get("validation_scores") or {}
    samples = provenance.get("samples") or provenance.get("groups") or []
    front_matter = ["---", "library_name: histodecon", "tags:", *(f"- {tag}" for tag in TAGS), "---"]
    lines = [
        *front_matter,
        "",
        "# histodecon AbundanceRegressor",
        "",
        f"Predicts the abundances of {len(cell_types)} cell types in every spot of an H&E slide from the "
        f"embeddings of {_join(f['key'] for f in features)}, with "
        f"[histodecon](https://pypi.org/project/histodecon/) {_code(versions.get('histodecon', ''))}.",
        "",
        "## Training data",
        "",
        f"- Samples ({len(samples)}): {_join(samples) if samples else 'not recorded'}",
        f"- Target: {_code(provenance.get('target', 'not recorded'))}",
        f"- Spots: {provenance.get('n_training_spots', '?')}, of which {provenance.get('n_validation_spots', '?')} "
        f"held out for early stopping (split by {provenance.get('validation_split', '?')})",
        f"- Trained: {provenance.get('date', 'date not recorded')}",
        "",
        "## Inputs: embeddings",
        "",
        "| encoder | dims |",
        "| --- | --- |",
        *(f"| {_code(f['key'])} | {f['dim']} |" for f in features),
        "",
        f"Embed slides with the same encoders first: `hd.tl.embed(sdata, models={[f['key'] for f in features]!r})`.",
        *_options(record.get("inputs")),
        "",
        "## Outputs: cell types",
        "",
        _join(cell_types),
        "",
        "## Architecture and hyperparameters",
        "",
        f"An MLP {arch['n_features']} -> {' -> '.join(map(str, arch['hidden']))} -> {arch['n_outputs']} "
        f"({arch['activation']} activations, {arch['output']} output).",
        "",
        "| hyperparameter | value |",
        "| --- | --- |",
        *(f"| {name} | {_code(value)} |" for name, value in record["hyperparameters"].items()),
        "",
        "## Validation",
        "",
        f"Trained for {record.get('best_epoch')} epochs ({provenance['early_stopping']['strategy']}; "
        f"{provenance.get('epochs', '?')} epochs in the folds)."
        if "early_stopping" in provenance
        else f"Best epoch {record.get('best_epoch')} of {provenance.get('epochs', '?')}.",
        "",
        "| score | value |",
        "| --- | --- |",
        *(f"| {name} | {_number(value)} |" for name, value in scores.items()),
        "",
        "## Files",
        "",
        f"- `{tensor_file}`: weights and scaler (safetensors, SHA-256 `{record['tensors']['sha256']}`)",
        f"- `{json_file}`: architecture, features, cell types, hyperparameters, provenance, history",
        "",
        "## Use",
        "",
        "```python",
        "import histodecon as hd",
        "",
        'model = hd.tl.AbundanceRegressor.load("<this repository or folder>")',
        "hd.tl.predict(sdata, model)",
        "```",
        "",
    ]
    return "\n".join(lines)


def _options(inputs: dict | None) -> list[str]:
    """A paragraph naming how the inputs are built from the embeddings (model files from version 3)."""
    if not inputs:
        return []
    return ["", "Inputs built with " + ", ".join(f"{name} {_code(value)}" for name, value in inputs.items()) + "."]


def _code(value: Any) -> str:
    """``value`` as inline code, with backticks and newlines that would break the Markdown removed."""
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def _join(values: Any) -> str:
    return ", ".join(_code(value) for value in values)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
