"""Train the abundance regressor on slides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from histodecon._constants import Key
from histodecon._cost import measure_cost, training_cost
from histodecon._docs import inject_docs
from histodecon._settings import progress_option, settings
from histodecon._utils import (
    Slide,
    as_slide_list,
    encoder_names,
    get_table,
)

from ._estimator._applicability import APPLICABILITY, training_record
from ._estimator._field_match import PATCH_FIELD_UM, training_fields_um
from ._estimator._hyperparameters import Hyperparameters
from ._estimator._inputs import InputOptions
from ._estimator._regressor import AbundanceRegressor
from ._estimator._spots import DEFAULT_GROUPBY, embedding_names, spot_table
from ._estimator._stain_match import STAIN_REFERENCE, training_reference


@inject_docs
@progress_option
def fit(
    slides: Slide | Sequence[Slide],
    *,
    features: str | Sequence[str] | None = None,
    target: str = Key.obsm.abund,
    table_key: str = Key.tables.table,
    groupby: str | None = DEFAULT_GROUPBY,
    feature_scaling: Literal["slide", "training"] = "slide",
    context_radius: float | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **hyperparameters: Any,
) -> AbundanceRegressor:
    """Train an :class:`AbundanceRegressor` from the embeddings of slides to their abundances.

    The embeddings ``obsm["X_<name>"]`` of every encoder in ``features`` are concatenated in
    that order; the target is ``obsm[target]``, a DataFrame whose columns are the cell types
    (cell2location's abundances from :func:`histodecon.tl.deconvolve`, or any non-negative
    per-spot composition). A plain array target gets cell types ``"0"``, ``"1"``, ...
    Only spots with ``obs["in_tissue"]`` True are used when that column exists. Features or
    targets with NaN or infinite values are refused, not silently dropped.

    A target of proportions (every spot's row sums to 1) gives a model that predicts every
    spot's composition, any other target one that predicts amounts in its units (cells per
    spot for cell2location's abundances): ``target_scale="auto"``, the default; pass
    ``"proportion"`` or ``"abundance"`` to choose. Early stopping in three folds chooses the
    number of epochs, the median of the folds' best (with three or more slides each fold holds
    out other slides, so no single slide drawn by the seed decides); the returned model is then
    trained on every slide (see :class:`AbundanceRegressor`), and a warning says when the folds'
    predictions on their held-out spots look collapsed. Those predictions also calibrate
    :func:`predict`'s intervals (``interval=``). The defaults were chosen
    by leave-one-section-out on her2st (``benchmarks/her2st_loso.py``, table in the README).

    Parameters
    ----------
    slides
        One slide or a list of slides (SpatialData or AnnData) with the same cell types.
    features
        Encoder names whose embeddings are the input, in order. ``None``: every encoder
        whose embeddings ``obsm["X_<name>"]`` all slides have, sorted by name (after
        ``hd.tl.embed(sdata)``, the ``handcrafted`` encoder).
    target
        ``obsm`` key of the training abundances.
    {{table_key}}
    groupby
        ``obs`` column naming the slide (or patient) of each spot; with three or more groups,
        the early-stopping folds hold out whole groups rather than random spots. ``None``
        always holds out random spots.
    feature_scaling
        ``"slide"``: standardise every feature over the in-tissue spots of its own sample
        first, which removes much of the staining difference between slides; ``"training"``:
        only by the training spots. :func:`predict` repeats the model's choice, so with
        ``"slide"`` a spot's prediction depends on the other spots of its sample in the table:
        predict whole slides (a warning fires below 20 in-tissue spots).
    context_radius
        Radius in micrometres of the neighbourhood feature: the mean input of the spots within
        it (same sample, in tissue) is concatenated to every spot's input; needs
        ``obsm["spatial"]`` and the sample's mpp (slides read with :mod:`histodecon.io`).
        ``None``: none. Recorded in the model so :func:`predict` repeats it.
    {{device}}
    seed
        Seed of initialisation, early-stopping folds and minibatch order.
    **hyperparameters
        Fields of :class:`Hyperparameters` (``hidden``, ``mae_weight``, ``pearson_weight``,
        ``lr``, ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``,
        ``validation_fraction``, ``target_scale``).
    progress
        Show progress bars for this call; ``None`` follows :attr:`histodecon.settings.progress`.

    Returns
    -------
    :class:`~histodecon.tl.AbundanceRegressor`
        The trained regressor; ``model.provenance["samples"]`` lists the training samples,
        ``model.provenance["patch_field_um"]`` the smallest and largest side in µm of the patches
        behind each encoder's embeddings (from :func:`histodecon.tl.embed`'s record; :func:`predict`
        warns when a slide's patches differ from them by more than 10%) and
        ``model.provenance["applicability"]`` what :func:`predict` compares new slides with (the
        training slides' resolution, stain vectors and per-feature slide means and spreads, with
        thresholds from leave-one-slide-out; see :doc:`/trust`),
        ``model.provenance["stain_reference"]`` the stain reference the training embeddings were
        normalised to (``None``: as scanned; :func:`predict` warns when a slide's embeddings were
        made otherwise) and ``model.provenance["cost"]`` what training cost: ``fit_seconds`` (reading the slides'
        inputs and training), ``epochs`` (all epochs trained, every early-stopping fold's and the
        refit's); ``model.provenance["early_stopping"]`` the folds (strategy, each fold's best
        epoch and held-out groups) and ``model.calibration`` what :func:`predict`'s intervals need,
        ``peak_host_mb`` (peak resident memory of the process) and, on CUDA, ``peak_gpu_mb``
        (:func:`torch.cuda.max_memory_allocated`).

    Examples
    --------
    >>> import histodecon as hd
    >>> slides = [hd.datasets.synthetic(n_spots=60, seed=s, sample=f"s{s}", counts=False) for s in range(3)]
    >>> for sdata in slides:
    ...     hd.tl.embed(sdata, progress=False)
    >>> model = hd.tl.fit(slides, max_epochs=5, progress=False)
    >>> model.feature_keys, model.cell_types
    (['handcrafted'], ['tumour', 'lymphocyte', 'fibroblast', 'adipocyte', 'endothelial'])
    """
    slides = as_slide_list(slides)
    names = embedding_names(slides, table_key) if features is None else encoder_names(features, "features")
    options = Hyperparameters.from_options(hyperparameters, seed=seed)
    inputs = InputOptions(feature_scaling=feature_scaling, context_radius=context_radius)
    tables = [get_table(slide, table_key) for slide in slides]
    reference = training_reference(tables, names)  # embeddings normalised several ways fail before training
    with measure_cost(settings.torch_device(device)) as cost:
        spots = spot_table(slides, names, target, table_key=table_key, groupby=groupby, inputs=inputs)
        model = AbundanceRegressor(hyperparameters=options, device=device)
        model.fit(spots.features, spots.target, groups=spots.groups, feature_dims=spots.feature_dims, inputs=inputs)
    model.provenance.update(
        {
            "samples": spots.sample_names,
            "target": target,
            "cost": training_cost(cost, model),
            PATCH_FIELD_UM: training_fields_um(tables, names),
            STAIN_REFERENCE: reference,
            APPLICABILITY: training_record([get_table(slide, table_key) for slide in slides], names, spots.dims),
        }
    )
    return model
