"""Slides to a spot table: the one pass that gathers features, targets and groups for training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from histodecon._constants import Key
from histodecon._utils import Slide, cell_type_frame, check_finite_matrix, check_storable_names, get_table

from ._inputs import InputOptions, spot_inputs

#: Spots are grouped by this ``obs`` column (early-stopping split of :func:`~histodecon.tl.fit`,
#: folds of :func:`~histodecon.tl.cross_validate`) unless ``groupby=`` says otherwise.
DEFAULT_GROUPBY = Key.obs.sample


@dataclass(frozen=True)
class SpotTable:
    """The in-tissue spots of one or more slides, stacked in slide order.

    Attributes
    ----------
    features
        Spots x features (float32): the embeddings of :attr:`feature_keys` concatenated.
    target
        Spots x cell types (float32), the columns in the first slide's order.
    groups
        The ``groupby`` value of every spot, or ``None`` without ``groupby``.
    samples
        The ``obs[Key.obs.sample]`` of every spot (a slide without it: its position in the list).
    obs_names
        The ``obs_names`` of every spot.
    feature_keys
        Encoder names of the feature blocks, in order.
    dims
        Width of each feature block (the embeddings'; with a neighbourhood feature,
        :attr:`features` is twice as wide).
    sample_names
        Sorted names in ``obs[Key.obs.sample]`` of the slides that have it: the training samples
        a model records.
    """

    features: np.ndarray
    target: pd.DataFrame
    groups: np.ndarray | None
    samples: np.ndarray
    obs_names: np.ndarray
    feature_keys: list[str]
    dims: list[int]
    sample_names: list[str]

    @property
    def feature_dims(self) -> dict[str, int]:
        """Feature block widths by encoder name, in order."""
        return dict(zip(self.feature_keys, self.dims, strict=True))

    def subset(self, mask: np.ndarray) -> SpotTable:
        """The spots where ``mask`` is True (``sample_names`` are the samples left)."""
        samples = self.samples[mask]
        return SpotTable(
            self.features[mask],
            self.target[mask].reset_index(drop=True),
            self.groups[mask] if self.groups is not None else None,
            samples,
            self.obs_names[mask],
            self.feature_keys,
            self.dims,
            sorted(set(self.sample_names) & set(samples)),
        )


def slide_name(adata: AnnData) -> str:
    """The sample(s) of a table, for messages."""
    if Key.obs.sample in adata.obs:
        return ", ".join(map(str, pd.unique(adata.obs[Key.obs.sample].astype(str))))
    return f"<AnnData without obs[{Key.obs.sample!r}]>"


def embedding_names(slides: Sequence[Slide], table_key: str = Key.tables.table) -> list[str]:
    """Encoders whose embeddings ``obsm[Key.obsm.embedding(name)]`` every slide has, sorted by name."""
    prefix = Key.obsm.embedding_prefix
    shared, found = None, []
    for slide in slides:
        names = {key[len(prefix) :] for key in get_table(slide, table_key).obsm if key.startswith(prefix)}
        shared = names if shared is None else shared & names
        found.append(sorted(names))
    if not shared:
        raise KeyError(
            f"The slides have no embeddings `obsm['{prefix}<encoder>']` in common (each slide's: {found}). Compute them with "
            "`hd.tl.embed(sdata)` or pass `features=` the encoder names to train on."
        )
    return sorted(shared)


def feature_matrix(adata: AnnData, features: Sequence[str], dims: Sequence[int] | None = None) -> np.ndarray:
    """The embeddings ``obsm[Key.obsm.embedding(name)]`` concatenated in the order of ``features`` (float32).

    ``dims`` are the widths the blocks must have (those a model was trained on).
    """
    blocks = []
    for i, name in enumerate(features):
        key = Key.obsm.embedding(name)
        if key not in adata.obsm:
            raise KeyError(
                f"Slide {slide_name(adata)} has no `obsm[{key!r}]` (embeddings of {name!r}). "
                f"Compute them with `hd.tl.embed(sdata, models=[{name!r}])`."
            )
        block = adata.obsm[key]
        block = block.toarray() if sparse.issparse(block) else np.asarray(block)
        block = block.astype(np.float32, copy=False)
        if block.ndim != 2:
            raise ValueError(f"`obsm[{key!r}]` must be 2-D (spots x dims), got shape {block.shape}.")
        if dims is not None and block.shape[1] != dims[i]:
            raise ValueError(
                f"`obsm[{key!r}]` of slide {slide_name(adata)} has {block.shape[1]} dims but the model expects "
                f"{dims[i]}: it was embedded with another model. Recompute it with "
                f"`hd.tl.embed(sdata, models=[{name!r}], overwrite=True)`."
            )
        blocks.append(block)
    return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]


def target_frame(adata: AnnData, target: str) -> pd.DataFrame:
    """``obsm[target]`` as a DataFrame of non-negative abundances (:func:`~histodecon._utils.cell_type_frame`)."""
    frame = cell_type_frame(
        adata,
        target,
        missing=f"Slide {slide_name(adata)} has no `obsm[{target!r}]` to train on. Run "
        "`hd.tl.deconvolve(sdata, reference)` or pass `target=` the obsm key of your abundances.",
    )
    if (frame.to_numpy() < 0).any():
        raise ValueError(
            f"Target `obsm[{target!r}]` of slide {slide_name(adata)} has negative values; abundances must be >= 0."
        )
    check_storable_names(
        frame.columns,
        f"Cell types of `obsm[{target!r}]` of slide {slide_name(adata)}",
        "Rename them, e.g. `frame.columns = frame.columns.str.replace('/', '_')`.",
    )
    return frame


def in_tissue(adata: AnnData) -> np.ndarray:
    """``obs[Key.obs.in_tissue]`` as flags (all True without it): booleans, or 0 / 1, refused otherwise.

    Text such as ``"False"`` would otherwise count as True, and so would missing values.
    """
    if Key.obs.in_tissue not in adata.obs:
        return np.ones(adata.n_obs, dtype=bool)
    column = adata.obs[Key.obs.in_tissue]
    if isinstance(column.dtype, pd.CategoricalDtype) and not column.isna().any():
        column = column.astype(column.cat.categories.dtype)
    if pd.api.types.is_bool_dtype(column.dtype) and not column.isna().any():
        return column.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(column.dtype) and column.isin([0, 1]).all():
        return column.to_numpy() != 0
    if column.dtype == object and column.map(type).isin([bool, np.bool_]).all():
        return column.to_numpy(dtype=bool)
    examples = pd.unique(column.astype(object))[:4].tolist()
    raise ValueError(
        f"`obs[{Key.obs.in_tissue!r}]` of slide {slide_name(adata)} must hold True / False (or 1 / 0), got "
        f"{column.dtype} values such as {examples}. Convert it first, e.g. "
        f"`adata.obs[{Key.obs.in_tissue!r}] = adata.obs[{Key.obs.in_tissue!r}].map({{'True': True, 'False': False}})`."
    )


def _finite(values: np.ndarray, what: str, adata: AnnData) -> np.ndarray:
    return check_finite_matrix(
        values,
        f"{what} of slide {slide_name(adata)}",
        rows="in-tissue spots",
        fix=f"Drop those spots (e.g. `adata = adata[mask].copy()`) or set their `obs[{Key.obs.in_tissue!r}]` to False.",
    )


def spot_table(
    slides: Sequence[Slide],
    features: Sequence[str],
    target: str,
    *,
    table_key: str = Key.tables.table,
    groupby: str | None = DEFAULT_GROUPBY,
    dims: Sequence[int] | None = None,
    inputs: InputOptions | None = None,
) -> SpotTable:
    """Features, targets, groups and names of the in-tissue spots of ``slides``, in one pass.

    Targets are aligned by cell-type name to the first slide's column order; slides must
    have the same cell types and feature dims (``dims`` when given, else the first slide's).
    Only spots with ``obs[Key.obs.in_tissue]`` True are taken when that column exists. The
    features are the regressor's inputs, built by ``inputs`` (``None``: :class:`InputOptions`'
    defaults, per-slide standardisation).
    """
    inputs = inputs if inputs is not None else InputOptions()
    xs, ys, groups, samples, obs_names, sample_names, cell_types = [], [], [], [], [], set(), None
    for i, slide in enumerate(slides):
        adata = get_table(slide, table_key)
        keep = in_tissue(adata)
        x = spot_inputs(adata, feature_matrix(adata, features, dims), keep, inputs)[keep]
        y = target_frame(adata, target)
        if dims is None:
            dims = [int(adata.obsm[Key.obsm.embedding(name)].shape[1]) for name in features]
        if cell_types is None:
            cell_types = list(y.columns)
        elif set(y.columns) != set(cell_types):
            raise ValueError(
                f"`obsm[{target!r}]` of slide {slide_name(adata)} has other cell types than the first slide: "
                f"missing {sorted(set(cell_types) - set(y.columns))}, extra {sorted(set(y.columns) - set(cell_types))}. "
                "Train on targets with the same columns."
            )
        xs.append(_finite(x, f"Features {[Key.obsm.embedding(n) for n in features]}", adata))
        ys.append(_finite(y[cell_types].to_numpy(dtype=np.float32)[keep], f"Target `obsm[{target!r}]`", adata))
        if groupby is not None:
            if groupby not in adata.obs:
                raise KeyError(
                    f"Slide {slide_name(adata)} has no `obs[{groupby!r}]` to group spots by; its obs columns are "
                    f"{list(adata.obs.columns)}. "
                    "Pass `groupby=` an obs column naming each spot's slide, or `groupby=None` to hold out random spots."
                )
            groups.append(adata.obs[groupby].astype(str).to_numpy()[keep])
        if Key.obs.sample in adata.obs:
            sample = adata.obs[Key.obs.sample].astype(str).to_numpy()[keep]
            sample_names.update(sample)
        else:
            sample = np.full(int(keep.sum()), str(i))
        samples.append(sample)
        obs_names.append(adata.obs_names.to_numpy()[keep])
    x = np.concatenate(xs)
    if len(x) == 0:
        raise ValueError(f"No in-tissue spots to train on: every `obs[{Key.obs.in_tissue!r}]` is False.")
    return SpotTable(
        features=x,
        target=pd.DataFrame(np.concatenate(ys), columns=cell_types),
        groups=np.concatenate(groups) if groupby is not None else None,
        samples=np.concatenate(samples),
        obs_names=np.concatenate(obs_names),
        feature_keys=list(features),
        dims=list(dims),
        sample_names=sorted(sample_names),
    )
