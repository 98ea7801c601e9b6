"""Train the abundance regressor on slides, and predict abundances on new slides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

from histodecon._docs import inject_docs
from histodecon._settings import logger
from histodecon._utils import check_overwrite, copy_data, encoder_names, get_table, provenance, write_result

from ._regressor import AbundanceRegressor, check_hyperparameters

Slide = SpatialData | AnnData


def as_slide_list(slides: Slide | Sequence[Slide], name: str = "slides") -> list[Slide]:
    """One slide or a sequence of slides, as a non-empty list."""
    if isinstance(slides, SpatialData | AnnData):
        return [slides]
    if isinstance(slides, Sequence) and not isinstance(slides, str) and slides:
        if not all(isinstance(s, SpatialData | AnnData) for s in slides):
            raise TypeError(f"Every element of `{name}` must be a SpatialData or AnnData.")
        return list(slides)
    raise TypeError(
        f"`{name}` must be a SpatialData, an AnnData or a non-empty list of them, got {type(slides).__name__}."
    )


def _slide_name(adata: AnnData) -> str:
    if "sample" in adata.obs:
        return ", ".join(map(str, pd.unique(adata.obs["sample"].astype(str))))
    return "<AnnData without obs['sample']>"


def feature_matrix(adata: AnnData, features: Sequence[str], dims: Sequence[int] | None = None) -> np.ndarray:
    """The embeddings ``obsm[f"X_{name}"]`` concatenated in the order of ``features`` (float32).

    ``dims`` are the widths the blocks must have (those a model was trained on).
    """
    blocks = []
    for i, name in enumerate(features):
        key = f"X_{name}"
        if key not in adata.obsm:
            raise KeyError(
                f"Slide {_slide_name(adata)} has no `obsm[{key!r}]` (embeddings of {name!r}). "
                f"Compute them with `hd.tl.embed(sdata, models=[{name!r}])`."
            )
        block = adata.obsm[key]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        block = block.astype(np.float32, copy=False)
        if block.ndim != 2:
            raise ValueError(f"`obsm[{key!r}]` must be 2-D (spots x dims), got shape {block.shape}.")
        if dims is not None and block.shape[1] != dims[i]:
            raise ValueError(
                f"`obsm[{key!r}]` of slide {_slide_name(adata)} has {block.shape[1]} dims but the model expects "
                f"{dims[i]}: it was embedded with another model. Recompute it with "
                f"`hd.tl.embed(sdata, models=[{name!r}], overwrite=True)`."
            )
        blocks.append(block)
    return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]


def target_frame(adata: AnnData, target: str) -> pd.DataFrame:
    """``obsm[target]`` as a DataFrame: its own columns, or ``"0"``, ``"1"``, ... for an array."""
    if target not in adata.obsm:
        raise KeyError(
            f"Slide {_slide_name(adata)} has no `obsm[{target!r}]` to train on. Run "
            "`hd.tl.deconvolve(sdata, reference)` or pass `target=` the obsm key of your abundances."
        )
    values = adata.obsm[target]
    if isinstance(values, pd.DataFrame):
        frame = values.copy()
        frame.columns = frame.columns.astype(str)
    else:
        values = values.toarray() if sparse.issparse(values) else np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"`obsm[{target!r}]` must be 2-D (spots x cell types), got shape {values.shape}.")
        frame = pd.DataFrame(values, index=adata.obs_names, columns=[str(i) for i in range(values.shape[1])])
    if (frame.to_numpy() < 0).any():
        raise ValueError(
            f"Target `obsm[{target!r}]` of slide {_slide_name(adata)} has negative values; abundances must be >= 0."
        )
    return frame


def _in_tissue(adata: AnnData) -> np.ndarray:
    if "in_tissue" not in adata.obs:
        return np.ones(adata.n_obs, dtype=bool)
    return adata.obs["in_tissue"].to_numpy(dtype=bool)


def _refuse_non_finite(values: np.ndarray, what: str, adata: AnnData) -> None:
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{what} of slide {_slide_name(adata)} has NaN or infinite values in {int(bad.sum())} in-tissue "
            "spots. Drop those spots (e.g. `adata = adata[mask].copy()`) or set their `obs['in_tissue']` to False."
        )


def training_data(
    slides: Sequence[Slide],
    features: Sequence[str],
    target: str,
    table_key: str,
    groupby: str | None,
    dims: Sequence[int] | None = None,
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None, list[int]]:
    """Features, targets and groups of the in-tissue spots of ``slides``, and the feature dims.

    Targets are aligned by cell-type name to the first slide's column order; slides must
    have the same cell types and feature dims (``dims`` when given, else the first slide's).
    """
    xs, ys, groups, cell_types = [], [], [], None
    for slide in slides:
        adata = get_table(slide, table_key)
        keep = _in_tissue(adata)
        x = feature_matrix(adata, features, dims)[keep]
        y = target_frame(adata, target)
        if dims is None:
            dims = [int(adata.obsm[f"X_{name}"].shape[1]) for name in features]
        if cell_types is None:
            cell_types = list(y.columns)
        elif set(y.columns) != set(cell_types):
            raise ValueError(
                f"`obsm[{target!r}]` of slide {_slide_name(adata)} has other cell types than the first slide: "
                f"missing {sorted(set(cell_types) - set(y.columns))}, extra {sorted(set(y.columns) - set(cell_types))}. "
                "Train on targets with the same columns."
            )
        y = y[cell_types].to_numpy(dtype=np.float32)[keep]
        _refuse_non_finite(x, f"Features {[f'X_{n}' for n in features]}", adata)
        _refuse_non_finite(y, f"Target `obsm[{target!r}]`", adata)
        if groupby is not None:
            if groupby not in adata.obs:
                raise KeyError(
                    f"Slide {_slide_name(adata)} has no `obs[{groupby!r}]` to group spots by. "
                    "Pass `groupby=` an obs column naming each spot's slide, or `groupby=None` to hold out random spots."
                )
            groups.append(adata.obs[groupby].astype(str).to_numpy()[keep])
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) == 0:
        raise ValueError("No in-tissue spots to train on: every `obs['in_tissue']` is False.")
    return x, pd.DataFrame(y, columns=cell_types), (np.concatenate(groups) if groupby else None), dims


def _training_samples(slides: Sequence[Slide], table_key: str) -> list[str]:
    samples = set()
    for slide in slides:
        adata = get_table(slide, table_key)
        if "sample" in adata.obs:
            samples.update(adata.obs["sample"].astype(str)[_in_tissue(adata)])
    return sorted(samples)


@inject_docs
def fit(
    slides: Slide | Sequence[Slide],
    *,
    features: str | Sequence[str] = ("conch", "uni"),
    target: str = "abund",
    table_key: str = "table",
    groupby: str | None = "sample",
    device: str | None = None,
    seed: int = 0,
    **hyperparameters: Any,
) -> AbundanceRegressor:
    """Train an :class:`AbundanceRegressor` from the embeddings of slides to their abundances.

    The embeddings ``obsm[f"X_{name}"]`` of every encoder in ``features`` are concatenated in
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
        Encoder names whose embeddings are the input, in order.
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
        Passed to :class:`AbundanceRegressor` (``hidden``, ``l1``, ``l2``, ``lr``,
        ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``,
        ``validation_fraction``).

    Returns
    -------
    The trained regressor; ``model.provenance["samples"]`` lists the training samples.

    Examples
    --------
    >>> import histodecon as hd
    >>> slides = [hd.datasets.synthetic(seed=s, sample=f"s{s}") for s in range(3)]
    >>> for sdata in slides:
    ...     hd.tl.embed(sdata, models=["handcrafted"])  # doctest: +SKIP
    >>> model = hd.tl.fit(slides, features=["handcrafted"])  # doctest: +SKIP
    >>> model.cell_types  # doctest: +SKIP
    ['tumour', 'lymphocyte', 'fibroblast', 'adipocyte', 'endothelial']
    """
    slides = as_slide_list(slides)
    names = encoder_names(features, "features")
    check_hyperparameters(hyperparameters)
    x, y, groups, dims = training_data(slides, names, target, table_key, groupby)
    model = AbundanceRegressor(seed=seed, device=device, **hyperparameters)
    model.fit(x, y, groups=groups, feature_dims=dict(zip(names, dims, strict=True)))
    model.provenance.update({"samples": _training_samples(slides, table_key), "target": target})
    return model


@inject_docs
def predict(
    data: Slide,
    model: AbundanceRegressor,
    *,
    table_key: str = "table",
    key_added: str = "pred_abund",
    overwrite: bool = False,
    copy: bool = False,
    batch_size: int = 8192,
) -> Slide | None:
    """Predict cell-type abundances of every spot from its embeddings.

    The slide must hold the embeddings the model was trained on (``obsm[f"X_{name}"]`` for
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
    >>> hd.tl.embed(sdata, models=["handcrafted"])  # doctest: +SKIP
    >>> hd.tl.predict(sdata, model)  # doctest: +SKIP
    >>> sdata.tables["table"].obsm["pred_abund"].head()  # doctest: +SKIP
    """
    if not isinstance(model, AbundanceRegressor):
        raise TypeError(
            f"`model` must be an AbundanceRegressor, got {type(model).__name__}; "
            "train one with `hd.tl.fit` or read one with `hd.tl.AbundanceRegressor.load`."
        )
    model._check_fitted()
    if get_table(data, table_key).n_obs == 0:
        raise ValueError("The table has no spots to predict; read a slide with spots (`hd.io`) first.")
    check_overwrite(get_table(data, table_key).obsm, key_added, "adata.obsm", overwrite)
    x = feature_matrix(get_table(data, table_key), model.feature_keys, model.feature_dims)
    finite = np.isfinite(x).all(axis=1)
    pred = np.full((len(x), len(model.cell_types)), np.nan, dtype=np.float32)
    pred[finite] = model.predict(x[finite], batch_size=batch_size)
    if not finite.all():
        logger.warning(f"{int((~finite).sum())} spots have NaN or infinite embeddings; their predictions are NaN.")

    result = copy_data(data) if copy else data
    adata = get_table(result, table_key)
    write_result(
        adata,
        "obsm",
        key_added,
        pd.DataFrame(pred, index=adata.obs_names, columns=model.cell_types),
        overwrite=overwrite,
    )
    provenance(adata).setdefault("predictions", {})[key_added] = {
        "features": list(model.feature_keys),
        "feature_dims": list(model.feature_dims),
        "cell_types": list(model.cell_types),
        "training_samples": list(model.provenance.get("samples", [])),
        "validation_scores": dict(model.validation_scores),
    }
    return result if copy else None
