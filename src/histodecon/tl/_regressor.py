"""AbundanceRegressor: an MLP from spot embeddings to cell-type abundances, its training and its files."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn
from tqdm.auto import tqdm

from histodecon._settings import logger, settings
from histodecon.metrics._scores import cc_score, l1_score

#: Widths of the six hidden layers: with the output layer, the paper's 7 linear layers.
DEFAULT_HIDDEN = (256, 256, 128, 128, 64, 64)
FORMAT = "histodecon.AbundanceRegressor"
FORMAT_VERSION = 1
#: Added under the square root of the Pearson denominator so that a constant prediction has a gradient.
_PEARSON_EPS = 1e-8
_PREDICT_CHUNK = 8192


class _Network(nn.Module):
    """Standardise inputs, run the MLP, return non-negative abundances in the targets' units.

    ``x_mean`` / ``x_scale`` standardise the features, ``y_scale`` maps the network's output
    (targets divided by their training standard deviation) back to abundances. They are
    buffers, so they travel with the weights in one state dict.
    """

    def __init__(self, n_features: int, hidden: Sequence[int], n_outputs: int) -> None:
        super().__init__()
        widths = [n_features, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.SiLU()]
        layers.append(nn.Linear(widths[-1], n_outputs))
        self.layers = nn.Sequential(*layers)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_scale", torch.ones(n_features))
        self.register_buffer("y_scale", torch.ones(n_outputs))

    def forward_scaled(self, x_standardised: torch.Tensor) -> torch.Tensor:
        """Scaled abundances from standardised features (what training sees)."""
        return nn.functional.softplus(self.layers(x_standardised))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Abundances from raw features."""
        return self.forward_scaled((x - self.x_mean) / self.x_scale) * self.y_scale


def loss_terms(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three terms of the training loss over a batch: MSE, MAE and ``1 - Pearson``.

    Pearson is computed per cell type (column) over the spots of the batch and averaged over
    the cell types whose target varies in the batch; when none does, the term is 0.
    """
    mse = torch.mean((pred - target) ** 2)
    mae = torch.mean(torch.abs(pred - target))
    pred_c = pred - pred.mean(dim=0)
    target_c = target - target.mean(dim=0)
    target_ss = (target_c**2).sum(dim=0)
    corr = (pred_c * target_c).sum(dim=0) / torch.sqrt((pred_c**2).sum(dim=0) * target_ss + _PEARSON_EPS)
    varies = target_ss > 0
    pearson_loss = (1 - corr[varies]).mean() if bool(varies.any()) else pred.new_zeros(())
    return mse, mae, pearson_loss


def _validation_split(
    n: int, groups: np.ndarray | None, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices of training and validation spots, and how they were split.

    With three or more groups (slides), whole groups are held out so that validation spots
    are not neighbours of training spots; otherwise a random ``fraction`` of spots is.
    """
    if groups is not None:
        names = np.unique(groups)
        if len(names) >= 3:
            n_val = min(max(1, round(fraction * len(names))), len(names) - 1)
            held_out = rng.permutation(names)[:n_val]
            is_val = np.isin(groups, held_out)
            return np.flatnonzero(~is_val), np.flatnonzero(is_val), "groups"
    order = rng.permutation(n)
    n_val = min(max(1, round(fraction * n)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val]), "spots"


def _check_matrix(values: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (spots x columns), got shape {matrix.shape}.")
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(
            f"`{name}` has NaN or infinite values in {int(bad.sum())} of {len(matrix)} rows; drop those spots first."
        )
    return matrix


class AbundanceRegressor:
    """The paper's regressor: a 7-layer MLP from spot embeddings to cell-type abundances.

    Architecture: six hidden linear layers with SiLU activations and a linear output layer
    (Sun, Zhu & Qiu 2025). The default widths, ``(256, 256, 128, 128, 64, 64)``, funnel the
    concatenated embeddings (1,536-d for CONCH + UNI) down towards the few dozen cell types:
    the first layer holds most of the ~0.5 M parameters, enough for the ~10k spots of a
    training cohort while an epoch of a her2st-sized cohort stays under a second on two CPU
    cores. A softplus on the output keeps predictions non-negative, as abundances are, while
    still passing gradients for spots predicted near 0 (which clipping would not).

    Training: features are standardised with the training mean and standard deviation
    (features constant in training get scale 1); targets are divided by their per-type
    training standard deviation so that every cell type weighs alike. The loss over a batch
    is ``MSE + l1 * MAE + l2 * (1 - Pearson)`` (:func:`loss_terms`); on unit-variance targets
    the three terms start at similar size, hence the equal default weights. AdamW on
    shuffled minibatches; after every epoch the loss on a validation split of the training
    data is computed, and training stops when it has not improved for ``patience`` epochs,
    keeping the best weights. The split holds out whole groups (slides) when ``fit`` gets
    three or more, else a random fraction of spots. Everything is seeded by ``seed``: the
    same seed, data and device give the same model on CPU.

    Parameters
    ----------
    hidden
        Widths of the hidden layers.
    l1
        Weight of the mean absolute error in the loss.
    l2
        Weight of ``1 - Pearson`` (per cell type, over the batch) in the loss.
    lr
        AdamW learning rate.
    weight_decay
        AdamW weight decay.
    batch_size
        Spots per minibatch.
    max_epochs
        Upper bound on training epochs.
    patience
        Epochs without improvement of the validation loss before training stops.
    validation_fraction
        Fraction of the training groups (or spots) held out for early stopping.
    seed
        Seed of the initialisation, the split and the minibatch order.
    device
        Torch device; ``None`` uses :attr:`histodecon.settings.device`.

    Attributes
    ----------
    feature_keys
        Names of the feature blocks, in input order (e.g. ``["conch", "uni"]``).
    feature_dims
        Width of each feature block.
    cell_types
        Names of the predicted cell types, in output order.
    history
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``.
    best_epoch
        Epoch whose weights were kept.
    validation_scores
        ``loss``, ``cc`` and ``l1`` (see :mod:`histodecon.metrics`) on the validation split.
    provenance
        Epochs, seed, loss weights, the split, training groups / samples, package versions.

    Examples
    --------
    >>> import numpy as np
    >>> import histodecon as hd
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 8)).astype("float32")
    >>> Y = np.exp(X[:, :3])
    >>> model = hd.tl.AbundanceRegressor(max_epochs=5).fit(X, Y)
    >>> model.predict(X).shape
    (200, 3)
    """

    def __init__(
        self,
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        l1: float = 1.0,
        l2: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 256,
        max_epochs: int = 200,
        patience: int = 10,
        validation_fraction: float = 0.1,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        hidden = tuple(hidden)
        if not hidden or not all(isinstance(w, int | np.integer) and w > 0 for w in hidden):
            raise ValueError(f"`hidden` must be a non-empty sequence of positive layer widths, got {hidden!r}.")
        for name, value in {"l1": l1, "l2": l2, "weight_decay": weight_decay}.items():
            if not value >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
        for name, value in {"lr": lr, "batch_size": batch_size, "max_epochs": max_epochs, "patience": patience}.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0, got {value!r}.")
        if not 0 < validation_fraction < 1:
            raise ValueError(f"`validation_fraction` must be in (0, 1), got {validation_fraction!r}.")
        self.hyperparameters = {
            "hidden": [int(w) for w in hidden],
            "l1": float(l1),
            "l2": float(l2),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "batch_size": int(batch_size),
            "max_epochs": int(max_epochs),
            "patience": int(patience),
            "validation_fraction": float(validation_fraction),
            "seed": int(seed),
        }
        self.device = device
        self.network: _Network | None = None
        self.feature_keys: list[str] = []
        self.feature_dims: list[int] = []
        self.cell_types: list[str] = []
        self.history = pd.DataFrame(columns=["epoch", "train_loss", "val_loss"])
        self.best_epoch: int | None = None
        self.validation_scores: dict[str, float] = {}
        self.provenance: dict = {}

    def __repr__(self) -> str:
        state = (
            f"{sum(self.feature_dims)} features -> {len(self.cell_types)} cell types"
            if self.network is not None
            else "unfitted"
        )
        return f"AbundanceRegressor({state}, hidden={tuple(self.hyperparameters['hidden'])})"

    # ----------------------------------------------------------------------------- training
    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray | pd.DataFrame,
        *,
        groups: Sequence | np.ndarray | None = None,
        feature_dims: Mapping[str, int] | None = None,
    ) -> AbundanceRegressor:
        """Train on features ``X`` (spots x features) and abundances ``Y`` (spots x cell types).

        Parameters
        ----------
        X
            Features of the training spots.
        Y
            Non-negative abundances; a DataFrame's columns name the cell types, an array's
            columns are named ``"0"``, ``"1"``, ...
        groups
            Slide (or patient) of every spot; with three or more groups the validation split
            holds out whole groups.
        feature_dims
            Names and widths of the feature blocks concatenated in ``X``, in order;
            ``None`` names one block ``"features"``.

        Returns
        -------
        The fitted regressor itself.

        Examples
        --------
        >>> import numpy as np
        >>> import histodecon as hd
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(300, 6)).astype("float32")
        >>> groups = np.repeat(["s1", "s2", "s3"], 100)
        >>> model = hd.tl.AbundanceRegressor(max_epochs=5).fit(X, np.exp(X[:, :2]), groups=groups)
        >>> model.provenance["validation_split"]
        'groups'
        """
        x = _check_matrix(X, "X")
        y = _check_matrix(Y, "Y")
        if len(x) != len(y):
            raise ValueError(f"`X` has {len(x)} spots but `Y` has {len(y)}; pass one target row per feature row.")
        if (y < 0).any():
            raise ValueError("`Y` has negative values; the targets must be abundances or proportions (>= 0).")
        if len(x) < 4:
            raise ValueError(f"Training needs at least 4 spots, got {len(x)}.")
        feature_dims = dict(feature_dims) if feature_dims is not None else {"features": x.shape[1]}
        if sum(feature_dims.values()) != x.shape[1]:
            raise ValueError(
                f"`feature_dims` {feature_dims} add up to {sum(feature_dims.values())} columns but `X` has {x.shape[1]}."
            )
        if groups is not None:
            groups = np.asarray(groups).astype(str)
            if groups.shape != (len(x),):
                raise ValueError(f"`groups` must give one group per spot ({len(x)}), got shape {groups.shape}.")
        cell_types = [str(c) for c in Y.columns] if isinstance(Y, pd.DataFrame) else [str(i) for i in range(y.shape[1])]
        if len(set(cell_types)) != len(cell_types):
            raise ValueError(f"`Y` has duplicate cell-type columns: {cell_types}.")

        hp = self.hyperparameters
        rng = np.random.default_rng(hp["seed"])
        train_idx, val_idx, split = _validation_split(len(x), groups, hp["validation_fraction"], rng)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp["seed"])
            network = _Network(x.shape[1], hp["hidden"], y.shape[1])
        x_std = x[train_idx].std(axis=0)
        y_std = y[train_idx].std(axis=0)
        network.x_mean.copy_(torch.from_numpy(x[train_idx].mean(axis=0)))
        network.x_scale.copy_(torch.from_numpy(np.where(x_std > 0, x_std, 1.0).astype(np.float32)))
        network.y_scale.copy_(torch.from_numpy(np.where(y_std > 0, y_std, 1.0).astype(np.float32)))

        device = settings.torch_device(self.device)
        network = network.to(device)
        x_all = (torch.from_numpy(x).to(device) - network.x_mean) / network.x_scale
        y_all = torch.from_numpy(y).to(device) / network.y_scale
        x_train, y_train = x_all[train_idx], y_all[train_idx]
        x_val, y_val = x_all[val_idx], y_all[val_idx]
        del x_all, y_all

        history, best_state, best_loss, best_epoch = self._train(network, x_train, y_train, x_val, y_val)
        if best_state is None:
            raise RuntimeError("Training diverged: the validation loss was never finite. Lower `lr` and fit again.")
        network.load_state_dict(best_state)
        network.eval()

        self.network = network
        self.feature_keys, self.feature_dims = list(feature_dims), [int(d) for d in feature_dims.values()]
        self.cell_types = cell_types
        self.history = pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss"])
        self.best_epoch = best_epoch
        val_pred = self.predict(x[val_idx])
        self.validation_scores = {
            "loss": best_loss,
            "cc": cc_score(y[val_idx], val_pred),
            "l1": l1_score(y[val_idx], val_pred),
        }
        self.provenance = {
            "epochs": len(history),
            "best_epoch": best_epoch,
            "seed": hp["seed"],
            "loss_weights": {"mse": 1.0, "l1": hp["l1"], "l2": hp["l2"]},
            "validation_split": split,
            "n_training_spots": len(train_idx),
            "n_validation_spots": len(val_idx),
            "groups": sorted(map(str, set(groups))) if groups is not None else None,
            "versions": {name: version(name) for name in ("histodecon", "torch", "numpy")},
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        logger.info(
            f"Trained {len(history)} epochs (best {best_epoch}); validation CC "
            f"{self.validation_scores['cc']:.3f}, L1 {self.validation_scores['l1']:.3f}"
        )
        return self

    def _train(
        self,
        network: _Network,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
    ) -> tuple[list[tuple[int, float, float]], dict, float, int]:
        """The training loop: tensors stay on the device, minibatches are slices of a permutation."""
        hp = self.hyperparameters
        optimizer = torch.optim.AdamW(network.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        generator = torch.Generator().manual_seed(hp["seed"])
        n, batch_size = len(x_train), hp["batch_size"]
        history: list[tuple[int, float, float]] = []
        best_state, best_loss, best_epoch = None, math.inf, 0
        epochs = tqdm(range(1, hp["max_epochs"] + 1), desc="training", leave=False, disable=not settings.progress)
        for epoch in epochs:
            network.train()
            order = torch.randperm(n, generator=generator).to(x_train.device)
            total = 0.0
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                loss = self._loss(network.forward_scaled(x_train[index]), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
            network.eval()
            with torch.no_grad():
                val_loss = self._loss(network.forward_scaled(x_val), y_val).item()
            history.append((epoch, total / n, val_loss))
            epochs.set_postfix(val_loss=f"{val_loss:.4f}")
            if val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best_state = {name: value.detach().clone() for name, value in network.state_dict().items()}
            elif epoch - best_epoch >= hp["patience"]:
                break
        return history, best_state, best_loss, best_epoch

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse, mae, pearson_loss = loss_terms(pred, target)
        return mse + self.hyperparameters["l1"] * mae + self.hyperparameters["l2"] * pearson_loss

    # ---------------------------------------------------------------------------- inference
    def _check_fitted(self) -> _Network:
        if self.network is None:
            raise RuntimeError("This AbundanceRegressor is not fitted: call `fit` or `AbundanceRegressor.load` first.")
        return self.network

    def predict(self, X: np.ndarray, *, batch_size: int = _PREDICT_CHUNK) -> np.ndarray:
        """Predicted abundances (spots x cell types, float32, >= 0) for features ``X``.

        Parameters
        ----------
        X
            Features in the training layout: the blocks :attr:`feature_keys` concatenated.
        batch_size
            Spots per forward pass; bounds memory on large slides.

        Returns
        -------
        Abundances in the units of the training targets, one column per :attr:`cell_types`.

        Examples
        --------
        >>> import numpy as np
        >>> import histodecon as hd
        >>> X = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
        >>> model = hd.tl.AbundanceRegressor(max_epochs=3).fit(X, np.exp(X[:, :2]))
        >>> bool((model.predict(X) >= 0).all())
        True
        """
        network = self._check_fitted()
        x = _check_matrix(X, "X")
        if x.shape[1] != sum(self.feature_dims):
            raise ValueError(
                f"`X` has {x.shape[1]} features but the model was trained on {sum(self.feature_dims)} "
                f"({dict(zip(self.feature_keys, self.feature_dims, strict=True))})."
            )
        device = settings.torch_device(self.device)
        network = network.to(device)
        out = np.empty((len(x), len(self.cell_types)), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = torch.from_numpy(x[start : start + batch_size]).to(device)
                out[start : start + batch_size] = network(chunk).cpu().numpy()
        return out

    # ---------------------------------------------------------------------------- save/load
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the model as ``<path>.safetensors`` (tensors) and ``<path>.json`` (everything else).

        The JSON records the architecture, feature keys and dims in order, cell types,
        hyperparameters, training provenance, history, validation scores, the SHA-256 of the
        tensor file and a SHA-256 of the record itself, both checked by :meth:`load`. ``path``
        may end in ``.safetensors`` or ``.json``. No pickle is involved.

        Parameters
        ----------
        path
            Where to write, without or with one of the two suffixes.
        overwrite
            Replace existing files; otherwise they raise :class:`FileExistsError`.

        Examples
        --------
        >>> model.save("her2st_model")  # doctest: +SKIP
        >>> model = hd.tl.AbundanceRegressor.load("her2st_model")  # doctest: +SKIP
        """
        network = self._check_fitted()
        tensor_path, json_path = _paths(path)
        for existing in (tensor_path, json_path):
            if existing.exists() and not overwrite:
                raise FileExistsError(f"{existing} exists; pass `overwrite=True` to replace it.")
        blob = save_tensors({name: t.detach().cpu().contiguous() for name, t in network.state_dict().items()})
        sidecar = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "architecture": {
                "n_features": sum(self.feature_dims),
                "hidden": self.hyperparameters["hidden"],
                "n_outputs": len(self.cell_types),
                "activation": "SiLU",
                "output": "softplus",
            },
            "features": [{"key": k, "dim": d} for k, d in zip(self.feature_keys, self.feature_dims, strict=True)],
            "cell_types": self.cell_types,
            "hyperparameters": self.hyperparameters,
            "provenance": self.provenance,
            "history": self.history.to_dict(orient="list"),
            "best_epoch": self.best_epoch,
            "validation_scores": self.validation_scores,
            "tensors": {"file": tensor_path.name, "sha256": hashlib.sha256(blob).hexdigest()},
        }
        sidecar["record_sha256"] = _record_checksum(sidecar)
        tensor_path.write_bytes(blob)
        json_path.write_text(json.dumps(sidecar, indent=2))
        logger.info(f"Saved model to {tensor_path} and {json_path}")

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> AbundanceRegressor:
        """Read a model written by :meth:`save`, checking it against its JSON record.

        Refused with :class:`ValueError`: a JSON of another format or a newer version, a JSON
        edited after saving (its checksum differs), missing or inconsistent fields, a tensor
        file whose SHA-256 differs from the recorded one (modified or truncated), tensors whose
        names or shapes do not match the architecture, non-finite weights or a scaler with
        scales that are not positive.

        Parameters
        ----------
        path
            The path given to :meth:`save` (with or without suffix).
        device
            Torch device for predictions; ``None`` uses :attr:`histodecon.settings.device`.

        Examples
        --------
        >>> model = hd.tl.AbundanceRegressor.load("her2st_model")  # doctest: +SKIP
        """
        tensor_path, json_path = _paths(path)
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
        network = _Network(arch["n_features"], arch["hidden"], arch["n_outputs"])
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
        hp = sidecar["hyperparameters"]
        model = cls(**hp, device=device)
        model.network = network
        model.feature_keys = [f["key"] for f in sidecar["features"]]
        model.feature_dims = [int(f["dim"]) for f in sidecar["features"]]
        model.cell_types = list(sidecar["cell_types"])
        model.history = pd.DataFrame(sidecar["history"], columns=["epoch", "train_loss", "val_loss"])
        model.best_epoch = sidecar["best_epoch"]
        model.validation_scores = sidecar["validation_scores"]
        model.provenance = sidecar["provenance"]
        return model


def _paths(path: str | Path) -> tuple[Path, Path]:
    """The tensor and JSON files of a saved model."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return Path(f"{stem}.safetensors"), Path(f"{stem}.json")


_HYPERPARAMETERS = {
    "hidden",
    "l1",
    "l2",
    "lr",
    "weight_decay",
    "batch_size",
    "max_epochs",
    "patience",
    "validation_fraction",
    "seed",
}


def check_hyperparameters(hyperparameters: dict) -> None:
    """Refuse options :class:`AbundanceRegressor` does not know, listing those it does."""
    unknown = set(hyperparameters) - (_HYPERPARAMETERS - {"seed"})
    if unknown:
        raise TypeError(
            f"Unknown hyperparameters {sorted(unknown)}; valid: {sorted(_HYPERPARAMETERS - {'seed'})} "
            "(the seed is the `seed=` argument)."
        )


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


def _read_sidecar(json_path: Path) -> dict:
    """The JSON record of a saved model, checked for format, version and consistency."""
    try:
        sidecar = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{json_path} is not valid JSON ({error}); it is not a saved histodecon model.") from error
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a saved AbundanceRegressor (no `format: {FORMAT}`).")
    if sidecar.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{json_path} has format version {sidecar.get('version')!r}; this histodecon reads version "
            f"{FORMAT_VERSION}. Load it with the histodecon release that saved it."
        )
    for key, kind in _SCHEMA.items():
        if not isinstance(sidecar.get(key), kind):
            raise ValueError(f"{json_path}: field `{key}` is missing or not a {kind.__name__}.")
    if _record_checksum(sidecar) != sidecar["record_sha256"]:
        raise ValueError(
            f"{json_path} was edited after saving (its checksum `record_sha256` does not match its content). "
            "Use an intact copy, or load the original and save it again."
        )
    arch, features, cell_types = sidecar["architecture"], sidecar["features"], sidecar["cell_types"]
    if not all(isinstance(arch.get(k), int) for k in ("n_features", "n_outputs")) or not isinstance(
        arch.get("hidden"), list
    ):
        raise ValueError(f"{json_path}: `architecture` needs integer `n_features`, `n_outputs` and a `hidden` list.")
    if set(sidecar["hyperparameters"]) != _HYPERPARAMETERS:
        raise ValueError(
            f"{json_path}: `hyperparameters` must have exactly the keys {sorted(_HYPERPARAMETERS)}, "
            f"got {sorted(sidecar['hyperparameters'])}."
        )
    if (arch.get("activation"), arch.get("output")) != ("SiLU", "softplus"):
        raise ValueError(
            f"{json_path}: `architecture` must have activation 'SiLU' and output 'softplus', "
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


def _record_checksum(sidecar: dict) -> str:
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
