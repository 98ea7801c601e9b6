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

from ._estimator._applicability import judge, warn_outside
from ._estimator._calibration import bounds, check_calibrated, check_interval
from ._estimator._field_match import PATCH_FIELD_UM, warn_on_other_fields
from ._estimator._inputs import spot_inputs
from ._estimator._regressor import AbundanceRegressor
from ._estimator._spots import feature_matrix, in_tissue
from ._estimator._stain_match import STAIN_REFERENCE, warn_on_other_stain


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
    interval: float | None = None,
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
    ones. Every sample is also judged against the model's training slides (native resolution,
    stain, the slide-level feature statistics that per-slide scaling hides; see :doc:`/trust`):
    a warning names each cause and its fix where a sample lies outside them. Another warning
    names the fix when the slide's embeddings were normalised to another stain reference than the
    model's training embeddings, or one was and the other not (see :doc:`/stain`).

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
    interval
        Coverage level in (0, 1) of per-spot prediction intervals, e.g. ``0.8``; ``None``: none.
        Split conformal intervals: every cell type's prediction +- a quantile of the absolute
        errors of the model's early-stopping networks on the spots they did not train on
        (whole held-out slides when the model was fitted on several), clipped to >= 0 (and
        <= 1 for compositions). Over spots like the held-out ones, about ``interval`` of the
        true values fall inside; a slide unlike the training ones is covered less. Measured
        on her2st with two training sections (held-out spots then random spots of them,
        ``benchmarks/trust.py``): at 0.8, 0.86-0.88 on a serial section of a training
        patient, 0.41 on another patient's section; see the applicability record.

    Returns
    -------
    :class:`~spatialdata.SpatialData`, :class:`~anndata.AnnData` or ``None``
        ``None``, or the modified copy with ``copy=True``. Writes ``obsm[key_added]``: a DataFrame
        indexed by ``obs_names`` whose columns are ``model.cell_types``, and
        ``uns['histodecon']['predictions'][key_added]`` (features, cell types, training samples,
        validation scores). With ``interval``, also ``obsm[f"{key_added}_lower"]`` and
        ``obsm[f"{key_added}_upper"]``, DataFrames like the prediction. Always
        ``uns['histodecon']['applicability'][sample]`` for every sample of the table (replacing an
        earlier predict's): ``ok``, ``reasons`` (why not), ``not_judged`` (checks the records did not
        allow) and the figures and thresholds behind them. With ``copy=True`` a SpatialData's images and shapes are shared
        with the original; its tables are copied.

    Examples
    --------
    A model trained on two slides predicts a third:

    >>> import histodecon as hd
    >>> slides = [hd.datasets.synthetic(n_spots=60, seed=seed, sample=f"s{seed}", counts=False) for seed in range(3)]
    >>> for sdata in slides:
    ...     hd.tl.embed(sdata, progress=False)
    >>> model = hd.tl.fit(slides[:2], max_epochs=5, progress=False)
    >>> hd.tl.predict(slides[2], model)
    >>> slides[2].tables["table"].obsm["pred_abund"].shape
    (60, 5)
    """
    if isinstance(data, list | tuple):
        raise TypeError(
            f"`hd.tl.predict` takes one slide, got a {type(data).__name__} of {len(data)}; predict several with "
            "`hd.tl.predict_many(slides, model)` (locally, or on a dask cluster with `client=`)."
        )
    check_positive_int(batch_size, "batch_size")  # issue 15: before a model is loaded
    interval = check_interval(interval)
    if isinstance(model, str | os.PathLike):
        model = AbundanceRegressor.load(model)
    if not isinstance(model, AbundanceRegressor):
        raise TypeError(
            f"`model` must be an AbundanceRegressor, a saved model's path or a Hub repository id, got "
            f"{type(model).__name__}; train one with `hd.tl.fit` or read one with `hd.tl.AbundanceRegressor.load`."
        )
    model.check_fitted()
    if interval is not None:
        check_calibrated(model.calibration)
    table = get_table(data, table_key)
    if table.n_obs == 0:
        raise ValueError("The table has no spots to predict; read a slide with spots (`hd.io`) first.")
    bound_keys = Key.obsm.interval_bounds(key_added) if interval is not None else ()
    for key in (key_added, *bound_keys):
        check_overwrite(table.obsm, key, "adata.obsm", overwrite)
    warn_on_other_fields(table, model.provenance.get(PATCH_FIELD_UM, {}))
    warn_on_other_stain(table, model.feature_keys, model.provenance.get(STAIN_REFERENCE))
    applicability = judge(table, model.provenance, model.feature_keys, model.feature_dims)
    warn_outside(applicability)
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
    frames = {key_added: pred}
    if interval is not None:
        proportions = model.hyperparameters.target_scale == "proportion"
        frames |= zip(bound_keys, bounds(pred, model.calibration, interval, proportions=proportions), strict=True)
    for key, values in frames.items():  # every key was checked before anything was written
        write_result(
            adata,
            "obsm",
            key,
            pd.DataFrame(values, index=adata.obs_names, columns=model.cell_types),
            overwrite=overwrite,
        )
    provenance(adata).setdefault(Key.uns.predictions, {})[key_added] = {
        "features": list(model.feature_keys),
        "feature_dims": list(model.feature_dims),
        "cell_types": list(model.cell_types),
        "training_samples": list(model.provenance.get("samples", [])),
        "validation_scores": dict(model.validation_scores),
        **({"interval": interval, "calibration": model.calibration["method"]} if interval is not None else {}),
    }
    provenance(adata).setdefault(Key.uns.applicability, {}).update(applicability)
    logger.info(f"Adding `adata.uns[{Key.uns.root!r}][{Key.uns.applicability!r}]` for samples {list(applicability)}")
    return result if copy else None
