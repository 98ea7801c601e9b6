"""The regressor's network (an MLP with its scaler) and its training loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: Added under the square root of the Pearson denominator so that a constant prediction has a gradient.
_PEARSON_EPS = 1e-8
ACTIVATION = "SiLU"
#: Output function of the network for each target scale (:attr:`Hyperparameters.target_scale`).
OUTPUTS = {"abundance": "softplus", "proportion": "softmax"}
#: Rows per forward pass of :meth:`AbundanceNetwork.predict`: a fixed shape makes predictions independent of
#: the batch size (matrix products of other shapes round differently in the last bits). Measured on 2 CPU
#: cores (1 thread, 20,000 spots x 1,536 features): 0.57 s, against 0.87 s for passes of 8,192 spots.
PREDICT_BLOCK = 1024


class AbundanceNetwork(nn.Module):
    """Standardise inputs, run the MLP, return non-negative abundances or compositions.

    ``x_mean`` / ``x_scale`` standardise the features, ``y_scale`` maps the network's output
    (targets divided by their training standard deviation) back to the targets' units. They
    are buffers, so they travel with the weights in one state dict. ``output`` is
    ``"softplus"`` (non-negative abundances) or ``"softmax"`` (a composition: every row sums
    to 1).
    """

    def __init__(self, n_features: int, hidden: Sequence[int], n_outputs: int, output: str = "softplus") -> None:
        super().__init__()
        if output not in OUTPUTS.values():
            raise ValueError(f"`output` must be one of {sorted(OUTPUTS.values())}, got {output!r}.")
        self.n_features, self.hidden, self.n_outputs = int(n_features), [int(w) for w in hidden], int(n_outputs)
        self.output = output
        widths = [n_features, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.SiLU()]
        layers.append(nn.Linear(widths[-1], n_outputs))
        self.layers = nn.Sequential(*layers)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_scale", torch.ones(n_features))
        self.register_buffer("y_scale", torch.ones(n_outputs))

    def architecture(self) -> dict:
        """Widths, activation and output function: what rebuilds this network from a model file."""
        return {
            "n_features": self.n_features,
            "hidden": self.hidden,
            "n_outputs": self.n_outputs,
            "activation": ACTIVATION,
            "output": self.output,
        }

    def set_scaler(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        """Standardise with the training features' mean and sd, scale by the targets' sd (a constant gets 1)."""
        x_std, y_std = x_train.std(axis=0), y_train.std(axis=0)
        self.x_mean.copy_(torch.from_numpy(x_train.mean(axis=0)))
        self.x_scale.copy_(torch.from_numpy(np.where(x_std > 0, x_std, 1.0).astype(np.float32)))
        self.y_scale.copy_(torch.from_numpy(np.where(y_std > 0, y_std, 1.0).astype(np.float32)))

    def forward_scaled(self, x_standardised: torch.Tensor) -> torch.Tensor:
        """Scaled targets from standardised features (what training sees)."""
        logits = self.layers(x_standardised)
        if self.output == "softmax":
            return torch.softmax(logits, dim=1) / self.y_scale
        return nn.functional.softplus(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Abundances (or compositions) from raw features."""
        return self.forward_scaled((x - self.x_mean) / self.x_scale) * self.y_scale

    def predict(self, x: np.ndarray, *, device: torch.device, batch_size: int) -> np.ndarray:
        """Abundances (float32) of raw features ``x``, the same to the last bit whatever ``batch_size``.

        ``batch_size`` spots (rounded up to whole blocks) are moved to ``device`` at a time; the
        network runs on fixed blocks of :data:`PREDICT_BLOCK` rows, the last one padded, so that
        every spot is computed by matrix products of the same shape at the same row.
        """
        network = self.to(device)
        out = np.empty((len(x), self.n_outputs), dtype=np.float32)
        step = -(-batch_size // PREDICT_BLOCK) * PREDICT_BLOCK
        with torch.no_grad():
            for start in range(0, len(x), step):
                chunk = torch.from_numpy(x[start : start + step]).to(device)
                for offset in range(0, len(chunk), PREDICT_BLOCK):
                    block = chunk[offset : offset + PREDICT_BLOCK]
                    rows = len(block)
                    if rows < PREDICT_BLOCK:
                        block = torch.cat([block, block.new_zeros(PREDICT_BLOCK - rows, block.shape[1])])
                    out[start + offset : start + offset + rows] = network(block)[:rows].cpu().numpy()
        return out


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


def training_loss(
    pred: torch.Tensor, target: torch.Tensor, *, mae_weight: float, pearson_weight: float
) -> torch.Tensor:
    """``MSE + mae_weight * MAE + pearson_weight * (1 - Pearson)`` over a batch (:func:`loss_terms`)."""
    mse, mae, pearson_loss = loss_terms(pred, target)
    return mse + mae_weight * mae + pearson_weight * pearson_loss
