"""Train the abundance regressor on slides, and predict abundances on new slides."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from histodecon._constants import Key
from histodecon._cost import measure_cost, training_cost
from histodecon._docs import inject_docs
from histodecon._settings import logger, settings
from histodecon._utils import (
    Slide,
    as_slide_list,
    check_overwrite,
    check_positive_int,
    copy_data,
    encoder_names,
    get_table,
    provenance,
    write_result,
)

from ._field_match import PATCH_FIELD_UM, training_fields_um, warn_on_other_fields
from ._hyperparameters import Hyperparameters
from ._inputs import InputOptions, spot_inputs
from ._regressor import AbundanceRegressor
from ._spots import DEFAULT_GROUPBY, embedding_names, feature_matrix, in_tissue, spot_table


@inject_docs
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
    ``"proportion"`` or ``"abundance"`` to choose. Early stopping on held-out slides chooses the number of epochs;
    the returned model is then trained on every slide (see :class:`AbundanceRegressor`), and
    a warning says when its validation predictions look collapsed. The defaults were chosen
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
        early stopping validates on held-out groups rather than random spots. ``None``
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
        Seed of initialisation, validation split and minibatch order.
    **hyperparameters
        Fields of :class:`Hyperparameters` (``hidden``, ``mae_weight``, ``pearson_weight``,
        ``lr``, ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``,
        ``validation_fraction``, ``target_scale``).

    Returns
    -------
    The trained regressor; ``model.provenance["samples"]`` lists the training samples,
    ``model.provenance["patch_field_um"]`` the smallest and largest side in µm of the patches
    behind each encoder's embeddings (from :func:`histodecon.tl.embed`'s record; :func:`predict`
    warns when a slide's patches differ from them by more than 10%) and
    ``model.provenance["cost"]`` what training cost: ``fit_seconds`` (reading the slides'
    inputs and training), ``epochs`` (all epochs trained, the refit included),
    ``peak_host_mb`` (peak resident memory of the process) and, on CUDA, ``peak_gpu_mb``
    (:func:`torch.cuda.max_memory_allocated`).

    Examples
    --------
    >>> import histodecon as hd
    >>> slides = [hd.datasets.synthetic(seed=s, sample=f"s{s}") for s in range(3)]
    >>> for sdata in slides:
    ...     hd.tl.embed(sdata)  # doctest: +SKIP
    >>> model = hd.tl.fit(slides)  # doctest: +SKIP
    >>> model.feature_keys, model.cell_types  # doctest: +SKIP
    (['handcrafted'], ['tumour', 'lymphocyte', 'fibroblast', 'adipocyte', 'endothelial'])
    """
    slides = as_slide_list(slides)
    names = embedding_names(slides, table_key) if features is None else encoder_names(features, "features")
    options = Hyperparameters.from_options(hyperparameters, seed=seed)
    inputs = InputOptions(feature_scaling=feature_scaling, context_radius=context_radius)
    with measure_cost(settings.torch_device(device)) as cost:
        spots = spot_table(slides, names, target, table_key=table_key, groupby=groupby, inputs=inputs)
        model = AbundanceRegressor(hyperparameters=options, device=device)
        model.fit(spots.features, spots.target, groups=spots.groups, feature_dims=spots.feature_dims, inputs=inputs)
    model.provenance.update(
        {
            "samples": spots.sample_names,
            "target": target,
            "cost": training_cost(cost, model),
            PATCH_FIELD_UM: training_fields_um([get_table(slide, table_key) for slide in slides], names),
        }
    )
    return model


@inject_docs
def predict(
    data: Slide,
    model: AbundanceRegressor | str | os.PathLike,
    *,
    table_key: str = Key.tables.table,
    key_added: str = Key.obsm.pred_abund,
    overwrite: bool = False,
    copy: bool = False,
    batch_size: int = 8192,
) -> Slide | None:
    """Predict cell-type abundances of every spot from its embeddings.

    The slide must hold the embeddings the model was trained on (``obsm["X_<name>"]`` for
    every name in ``model.feature_keys``, with the same widths). Every spot is predicted,
    in tissue or not; spots whose embeddings contain NaN get NaN predictions (logged). With the
    default per-slide feature scaling every spot is read relative to its sample's in-tissue spots
    in this table (all its spots when none is flagged, with a warning), so predict whole slides,
    not subsets of a few spots (warned below 20). A
    warning names the fix when the slide's patches cover another field (side in µm) than the
    training slides' did, e.g. 123 µm Visium patches for a model trained on 224 µm legacy-ST
    ones.

    Parameters
    ----------
    {{data}}
    model
        A trained :class:`AbundanceRegressor` (from :func:`fit` or
        :meth:`AbundanceRegressor.load`), or where to load one from: the path given to
        :meth:`AbundanceRegressor.save` or a Hugging Face Hub repository id.
    {{table_key}}
    {{key_added}}
    {{overwrite}}
    {{copy}}
    batch_size
        Spots moved to the device at a time: bounds memory; predictions are the same to the
        last bit whatever its value.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Writes ``obsm[key_added]``: a DataFrame
    indexed by ``obs_names`` whose columns are ``model.cell_types``, and
    ``uns['histodecon']['predictions'][key_added]`` (features, cell types, training samples,
    validation scores). With ``copy=True`` a SpatialData's images and shapes are shared
    with the original; its tables are copied.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(seed=7)
    >>> hd.tl.embed(sdata)  # doctest: +SKIP
    >>> hd.tl.predict(sdata, model)  # doctest: +SKIP
    >>> sdata.tables["table"].obsm["pred_abund"].head()  # doctest: +SKIP
    """
    check_positive_int(batch_size, "batch_size")  # issue 15: before a model is loaded
    if isinstance(model, str | os.PathLike):
        model = AbundanceRegressor.load(model)
    if not isinstance(model, AbundanceRegressor):
        raise TypeError(
            f"`model` must be an AbundanceRegressor, a saved model's path or a Hub repository id, got "
            f"{type(model).__name__}; train one with `hd.tl.fit` or read one with `hd.tl.AbundanceRegressor.load`."
        )
    model.check_fitted()
    table = get_table(data, table_key)
    if table.n_obs == 0:
        raise ValueError("The table has no spots to predict; read a slide with spots (`hd.io`) first.")
    check_overwrite(table.obsm, key_added, "adata.obsm", overwrite)
    warn_on_other_fields(table, model.provenance.get(PATCH_FIELD_UM, {}))
    x = spot_inputs(
        table, feature_matrix(table, model.feature_keys, model.feature_dims), in_tissue(table), model.inputs
    )
    finite = np.isfinite(x).all(axis=1)
    pred = np.full((len(x), len(model.cell_types)), np.nan, dtype=np.float32)
    pred[finite] = model.predict(x if finite.all() else x[finite], batch_size=batch_size)
    if not finite.all():
        cause = (
            "embeddings" if model.inputs.context_radius is None else "embeddings, or no in-tissue neighbour in reach"
        )
        logger.warning(
            f"{int((~finite).sum())} spots have NaN or infinite inputs ({cause}); their predictions are NaN."
        )

    result = copy_data(data) if copy else data
    adata = get_table(result, table_key) if copy else table
    write_result(
        adata,
        "obsm",
        key_added,
        pd.DataFrame(pred, index=adata.obs_names, columns=model.cell_types),
        overwrite=overwrite,
    )
    provenance(adata).setdefault(Key.uns.predictions, {})[key_added] = {
        "features": list(model.feature_keys),
        "feature_dims": list(model.feature_dims),
        "cell_types": list(model.cell_types),
        "training_samples": list(model.provenance.get("samples", [])),
        "validation_scores": dict(model.validation_scores),
    }
    return result if copy else None
