"""The training loop of :class:`~histodecon.tl.AbundanceRegressor`: validation split, network set-up, epochs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from histodecon._settings import settings
from histodecon._utils import check_finite_matrix

from ._hyperparameters import Hyperparameters
from ._inputs import LEGACY as LEGACY_INPUTS
from ._inputs import InputOptions
from ._network import OUTPUTS, AbundanceNetwork, training_loss


def validation_split(
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
    epochs = tqdm(range(1, (epochs or hp.max_epochs) + 1), desc="training", leave=False, disable=not settings.progress)
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
