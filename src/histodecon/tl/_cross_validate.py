"""Leave-one-group-out and cross-dataset evaluation of the regressor, per feature configuration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from histodecon._constants import Key
from histodecon._cost import measure_cost, training_cost
from histodecon._settings import logger, progress_option, settings
from histodecon._utils import Slide, as_slide_list, encoder_names
from histodecon.metrics._scores import cc_score, l1_score

from ._estimator._baselines import BASELINES, check_baselines, fit_baseline
from ._estimator._hyperparameters import Hyperparameters
from ._estimator._regressor import AbundanceRegressor
from ._estimator._spots import DEFAULT_GROUPBY, embedding_names, spot_table

#: Fold name of the single train/test split of the cross-dataset mode.
CROSS_DATASET_FOLD = "test"
#: ``model`` of the regressor's rows in :class:`CVResult` (the baselines' are their names).
REGRESSOR = "mlp"


@dataclass
class CVResult:
    """Scores of :func:`cross_validate`.

    Attributes
    ----------
    scores
        Tidy table, one row per configuration, model, fold, test sample and cell type.
        Columns: ``configuration`` (encoder names joined by ``"+"``, e.g. ``"conch+uni"``),
        ``model`` (``"mlp"`` for the regressor, else the baseline: ``"mean"``,
        ``"ridge"``), ``fold``
        (the held-out group, or ``"test"`` in cross-dataset mode), ``sample`` (the test
        slide, from ``obs["sample"]``), ``cell_type``, ``cc`` (Pearson correlation of that
        cell type across the in-tissue spots of the sample; NaN where truth or prediction is
        constant, so always for the mean predictor) and ``l1`` (the sample's L1 score, the per-spot L1 distance of proportions
        averaged over its spots; repeated on every cell-type row of the sample).
    summary
        One row per configuration, model, fold and test sample. Columns ``configuration``,
        ``model``, ``fold``, ``sample``, ``cc`` (the CC score: mean of ``scores.cc`` over the cell types
        where it is defined), ``l1`` (the L1 score), ``n_spots`` (in-tissue spots scored), and what
        training the fold's model cost (repeated on every sample row of the fold): ``fit_seconds``,
        ``epochs`` (every epoch trained, the refit included; NaN for the closed-form baselines),
        ``peak_host_mb`` (peak resident memory of the process while it trained) and, on CUDA,
        ``peak_gpu_mb`` (:func:`torch.cuda.max_memory_allocated`).
    predictions
        Out-of-fold predictions per ``(configuration, model)`` (only with
        ``keep_predictions=True``): DataFrames indexed by (``sample``, ``spot``), with the
        cell types as columns.
    """

    scores: pd.DataFrame
    summary: pd.DataFrame
    predictions: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)


def configurations(features: str | Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Feature configurations, each a list of encoder names.

    A name or a flat list of names is one configuration (concatenated); a list holding lists
    is one configuration per element.
    """
    if isinstance(features, str) or all(isinstance(f, str) for f in features):
        return [encoder_names(features, "features")]
    return [encoder_names(f, "features") for f in features]


def _score(
    configuration: str, model: str, fold: str, truth: pd.DataFrame, pred: np.ndarray, samples: np.ndarray
) -> tuple[list[pd.DataFrame], list[dict]]:
    """Per-type and per-sample scores of the test spots of one fold."""
    rows, summary = [], []
    truth_values = truth.to_numpy()
    for sample in pd.unique(samples):
        mask = samples == sample
        per_type = cc_score(truth_values[mask], pred[mask], per_type=True)
        l1 = l1_score(truth_values[mask], pred[mask])
        rows.append(
            pd.DataFrame(
                {
                    "configuration": configuration,
                    "model": model,
                    "fold": fold,
                    Key.obs.sample: sample,
                    "cell_type": truth.columns,
                    "cc": per_type.to_numpy(),
                    "l1": l1,
                }
            )
        )
        summary.append(
            {
                "configuration": configuration,
                "model": model,
                "fold": fold,
                Key.obs.sample: sample,
                "cc": float(per_type.mean()),
                "l1": l1,
                "n_spots": int(mask.sum()),
            }
        )
    return rows, summary


@progress_option
def cross_validate(
    slides: Slide | Sequence[Slide] | None = None,
    *,
    groupby: str | None = DEFAULT_GROUPBY,
    features: str | Sequence[str | Sequence[str]] | None = None,
    target: str = Key.obsm.abund,
    train: Slide | Sequence[Slide] | None = None,
    test: Slide | Sequence[Slide] | None = None,
    baselines: str | Sequence[str] = BASELINES,
    table_key: str = Key.tables.table,
    keep_predictions: bool = False,
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **hyperparameters: Any,
) -> CVResult:
    """Evaluate the regressor on held-out slides, by leave-one-group-out or across datasets.

    **Leave-one-group-out** (``slides``): for every value of ``obs[groupby]`` (a sample by
    default, as in :func:`fit`; a group may span several slides: pass ``groupby="patient"``
    to hold out both sections of her2st patient C together), a model is trained on the in-tissue spots of all other groups and scored on that group,
    slide by slide. Early stopping validates on held-out groups of the training data (or
    random training spots when it has fewer than three groups), never on the test group.
    **Cross-dataset** (``train=`` and ``test=``): one model trained on ``train``, scored on
    every slide of ``test``.

    Scores are the CC and L1 scores of :mod:`histodecon.metrics` per test slide; each
    feature configuration gets its own block of results. The ``baselines`` are trained and
    scored on exactly the same folds, spots and features, so every table shows whether the
    regressor earns its place: ``"mean"`` predicts the training spots' mean abundances (its
    CC is undefined, NaN; its L1 is the bar to beat), ``"ridge"`` is ridge regression on the
    standardised features, solved in closed form, its penalty chosen from
    ``10**-2 .. 10**5`` (15 values) by leave-one-group-out on the training groups of the
    fold (five random folds of its spots with fewer than two groups). Both cost
    little next to the regressor.

    Parameters
    ----------
    slides
        Slides for leave-one-group-out (leave ``None`` in cross-dataset mode).
    groupby
        ``obs`` column whose values are the folds (leave-one-group-out); it also groups the
        training spots for the early-stopping split. The default is that of :func:`fit`. In cross-dataset mode, ``None`` holds
        out random training spots for early stopping instead.
    features
        Feature configurations. A name (``"uni"``) or a flat list of names
        (``["conch", "uni"]``, concatenated) is one configuration; a list holding lists is
        several, e.g. ``["conch", "uni", ["conch", "uni"]]`` for the paper's ablation.
        ``None``: one configuration, every encoder whose embeddings all (training) slides
        have, sorted by name, as in :func:`fit`.
    target
        ``obsm`` key of the true abundances.
    train
        Training slides of the cross-dataset mode.
    test
        Test slides of the cross-dataset mode.
    baselines
        Baselines scored beside the regressor: ``"mean"``, ``"ridge"``, both (default) or
        ``()`` for none.
    table_key
        Name of the table in a SpatialData; ignored for an AnnData.
    keep_predictions
        Return the out-of-fold predictions in :attr:`CVResult.predictions`.
    device
        Torch device; ``None`` uses :attr:`histodecon.settings.device`.
    seed
        Seed of every model trained.
    **hyperparameters
        Fields of :class:`Hyperparameters`, as in :func:`fit`.
    progress
        Show progress bars for this call; ``None`` follows :attr:`histodecon.settings.progress`.

    Returns
    -------
    :class:`~histodecon.tl.CVResult`
        A :class:`CVResult` with ``scores`` (per cell type) and ``summary`` (per slide), the
        regressor's rows with ``model == "mlp"``; see it for the columns.

    Examples
    --------
    >>> import histodecon as hd
    >>> sections = [hd.datasets.her2st(s) for s in ("B4", "C2", "C3")]  # doctest: +SKIP
    >>> for sdata in sections:
    ...     hd.tl.embed(sdata, models=["handcrafted"])  # doctest: +SKIP
    >>> cv = hd.tl.cross_validate(sections, groupby="patient", target="proportions")  # doctest: +SKIP
    >>> cv.summary.groupby("model")[["cc", "l1"]].mean()  # doctest: +SKIP
    """
    baselines = check_baselines(baselines)
    options = Hyperparameters.from_options(hyperparameters, seed=seed)
    cross_dataset = train is not None or test is not None
    if cross_dataset and (slides is not None or train is None or test is None):
        raise ValueError(
            "Pass either `slides` (leave-one-group-out) or both `train=` and `test=` (cross-dataset), not a mix."
        )
    if not cross_dataset and (slides is None or groupby is None):
        raise ValueError(
            "Leave-one-group-out needs `slides` and a `groupby=` obs column; "
            "or pass `train=` and `test=` slides for the cross-dataset mode."
        )
    train_slides = as_slide_list(train, "train") if cross_dataset else as_slide_list(slides)
    test_slides = as_slide_list(test, "test") if cross_dataset else None
    configs = [embedding_names(train_slides, table_key)] if features is None else configurations(features)
    scores, summary, predictions = [], [], {}
    for names in configs:
        configuration = "+".join(names)
        if cross_dataset:
            train_spots = spot_table(train_slides, names, target, table_key=table_key, groupby=groupby)
            test_spots = spot_table(
                test_slides, names, target, table_key=table_key, groupby=None, dims=train_spots.dims
            )
            folds = [(CROSS_DATASET_FOLD, train_spots, test_spots)]
        else:
            spots = spot_table(train_slides, names, target, table_key=table_key, groupby=groupby)
            values = pd.unique(spots.groups)
            if len(values) < 2:
                raise ValueError(
                    f"Leave-one-group-out needs at least two values of `obs[{groupby!r}]`, found {list(values)}. "
                    "Pass `groupby=` an obs column with more values, or use `train=` / `test=`."
                )
            folds = [(str(v), spots.subset(spots.groups != v), spots.subset(spots.groups == v)) for v in values]
        fold_predictions: dict[str, list[pd.DataFrame]] = {}
        for fold, train_spots, test_spots in folds:
            _check_cell_types(train_spots.target, test_spots.target, target)
            model = AbundanceRegressor(hyperparameters=options, device=device)
            with measure_cost(settings.torch_device(device)) as cost:
                model.fit(
                    train_spots.features,
                    train_spots.target,
                    groups=train_spots.groups,
                    feature_dims=train_spots.feature_dims,
                )
            truth = test_spots.target[list(train_spots.target.columns)]
            fold_models = {REGRESSOR: model}
            fold_costs = {REGRESSOR: training_cost(cost, model)}
            for name in baselines:
                with measure_cost() as cost:
                    fold_models[name] = fit_baseline(
                        name, train_spots.features, train_spots.target.to_numpy(), groups=train_spots.groups, seed=seed
                    )
                fold_costs[name] = {"fit_seconds": cost.seconds, "peak_host_mb": cost.peak_host_mb}
            for name, fitted in fold_models.items():
                pred = fitted.predict(test_spots.features)
                rows, sums = _score(configuration, name, fold, truth, pred, test_spots.samples)
                scores += rows
                summary += [row | fold_costs[name] for row in sums]
                for row in sums:
                    logger.info(
                        f"{configuration} {name}, fold {fold}, {row[Key.obs.sample]}: "
                        f"CC {row['cc']:.3f}, L1 {row['l1']:.3f}"
                    )
                if keep_predictions:
                    index = pd.MultiIndex.from_arrays(
                        [test_spots.samples, test_spots.obs_names], names=[Key.obs.sample, "spot"]
                    )
                    frame = pd.DataFrame(pred, index=index, columns=truth.columns)
                    fold_predictions.setdefault(name, []).append(frame)
        for name, frames in fold_predictions.items():
            predictions[configuration, name] = pd.concat(frames)
    return CVResult(pd.concat(scores, ignore_index=True), pd.DataFrame(summary), predictions)


def _check_cell_types(train_y: pd.DataFrame, test_y: pd.DataFrame, target: str) -> None:
    if set(train_y.columns) != set(test_y.columns):
        raise ValueError(
            f"Training and test slides have different cell types in `obsm[{target!r}]`: only in training "
            f"{sorted(set(train_y.columns) - set(test_y.columns))}, only in test "
            f"{sorted(set(test_y.columns) - set(train_y.columns))}. Use targets with the same columns."
        )
