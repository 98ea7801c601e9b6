"""The training loop of :class:`~histodecon.tl.AbundanceRegressor`: early-stopping folds, network set-up, epochs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from histodecon._settings import progress_bar
from histodecon._utils import check_finite_matrix

from ._baselines import RidgeBaseline
from ._hyperparameters import Hyperparameters
from ._inputs import LEGACY as LEGACY_INPUTS
from ._inputs import InputOptions
from ._network import OUTPUTS, AbundanceNetwork, training_loss

#: Most early-stopping folds: each trains a network, so this bounds what the evidence of every slide costs.
MAX_FOLDS = 3
#: With this many groups or more, folds hold out whole groups (slides); below, random spots. With two
#: slides, a fold trained on one slide stopped early and lost L1 (her2st leave-one-section-out, seeds
#: 0-4: mean L1 0.636 against 0.573 with folds of random spots), so two slides share spot folds.
MIN_GROUPS = 3


def validation_folds(
    n: int, groups: np.ndarray | None, fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], str]:
    """Disjoint validation sets of the early-stopping folds, and what they hold out.

    With :data:`MIN_GROUPS` or more groups (slides), every fold holds out a ``fraction`` of
    the groups (at least one, never all), so that validation spots are not neighbours of
    training spots; otherwise a ``fraction`` of random spots. Up to :data:`MAX_FOLDS` folds,
    disjoint, so that with three slides each slide is held out once: the early stopping hears
    every slide, not one drawn by the seed.
    """
    if groups is not None:
        names = np.unique(groups)
        if len(names) >= MIN_GROUPS:
            per_fold = min(max(1, round(fraction * len(names))), len(names) - 1)
            order = rng.permutation(names)
            held = [order[i * per_fold : (i + 1) * per_fold] for i in range(min(MAX_FOLDS, len(names) // per_fold))]
            return [np.flatnonzero(np.isin(groups, names_out)) for names_out in held], "groups"
    order = rng.permutation(n)
    per_fold = min(max(1, round(fraction * n)), n - 1)
    n_folds = min(MAX_FOLDS, n // per_fold)
    return [np.sort(order[i * per_fold : (i + 1) * per_fold]) for i in range(n_folds)], "spots"


def new_network(
    hp: Hyperparameters, x: np.ndarray, y: np.ndarray, scaler_idx: np.ndarray, device: torch.device
) -> tuple[AbundanceNetwork, torch.Tensor, torch.Tensor]:
    """A freshly seeded network scaled by the spots ``scaler_idx``, and all spots scaled, on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hp.seed)
        network = AbundanceNetwork(x.shape[1], hp.hidden, y.shape[1], output=OUTPUTS[hp.target_scale])
    network.set_scaler(x[scaler_idx], y[scaler_idx])
    network = network.to(device)
    x_all = (torch.from_numpy(x).to(device) - network.x_mean) / network.x_scale
    return network, x_all, torch.from_numpy(y).to(device) / network.y_scale


def train(
    hp: Hyperparameters,
    network: AbundanceNetwork,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    *,
    epochs: int | None = None,
) -> tuple[list[tuple[int, float, float]], dict, float, int]:
    """The training loop: tensors stay on the device, minibatches are slices of a permutation.

    With validation tensors, early stopping (up to ``max_epochs``); without, ``epochs`` epochs.
    """
    optimizer = torch.optim.AdamW(network.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    generator = torch.Generator().manual_seed(hp.seed)
    n, batch_size = len(x_train), hp.batch_size
    history: list[tuple[int, float, float]] = []
    best_state, best_loss, best_epoch = None, math.inf, 0
    stage = "training (early stopping)" if x_val is not None else "training (final model)"
    epochs = progress_bar(range(1, (epochs or hp.max_epochs) + 1), desc=stage, leave=False)
    for epoch in epochs:
        network.train()
        order = torch.randperm(n, generator=generator).to(x_train.device)
        total = 0.0
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            loss = weighted_loss(hp, network.forward_scaled(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if x_val is not None:  # the loss is only reported with validation (a device sync per batch)
                total += loss.item() * len(index)
        network.eval()
        if x_val is None:
            continue
        with torch.no_grad():
            val_loss = weighted_loss(hp, network.forward_scaled(x_val), y_val).item()
        history.append((epoch, total / n, val_loss))
        epochs.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {name: value.detach().clone() for name, value in network.state_dict().items()}
        elif epoch - best_epoch >= hp.patience:
            break
    return history, best_state, best_loss, best_epoch


def early_stopped_fold(
    hp: Hyperparameters,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    val_idx: np.ndarray,
    device: torch.device,
) -> dict[str, Any]:
    """One early-stopping fold: a network trained on every spot but ``val_idx``, kept at its best epoch.

    Returns its history, best validation loss and epoch, and the out-of-fold predictions of
    that network and of ridge regression fitted on the same training spots (the collapse check's yardstick).
    """
    train_idx = np.setdiff1d(np.arange(len(x)), val_idx)
    network, x_all, y_all = new_network(hp, x, y, train_idx, device)
    history, best_state, best_loss, best_epoch = train(
        hp, network, x_all[train_idx], y_all[train_idx], x_all[val_idx], y_all[val_idx]
    )
    del x_all, y_all
    if best_state is None:
        raise RuntimeError("Training diverged: the validation loss was never finite. Lower `lr` and fit again.")
    network.load_state_dict(best_state)
    network.eval()
    ridge = RidgeBaseline.fit(
        x[train_idx], y[train_idx], groups=groups[train_idx] if groups is not None else None, seed=hp.seed
    )
    return {
        "history": history,
        "best_loss": best_loss,
        "best_epoch": best_epoch,
        "val_pred": network.predict(x[val_idx], device=device, batch_size=len(val_idx)),
        "ridge_pred": ridge.predict(x[val_idx]),
    }


def weighted_loss(hp: Hyperparameters, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return training_loss(pred, target, mae_weight=hp.mae_weight, pearson_weight=hp.pearson_weight)


def checked_training_data(
    X: Any, Y: Any, groups: Any, feature_dims: Mapping[str, int] | None, inputs: InputOptions | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, int], list[str], InputOptions]:
    """The arguments of :meth:`AbundanceRegressor.fit` checked: finite matrices, matching shapes, named columns."""
    x = finite_matrix(X, "X")
    y = finite_matrix(Y, "Y")
    if len(x) != len(y):
        raise ValueError(f"`X` has {len(x)} spots but `Y` has {len(y)}; pass one target row per feature row.")
    if (y < 0).any():
        raise ValueError("`Y` has negative values; the targets must be abundances or proportions (>= 0).")
    if len(x) < 4:
        raise ValueError(f"Training needs at least 4 spots, got {len(x)}.")
    inputs = inputs if inputs is not None else InputOptions(**LEGACY_INPUTS)
    n_embedding = x.shape[1] // 2 if inputs.context_radius is not None else x.shape[1]
    feature_dims = dict(feature_dims) if feature_dims is not None else {"features": n_embedding}
    if inputs.width(sum(feature_dims.values())) != x.shape[1]:
        raise ValueError(
            f"`feature_dims` {feature_dims} add up to {sum(feature_dims.values())} columns, "
            f"{inputs.width(sum(feature_dims.values()))} inputs with {inputs}, but `X` has {x.shape[1]}."
        )
    if groups is not None:
        groups = np.asarray(groups).astype(str)
        if groups.shape != (len(x),):
            raise ValueError(f"`groups` must give one group per spot ({len(x)}), got shape {groups.shape}.")
    cell_types = [str(c) for c in Y.columns] if isinstance(Y, pd.DataFrame) else [str(i) for i in range(y.shape[1])]
    if len(set(cell_types)) != len(cell_types):
        raise ValueError(f"`Y` has duplicate cell-type columns: {cell_types}.")
    return x, y, groups, feature_dims, cell_types, inputs


def finite_matrix(values: Any, name: str) -> np.ndarray:
    """``values`` as a finite float32 spots x columns matrix, or an error naming the argument."""
    return check_finite_matrix(values, f"`{name}`", rows=f"of {len(values)} rows", fix="Drop those spots first.")
