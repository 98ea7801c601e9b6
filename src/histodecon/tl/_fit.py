"""Train the abundance regressor on slides, and predict abundances on new slides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._settings import logger
from histodecon._utils import (
    Slide,
    as_slide_list,
    check_overwrite,
    copy_data,
    encoder_names,
    get_table,
    provenance,
    write_result,
)

from ._hyperparameters import Hyperparameters
from ._regressor import AbundanceRegressor
from ._spots import DEFAULT_GROUPBY, embedding_names, feature_matrix, spot_table


@inject_docs
def fit(
    slides: Slide | Sequence[Slide],
    *,
    features: str | Sequence[str] | None = None,
    target: str = Key.obsm.abund,
    table_key: str = Key.tables.table,
    groupby: str | None = DEFAULT_GROUPBY,
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
    {{device}}
    seed
        Seed of initialisation, validation split and minibatch order.
    **hyperparameters
        Fields of :class:`Hyperparameters` (``hidden``, ``mae_weight``, ``pearson_weight``,
        ``lr``, ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``,
        ``validation_fraction``).

    Returns
    -------
    The trained regressor; ``model.provenance["samples"]`` lists the training samples.

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
    spots = spot_table(slides, names, target, table_key=table_key, groupby=groupby)
    model = AbundanceRegressor(hyperparameters=options, device=device)
    model.fit(spots.features, spots.target, groups=spots.groups, feature_dims=spots.feature_dims)
    model.provenance.update({"samples": spots.sample_names, "target": target})
    return model


@inject_docs
def predict(
    data: Slide,
    model: AbundanceRegressor,
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
    in tissue or not; spots whose embeddings contain NaN get NaN predictions (logged).

    Parameters
    ----------
    {{data}}
    model
        A trained :class:`AbundanceRegressor` (from :func:`fit` or
        :meth:`AbundanceRegressor.load`).
    {{table_key}}
    {{key_added}}
    {{overwrite}}
    {{copy}}
    batch_size
        Spots per forward pass.

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
    if not isinstance(model, AbundanceRegressor):
        raise TypeError(
            f"`model` must be an AbundanceRegressor, got {type(model).__name__}; "
            "train one with `hd.tl.fit` or read one with `hd.tl.AbundanceRegressor.load`."
        )
    model._check_fitted()
    table = get_table(data, table_key)
    if table.n_obs == 0:
        raise ValueError("The table has no spots to predict; read a slide with spots (`hd.io`) first.")
    check_overwrite(table.obsm, key_added, "adata.obsm", overwrite)
    x = feature_matrix(table, model.feature_keys, model.feature_dims)
    finite = np.isfinite(x).all(axis=1)
    pred = np.full((len(x), len(model.cell_types)), np.nan, dtype=np.float32)
    pred[finite] = model.predict(x[finite], batch_size=batch_size)
    if not finite.all():
        logger.warning(f"{int((~finite).sum())} spots have NaN or infinite embeddings; their predictions are NaN.")

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
