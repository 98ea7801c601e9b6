"""How well predicted abundances reproduce the truth's colocalisation (the paper's Table 1)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from histodecon._constants import Key


def _r_matrix(R: pd.DataFrame | Mapping, name: str) -> pd.DataFrame:
    """The cell types x cell types R of a DataFrame or of a :func:`histodecon.gr.moran_r` result."""
    if isinstance(R, Mapping) and "R" in R:
        R = R["R"]
    if not isinstance(R, pd.DataFrame):
        raise TypeError(
            f"`{name}` must be a cell types x cell types DataFrame or a `hd.gr.moran_r` result "
            f"(`adata.uns[{Key.uns.moran('<key>')!r}]`), got {type(R).__name__}."
        )
    if set(R.index) != set(R.columns) or R.index.has_duplicates:
        raise ValueError(f"`{name}` must be square with the same unique cell types as index and columns.")
    return R.loc[R.columns, R.columns].astype(np.float64)


def _row_scores(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Cosine similarity and Pearson correlation of two rows, over entries finite in both."""
    keep = np.isfinite(true) & np.isfinite(pred)
    if keep.sum() < 2:
        return np.nan, np.nan
    true, pred = true[keep], pred[keep]
    norms = np.linalg.norm(true) * np.linalg.norm(pred)
    cosine = float(true @ pred / norms) if norms > 0 else np.nan
    true, pred = true - true.mean(), pred - pred.mean()
    spread = np.linalg.norm(true) * np.linalg.norm(pred)
    pearson = float(true @ pred / spread) if spread > 0 else np.nan
    return cosine, pearson


def colocalization_similarity(
    R_true: pd.DataFrame | Mapping,
    R_pred: pd.DataFrame | Mapping,
    *,
    diagonal: bool = False,
) -> pd.DataFrame:
    """Row-wise cosine similarity and Pearson correlation of two Moran's R matrices.

    Each cell type's row of R (its colocalisation with every other type) from the predicted
    abundances is compared with the same row from the truth, as in Table 1 of Sun, Zhu & Qiu
    (2025). Cell types are aligned by name. Entries that are NaN in either matrix (cell types
    constant on the slide) are left out of the row.

    Parameters
    ----------
    R_true
        R of the true abundances: a DataFrame with cell types as index and columns, or the
        result dict of :func:`histodecon.gr.moran_r` (its ``"R"`` is used).
    R_pred
        R of the predicted abundances, the same cell types in any order.
    diagonal
        Include the self-pair ``R[a, a]``. It is the univariate Moran's I of ``a`` (spatial
        autocorrelation, not colocalisation) and is large and positive for every smooth
        abundance map, so it inflates the similarity of any two maps; by default it is left
        out and each row has ``k - 1`` entries.

    Returns
    -------
    :class:`~pandas.DataFrame`
        A DataFrame indexed by cell type (in the order of ``R_true``) with columns ``cosine`` and
        ``pearson``; ``.attrs["mean"]`` holds their means over cell types (NaN skipped), the figures
        of the paper's table.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200, counts=False)
    >>> table = sdata.tables["table"]
    >>> table.obsm["pred_abund"] = table.obsm["abund"] * 0.9
    >>> hd.gr.rbf_graph(sdata, length_scale_um=150)
    >>> hd.gr.moran_r(sdata, key="abund")
    >>> hd.gr.moran_r(sdata, key="pred_abund")
    >>> scores = hd.metrics.colocalization_similarity(table.uns["abund_moranR"], table.uns["pred_abund_moranR"])
    >>> round(float(scores.attrs["mean"]["cosine"]), 6)
    1.0
    """
    true, pred = _r_matrix(R_true, "R_true"), _r_matrix(R_pred, "R_pred")
    missing, extra = true.index.difference(pred.index), pred.index.difference(true.index)
    if len(missing) or len(extra):
        raise ValueError(
            f"The two R matrices have different cell types: only in R_true {missing.tolist()}, only in "
            f"R_pred {extra.tolist()}. Compute both with the same columns (e.g. predict the training target's)."
        )
    pred = pred.loc[true.index, true.index]
    t, p = true.to_numpy(copy=True), pred.to_numpy(copy=True)
    if not diagonal:
        np.fill_diagonal(t, np.nan)
        np.fill_diagonal(p, np.nan)
    scores = pd.DataFrame(
        [_row_scores(t[i], p[i]) for i in range(len(t))],
        index=pd.Index(true.index, name="cell_type"),
        columns=["cosine", "pearson"],
    )
    scores.attrs["mean"] = scores.mean()
    return scores
