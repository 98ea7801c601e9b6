"""Predict cell-type abundances of new slides with a trained regressor."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._settings import logger
from histodecon._utils import (
    Slide,
    check_overwrite,
    check_positive_int,
    copy_data,
    get_table,
    provenance,
    write_result,
)

from ._estimator._field_match import PATCH_FIELD_UM, warn_on_other_fields
from ._estimator._inputs import spot_inputs
from ._estimator._regressor import AbundanceRegressor
from ._estimator._spots import feature_matrix, in_tissue


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
