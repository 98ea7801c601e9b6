"""AbundanceRegressor: the estimator that trains the network (early stopping) and predicts with it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histodecon._settings import logger, settings
from histodecon._utils import check_positive_int

from ._calibration import calibration_record
from ._collapse import compositions, validation_scores, warn_if_collapsed
from ._file import read_model_file, write_model_file
from ._hub import locate_model, push_model
from ._hyperparameters import Hyperparameters, resolved_target_scale
from ._inputs import LEGACY as LEGACY_INPUTS
from ._inputs import InputOptions
from ._network import AbundanceNetwork
from ._training import (
    checked_training_data,
    early_stopped_fold,
    finite_matrix,
    new_network,
    train,
    validation_folds,
)

_PREDICT_CHUNK = 8192
_HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss"]  # per fold: a `fold` column comes first


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
    (features constant in training get scale 1); with ``target_scale="proportion"`` (the
    default) every target row is divided by its sum (rows summing to 0 become uniform) and the
    output is a softmax, so predictions are compositions; targets are divided by their
    per-type training standard deviation so that every cell type weighs alike. The loss over a batch
    is ``MSE + mae_weight * MAE + pearson_weight * (1 - Pearson)``; on unit-variance targets
    the three terms start at similar size, hence the equal default weights. AdamW on
    shuffled minibatches. Early stopping runs in up to three folds with disjoint validation
    sets (:func:`._training.validation_folds`): with three or more groups (slides) every fold
    holds out whole groups, each of three slides once; otherwise random spots. In every fold,
    after each epoch the loss on its held-out spots is computed, and training stops when it has
    not improved for ``patience`` epochs, keeping that fold's best epoch.

    The folds only choose the number of epochs, the median of their best epochs: the returned
    network is then trained afresh on **every** training spot for that many epochs, so that a
    model trained on three slides has seen all three. Before, one validation split was drawn
    by the seed; fitted on her2st B4, C2 and C3, seeds 1 and 4 drew the shallow B4 and stopped
    after 14 and 16 epochs with collapsed predictions (spread 0.01-0.02 of the truth's), the
    others drew C3 and trained 109-118 epochs. Now the B4 fold's 15 epochs are outvoted: 44-77
    epochs for every seed (``benchmarks/trust.py``). On leave-one-section-out (two training
    slides, hence folds of random spots), seeds 0-4, the spread across seeds of the mean L1
    fell from 0.041 to 0.004 (mean L1 0.590 to 0.573, CC 0.288 to 0.284), for 2.05 times the
    epochs. The refit beat an ensemble of per-slide early-stopped models
    (``benchmarks/her2st_loso.py``: mean CC 0.155 vs 0.114, L1 0.691 vs 0.741): every model
    of the ensemble sees only part of the data. The folds' networks also predict the spots
    they did not train on: those out-of-fold predictions give :attr:`validation_scores` and
    the :attr:`calibration` of :func:`~histodecon.tl.predict`'s intervals. When they have
    collapsed (their per-type spread below :data:`COLLAPSE_SPREAD` of the
    truth's, on average) or correlate worse than ridge regression fitted on the same training
    spots (by more than :data:`RIDGE_CC_MARGIN`), a warning says so. Everything is seeded by ``seed``: the same seed, data and device
    give the same model on CPU.

    Parameters
    ----------
    hyperparameters
        A :class:`Hyperparameters`; ``None`` takes the defaults.
    device
        Torch device; ``None`` uses :attr:`histodecon.settings.device`.
    **options
        Fields of :class:`Hyperparameters` to set (``hidden``, ``mae_weight``, ``lr``,
        ``seed``, ...), replacing those of ``hyperparameters``. ``l1`` and ``l2``, the former
        names of ``mae_weight`` and ``pearson_weight``, still work with a
        :class:`FutureWarning`.

    Attributes
    ----------
    hyperparameters
        The :class:`Hyperparameters` in use.
    feature_keys
        Names of the feature blocks, in input order (e.g. ``["conch", "uni"]``).
    feature_dims
        Width of each feature block.
    cell_types
        Names of the predicted cell types, in output order.
    inputs
        How :func:`~histodecon.tl.fit` built the inputs from slides (:class:`InputOptions`),
        repeated by :func:`~histodecon.tl.predict`; a regressor fitted on arrays records none.
    history
        Per early-stopping fold and epoch: ``fold``, ``epoch``, ``train_loss``, ``val_loss``.
    best_epoch
        Epochs of the final network: the median of the folds' best epochs.
    validation_scores
        ``loss``, ``cc``, ``l1`` (see :mod:`histodecon.metrics`), ``spread`` (mean per-type
        ratio of predicted to true standard deviation) and ``ridge_cc`` (ridge regression
        fitted on the same training spots) on the folds' held-out spots, from the early-stopped networks.
    calibration
        What :func:`~histodecon.tl.predict` needs for intervals (``interval=``): order
        statistics of the out-of-fold absolute residuals per cell type
        (:mod:`._calibration`); ``None`` for a model saved before file format 4.
    provenance
        Epochs, seed, loss weights, the folds (``early_stopping``: strategy, each fold's best
        epoch, held-out groups and spots), training groups / samples, package versions.

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
        self, *, hyperparameters: Hyperparameters | None = None, device: str | None = None, **options: Any
    ) -> None:
        self.hyperparameters = Hyperparameters.from_options(options, base=hyperparameters)
        self.device = device
        self.network: AbundanceNetwork | None = None
        self.feature_keys: list[str] = []
        self.feature_dims: list[int] = []
        self.cell_types: list[str] = []
        self.inputs = InputOptions(**LEGACY_INPUTS)
        self.history = pd.DataFrame(columns=["fold", *_HISTORY_COLUMNS])
        self.best_epoch: int | None = None
        self.validation_scores: dict[str, float] = {}
        self.calibration: dict | None = None
        self.provenance: dict = {}

    def __repr__(self) -> str:
        state = (
            f"{sum(self.feature_dims)} features -> {len(self.cell_types)} cell types"
            if self.network is not None
            else "unfitted"
        )
        return f"AbundanceRegressor({state}, hidden={self.hyperparameters.hidden})"

    # ----------------------------------------------------------------------------- training
    def fit(
        self,
        X: np.ndarray,
        Y: np.ndarray | pd.DataFrame,
        *,
        groups: Sequence | np.ndarray | None = None,
        feature_dims: Mapping[str, int] | None = None,
        inputs: InputOptions | None = None,
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
        inputs
            How ``X`` was built from slides (:func:`~histodecon.tl.fit` passes it), recorded so
            that :func:`~histodecon.tl.predict` repeats it; ``None``: ``X`` is used as given.

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
        x, y, groups, feature_dims, cell_types, inputs = checked_training_data(X, Y, groups, feature_dims, inputs)
        hp = replace(self.hyperparameters, target_scale=resolved_target_scale(self.hyperparameters.target_scale, y))
        if hp.target_scale == "proportion":
            y = compositions(y)
        rng = np.random.default_rng(hp.seed)
        folds, held_out = validation_folds(len(x), groups, hp.validation_fraction, rng)
        device = settings.torch_device(self.device)
        runs = [early_stopped_fold(hp, x, y, groups, val_idx, device) for val_idx in folds]
        val_idx = np.concatenate(folds)
        oof_pred = np.vstack([run["val_pred"] for run in runs])
        ridge_pred = np.vstack([run["ridge_pred"] for run in runs])
        val_loss = float(np.average([run["best_loss"] for run in runs], weights=[len(f) for f in folds]))
        self.validation_scores = validation_scores(y[val_idx], oof_pred, ridge_pred, val_loss)
        warn_if_collapsed(self.validation_scores)
        best_epoch = max(1, round(float(np.median([run["best_epoch"] for run in runs]))))

        # The final network: trained afresh on every spot for the folds' median best epoch.
        network, x_all, y_all = new_network(hp, x, y, np.arange(len(x)), device)
        train(hp, network, x_all, y_all, None, None, epochs=best_epoch)
        del x_all, y_all
        network.eval()
        self.network = network
        self.hyperparameters = hp  # with the target scale "auto" resolved
        self.feature_keys, self.feature_dims = list(feature_dims), [int(d) for d in feature_dims.values()]
        self.cell_types = cell_types
        self.inputs = inputs
        self.history = pd.concat(
            [pd.DataFrame(run["history"], columns=_HISTORY_COLUMNS).assign(fold=i) for i, run in enumerate(runs)],
            ignore_index=True,
        )[["fold", *_HISTORY_COLUMNS]]
        self.best_epoch = best_epoch
        self.calibration = calibration_record(y[val_idx], oof_pred, held_out)
        self.provenance = {
            "epochs": len(self.history),
            "best_epoch": best_epoch,
            "final_model": f"refit on all {len(x)} training spots for {best_epoch} epochs",
            "early_stopping": {
                "strategy": f"{len(folds)} early-stopping folds holding out disjoint {held_out} in turn; the final "
                "network is refit on every spot for the median of the folds' best epochs",
                "fold_epochs": [run["best_epoch"] for run in runs],
                "fold_epochs_trained": [len(run["history"]) for run in runs],
                "fold_validation_groups": [sorted(map(str, set(groups[f]))) for f in folds]
                if held_out == "groups"
                else None,
                "fold_validation_spots": [len(f) for f in folds],
            },
            "seed": hp.seed,
            "loss_weights": {"mse": 1.0, "mae": hp.mae_weight, "pearson": hp.pearson_weight},
            "validation_split": held_out,
            "n_training_spots": len(x),
            "n_validation_spots": len(val_idx),
            "groups": sorted(map(str, set(groups))) if groups is not None else None,
            "validation_groups": sorted(map(str, set(groups[val_idx]))) if held_out == "groups" else None,
            "versions": {name: version(name) for name in ("histodecon", "torch", "numpy")},
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        logger.info(
            f"Trained {len(folds)} early-stopping folds ({len(self.history)} epochs, best {best_epoch} in the median) "
            f"and the final network; out-of-fold CC "
            f"{self.validation_scores['cc']:.3f}, L1 {self.validation_scores['l1']:.3f}"
        )
        return self

    # ---------------------------------------------------------------------------- inference
    def check_fitted(self) -> AbundanceNetwork:
        """The trained network; an error that says to fit or load first when there is none."""
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
            Spots moved to the device at a time; bounds memory on large slides and does not
            change a bit of the predictions.

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
        network = self.check_fitted()
        x = finite_matrix(X, "X")
        if x.shape[1] != self.inputs.width(sum(self.feature_dims)):
            raise ValueError(
                f"`X` has {x.shape[1]} features but the model was trained on {self.inputs.width(sum(self.feature_dims))} "
                f"({dict(zip(self.feature_keys, self.feature_dims, strict=True))}, {self.inputs})."
            )
        batch_size = check_positive_int(batch_size, "batch_size")  # issue 15: validated, never changes a value
        return network.predict(x, device=settings.torch_device(self.device), batch_size=batch_size)

    # ---------------------------------------------------------------------------- save/load
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the model as ``<path>.safetensors`` (tensors), ``<path>.json`` (everything else) and a model card.

        The JSON records the architecture, feature keys and dims in order, cell types,
        hyperparameters, training provenance, history, validation scores, the SHA-256 of the
        tensor file and a SHA-256 of the record itself, both checked by :meth:`load`. ``path``
        may end in ``.safetensors`` or ``.json``. A folder (an existing one, or a path ending in
        ``/``, created) gets ``model.safetensors``,
        ``model.json`` and the card ``README.md``: the layout of a Hugging Face Hub repository
        (see :meth:`push_to_hub`); otherwise the card is ``<path>.md``. The card (Markdown)
        lists the training samples, encoders and their widths, cell types, hyperparameters and
        validation scores. No pickle is involved.

        Parameters
        ----------
        path
            Where to write: a folder, or a file name without or with one of the two suffixes.
        overwrite
            Replace existing files; otherwise they raise :class:`FileExistsError`.

        Examples
        --------
        >>> model.save("her2st_model")  # doctest: +SKIP
        >>> model = hd.tl.AbundanceRegressor.load("her2st_model")  # doctest: +SKIP
        """
        record = {
            "features": [{"key": k, "dim": d} for k, d in zip(self.feature_keys, self.feature_dims, strict=True)],
            "cell_types": self.cell_types,
            "hyperparameters": self.hyperparameters.to_record(),
            "inputs": self.inputs.to_record(),
            "provenance": self.provenance,
            "history": self.history.to_dict(orient="list"),
            "best_epoch": self.best_epoch,
            "validation_scores": self.validation_scores,
            "calibration": self.calibration,
        }
        network = self.check_fitted()
        if str(path).endswith(("/", os.sep)):
            Path(path).mkdir(parents=True, exist_ok=True)
        write_model_file(path, network, record, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> AbundanceRegressor:
        """Read a model written by :meth:`save`, from a local path or a Hugging Face Hub repository.

        A string that is not a local path and reads ``"<owner>/<name>"`` is a Hub repository
        (see :meth:`push_to_hub`): its ``model.json``, ``model.safetensors`` and ``README.md``
        alone are downloaded into the Hugging Face cache, and read from there without network
        access next time (``HF_HUB_OFFLINE=1`` never asks the Hub).

        Refused with :class:`ValueError`, naming the file and the field, before any tensor is
        allocated: a JSON of another format or a newer version, fields missing, extra, of
        another type (a number written as a string, a boolean for an integer) or beyond the
        bounds (layer widths, layer count, parameters), a JSON edited after saving (its
        checksum differs), inconsistent fields, a tensor file whose header does not describe
        the recorded architecture. Then a tensor file whose SHA-256 differs from the recorded
        one (modified or truncated), non-finite weights or a scaler with scales that are not
        positive. Files of earlier versions, whose loss weights are named ``l1`` / ``l2``,
        are read.

        Parameters
        ----------
        path
            The path given to :meth:`save` (a folder, or a name with or without suffix), or a
            Hub repository id.
        device
            Torch device for predictions; ``None`` uses :attr:`histodecon.settings.device`.

        Examples
        --------
        >>> model = hd.tl.AbundanceRegressor.load("her2st_model")  # doctest: +SKIP
        >>> model = hd.tl.AbundanceRegressor.load("my-lab/her2st-conch-uni")  # doctest: +SKIP
        """
        sidecar, network = read_model_file(locate_model(path))
        model = cls(hyperparameters=Hyperparameters.from_record(sidecar["hyperparameters"]), device=device)
        model.network = network
        model.feature_keys = [f["key"] for f in sidecar["features"]]
        model.feature_dims = [int(f["dim"]) for f in sidecar["features"]]
        model.cell_types = list(sidecar["cell_types"])
        model.history = pd.DataFrame(sidecar["history"])
        model.best_epoch = sidecar["best_epoch"]
        model.validation_scores = sidecar["validation_scores"]
        model.provenance = sidecar["provenance"]
        model.calibration = sidecar.get("calibration")  # version 4 on
        model.inputs = InputOptions(**sidecar.get("inputs", LEGACY_INPUTS))
        return model

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = True,
        token: str | None = None,
        commit_message: str = "Upload histodecon AbundanceRegressor",
    ) -> str:
        """Upload the model, with its model card, to a Hugging Face Hub repository.

        The files :meth:`save` writes into a folder (``model.safetensors``, ``model.json``,
        ``README.md``) are uploaded; :meth:`load` reads them back by ``repo_id``.

        Parameters
        ----------
        repo_id
            ``"<owner>/<name>"``; the repository is created when it does not exist.
        private
            Visibility of a repository created here.
        token
            A Hub token with write access; ``None`` uses the login of ``hf auth login`` (or ``HF_TOKEN``).
        commit_message
            Message of the upload's commit.

        Returns
        -------
        The repository's URL.

        Examples
        --------
        >>> model.push_to_hub("my-lab/her2st-conch-uni")  # doctest: +SKIP
        'https://huggingface.co/my-lab/her2st-conch-uni'
        """
        return push_model(self, repo_id, private=private, token=token, commit_message=commit_message)
