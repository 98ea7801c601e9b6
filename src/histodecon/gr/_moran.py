"""Bivariate Moran's R of every pair of cell types at once (SpatialDM / Hist2Cell colocalisation)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._settings import logger
from histodecon._utils import cell_type_frame, check_overwrite, copy_data, get_table, write_result

from ._rbf import sample_blocks

#: Bytes allowed for each (spots x permutations x cell types) array of a batch of permutations.
_PERMUTATION_BATCH_BYTES = 64 * 2**20


@dataclass
class _Standardised:
    """Z-scored abundances of the spots used, ordered by sample, and their weight matrix."""

    Z: np.ndarray  # (n, k), z-scored within each block, population sd
    W: sparse.csr_matrix  # (n, n), block diagonal
    block_starts: np.ndarray  # first row of each block, plus n
    constant: np.ndarray  # (k,) bool: constant within some block


def _abundances(adata: AnnData, key: str) -> pd.DataFrame:
    missing = "Pass `key=` naming a spots x cell types matrix, e.g. 'abund' or 'pred_abund'."
    frame = cell_type_frame(adata, key, missing=f"No `obsm[{key!r}]` in the table. {missing}")
    matrix = frame.to_numpy(dtype=np.float64, copy=True)  # z-scored in place, never the table's values
    return pd.DataFrame(matrix, columns=frame.columns, copy=False)


def _without_missing(
    adata: AnnData, frame: pd.DataFrame, W: sparse.csr_matrix, blocks: list, key: str, nan_policy: str
) -> tuple[pd.DataFrame, sparse.csr_matrix, list, int]:
    """The spots analysed without those with missing or infinite values: refused, or omitted with the graph.

    Omitted spots leave the data and the graph (their rows and columns of ``W``) alike, as if
    the table held only the other spots. Only the spots of ``blocks`` (the samples analysed) count.
    """
    used = np.concatenate([positions for _, positions in blocks])
    finite = np.isfinite(frame.to_numpy()).all(axis=1)
    bad = used[~finite[used]]
    if not len(bad):
        return frame, W, blocks, 0
    names = adata.obs_names[bad].tolist()
    shown = f"{names[:5]}{' and more' if len(names) > 5 else ''}"
    if nan_policy == "raise":
        columns = frame.columns[~np.isfinite(frame.to_numpy()[bad]).all(axis=0)].tolist()
        raise ValueError(
            f"{len(bad)} spots have missing or infinite values in `obsm[{key!r}]` (columns {columns}), e.g. "
            f"{shown}. Pass `nan_policy='omit'` to leave them out of the analysis (and the graph), or fill them."
        )
    logger.warning(f"Omitting {len(bad)} spots with missing or infinite values in `obsm[{key!r}]`: {shown}")
    keep = np.flatnonzero(finite)
    new_position = np.full(len(frame), -1)
    new_position[keep] = np.arange(len(keep))
    blocks = [(name, new_position[positions[finite[positions]]]) for name, positions in blocks]
    return frame.iloc[keep].reset_index(drop=True), W[keep][:, keep].tocsr(), blocks, len(bad)


def _weights(adata: AnnData, connectivity_key: str) -> sparse.csr_matrix:
    if connectivity_key not in adata.obsp:
        raise KeyError(
            f"No `obsp[{connectivity_key!r}]` in the table; its obsp keys are {list(adata.obsp)}. Build the weight graph with "
            "`hd.gr.rbf_graph(data)`, or pass `connectivity_key=` naming an existing one."
        )
    W = sparse.csr_matrix(adata.obsp[connectivity_key], dtype=np.float64)
    if not W.has_canonical_format:  # sum duplicates on a copy: the table's graph stays as it is
        W = W.copy()
        W.sum_duplicates()
    return W


def _blocks(adata: AnnData, sample: str | None) -> list[tuple[str | None, np.ndarray]]:
    blocks = sample_blocks(adata)
    if sample is None:
        return blocks
    named = {name: positions for name, positions in blocks if name is not None}
    if sample not in named:
        raise KeyError(f"No sample {sample!r} in `obs[{Key.obs.sample!r}]`; known samples: {list(named)}.")
    return [(sample, named[sample])]


def _standardise(frame: pd.DataFrame, W: sparse.csr_matrix, blocks: list) -> _Standardised:
    """Z-score each column within each block and check that ``W`` never links two blocks."""
    order = np.concatenate([positions for _, positions in blocks])
    sizes = np.array([len(positions) for _, positions in blocks])
    small = [str(name) for (name, _), size in zip(blocks, sizes, strict=True) if size < 3]
    if small:
        raise ValueError(f"Samples {small} have fewer than 3 spots; Moran's R needs more. Drop them or pass `sample=`.")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    in_order = len(order) == W.shape[0] and np.array_equal(order, np.arange(len(order)))
    if not in_order:
        W = W[order][:, order].tocsr()
    block_of = np.repeat(np.arange(len(sizes)), sizes)
    coo = W.tocoo() if len(sizes) > 1 else None
    if coo is not None and np.any(block_of[coo.row] != block_of[coo.col]):
        raise ValueError(
            "The weight graph connects spots of different samples. Build it with `hd.gr.rbf_graph` "
            "(one block per sample), or analyse one sample with `sample=`."
        )
    values = frame.to_numpy()
    Z = values if in_order else values[order]
    constant = np.zeros(Z.shape[1], dtype=bool)
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        block = Z[lo:hi]  # centred and scaled in place
        scale = np.maximum(np.abs(block).max(axis=0), 1.0)
        block -= block.mean(axis=0)
        sd = np.sqrt(np.einsum("ij,ij->j", block, block) / len(block))
        flat = sd <= 1e-12 * scale
        constant |= flat
        block /= np.where(flat, 1.0, sd)
    return _Standardised(Z=Z, W=W, block_starts=starts, constant=constant)


def _sum_with_transpose(W: sparse.csr_matrix) -> float:
    """``sum(W * W^T)``; for a structurally symmetric ``W`` (an RBF graph) the dot product of aligned data.

    ``W^T`` in CSR form comes from a linear-time transposition with sorted indices; when its
    structure is ``W``'s, their data arrays hold the same entries in the same order.
    """
    Wt = W.T.tocsr()
    if W.has_sorted_indices and np.array_equal(W.indptr, Wt.indptr) and np.array_equal(W.indices, Wt.indices):
        return float(W.data @ Wt.data)
    return float(W.multiply(Wt).sum())


def _null_moments(W: sparse.csr_matrix, starts: np.ndarray) -> tuple[float, float, float, float]:
    """Analytic null of ``R = Z^T W Z / S0``: off-diagonal variance, diagonal mean and variance, S0.

    Sums the moments of the independent blocks (samples); formulas in the Notes of :func:`moran_r`.
    """
    s0 = W.sum()
    var_off = mean_diag = var_diag = 0.0
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        Wb = W if (lo, hi) == (0, W.shape[0]) else W[lo:hi, lo:hi]
        n, m = hi - lo, hi - lo - 1
        s0_b = Wb.sum()
        rows, cols = np.asarray(Wb.sum(axis=1)).ravel(), np.asarray(Wb.sum(axis=0)).ravel()
        w_w = float(Wb.data @ Wb.data)  # sum(W * W)
        w_wt = _sum_with_transpose(Wb)  # sum(W * W^T)
        var_off += (n / m) ** 2 * (w_w - (rows @ rows + cols @ cols) / n + s0_b**2 / n**2)
        # B = H W_sym H: tr(B) = tr(W) - S0 / N; tr(B^2) = sum(W_sym^2) - 2 |W_sym 1|^2 / N + S0^2 / N^2.
        sym_rows = (rows + cols) / 2
        tr_b = Wb.diagonal().sum() - s0_b / n
        tr_b2 = (w_w + w_wt) / 2 - 2 * (sym_rows @ sym_rows) / n + s0_b**2 / n**2
        mean_diag += n * tr_b / m
        var_diag += 2 * n**2 * (m * tr_b2 - tr_b**2) / (m**2 * (m + 2))
    return var_off / s0**2, mean_diag / s0, var_diag / s0**2, s0


def _permutation_counts(std: _Standardised, R: np.ndarray, n_perms: int, seed: int) -> np.ndarray:
    """How often a permuted R reaches the observed one, per pair (symmetric).

    Rows are shuffled within each sample. For a pair ``(a, b)``, ``a != b``, only column ``b`` is
    shuffled (the null of independent columns, as the analytic z-score); the diagonal shuffles
    the column on both sides (the null of univariate Moran's I). Permutations run in batches
    of about :data:`_PERMUTATION_BATCH_BYTES` per array, so memory does not grow with ``n_perms``.
    """
    Z, W = std.Z, std.W
    n, k = Z.shape
    s0 = W.sum()
    rng = np.random.default_rng(seed)
    block_of = np.repeat(np.arange(len(std.block_starts) - 1), np.diff(std.block_starts))
    batch = max(1, _PERMUTATION_BATCH_BYTES // (8 * n * k))
    counts = np.zeros((k, k))
    done = 0
    while done < n_perms:
        size = min(batch, n_perms - done)
        # Sorting block index + U[0, 1) keys shuffles rows within each (contiguous) block.
        perms = np.argsort(block_of + rng.random((size, n)), axis=1)
        Zp = Z[perms.T].reshape(n, size * k)
        WZp = np.asarray(W @ Zp)
        null = (Z.T @ WZp).reshape(k, size, k).transpose(1, 0, 2) / s0
        diagonal = (Zp * WZp).sum(axis=0).reshape(size, k) / s0
        null[:, np.arange(k), np.arange(k)] = diagonal
        counts += (null >= R).sum(axis=0)
        done += size
    upper = np.triu(counts)
    return upper + np.triu(counts, 1).T


@inject_docs
def moran_r(
    data: SpatialData | AnnData,
    *,
    key: str = Key.obsm.pred_abund,
    connectivity_key: str = Key.obsp.connectivities,
    sample: str | None = None,
    n_perms: int | None = None,
    seed: int = 0,
    nan_policy: Literal["raise", "omit"] = "raise",
    table_key: str = Key.tables.table,
    key_added: str | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> SpatialData | AnnData | None:
    """Bivariate Moran's R of every pair of cell types: their spatial colocalisation.

    With the columns of ``obsm[key]`` z-scored (population sd) into ``Z`` and the spatial
    weights ``W``, ``R = Z^T W Z / sum(W)`` for all pairs in one sparse product, as SpatialDM's
    ``Moran_R`` (used by Hist2Cell) computes pair by pair. ``R[a, b] > 0`` means cell types
    ``a`` and ``b`` are abundant in the same neighbourhoods; the diagonal is the univariate
    Moran's I of each type. For the symmetric graph of :func:`rbf_graph`, whose weights sum
    to ``n``, this equals esda's ``Moran_BV`` with ``transformation="o"``.

    Analytic z-scores use the null of values independent of location under normality (see
    Notes): SpatialDM's variance for pairs, the exact moments of univariate Moran's I on the
    diagonal. P-values are one-sided (``R`` greater than expected: colocalisation), as in
    SpatialDM; ``1 - pval`` tests avoidance.

    A table with several samples is analysed pooled unless ``sample=`` picks one: each sample
    is z-scored on its own and the graph must not link samples (as :func:`rbf_graph` builds
    it), so the pooled R is the average of the per-sample R weighted by each sample's share of
    ``sum(W)`` (its spot count, for :func:`rbf_graph`), and differences between samples' mean
    abundances create no colocalisation.

    Parameters
    ----------
    {{data}}
    key
        ``obsm`` key of the spots x cell types abundances (a DataFrame names the cell types).
    connectivity_key
        ``obsp`` key of the spatial weights.
    sample
        Analyse only the spots of this sample (``obs['sample']``); ``None`` pools all samples.
    n_perms
        Number of permutations for permutation p-values ``(1 + #{R_perm >= R}) / (1 + n_perms)``;
        rows are shuffled within samples, one column of a pair (both for the diagonal).
        ``None`` skips them.
    seed
        Seed of the permutations.
    nan_policy
        Spots with a missing or infinite abundance: ``"raise"`` an error naming them, or
        ``"omit"`` them (logged), as scipy's option of that name: they leave the analysis and the
        graph, so the result is that of a table without them.
    {{table_key}}
    key_added
        ``uns`` key of the result; default ``f'{key}_moranR'``.
    {{overwrite}}
    {{copy}}

    Returns
    -------
    :class:`~spatialdata.SpatialData`, :class:`~anndata.AnnData` or ``None``
        ``None``, or the modified copy of ``data`` with ``copy=True``. Writes
        ``uns[key_added] = {"R", "z", "pval", ("pval_perm"), "params"}``: cell types x cell types
        DataFrames and the parameters. Cell types that are constant (within some sample) get NaN
        rows and columns, with a warning.

    Notes
    -----
    Under the null, a column z-scored within a sample of ``N`` spots is uniform on the sphere
    of radius ``sqrt(N)`` orthogonal to the ones vector (covariance ``N / (N - 1) H``,
    ``H = I - 11^T / N``). With ``S0 = sum(W)`` and the sums over samples ``s``:

    - pairs (two independent columns): ``E[R] = 0`` and
      ``Var(R) = sum_s (N_s / (N_s - 1))^2 tr(H W_s H W_s^T) / S0^2``, where
      ``tr(H W H W^T) = sum(W * W) - (|W 1|^2 + |W^T 1|^2) / N + S0_s^2 / N^2``. For one
      symmetric block this is SpatialDM's ``Moran_R_std``,
      ``[N^2 sum(W * W^T) - 2 N (W^T 1).(W 1) + S0^2] / (S0^2 (N - 1)^2)`` (SpatialDM's own
      W sums to ``N``).
    - diagonal (univariate Moran's I), with ``B = H (W + W^T) / 2 H`` and ``m = N - 1``, the
      moments of a quadratic form in a uniform unit vector:
      ``E[I] = sum_s N_s tr(B_s) / (m_s S0)`` and
      ``Var(I) = sum_s 2 N_s^2 (m_s tr(B_s^2) - tr(B_s)^2) / (m_s^2 (m_s + 2) S0^2)``. With a
      zero diagonal this is the classical normality result (``E[I] = -1 / (N - 1)``, esda's
      ``Moran.z_norm``); the self-weights of :func:`rbf_graph` raise ``E[I]`` above it.

    Both nulls treat spots as exchangeable. The analytic one assumes both maps of a pair are
    spatially random, the permutation one shuffles one map and keeps the other's pattern;
    they agree for spatially random maps. Abundance maps are smooth, and for two smooth maps
    the analytic null is the narrower, so its p-values are optimistic: compare colocalisation
    by ``R`` and use p-values as a screen.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200, counts=False)
    >>> hd.gr.rbf_graph(sdata, length_scale_um=150)
    >>> hd.gr.moran_r(sdata, key="abund")
    >>> sdata.tables["table"].uns["abund_moranR"]["R"].shape
    (5, 5)
    """
    adata = get_table(data, table_key)
    key_added = key_added or Key.uns.moran(key)
    check_overwrite(adata.uns, key_added, "adata.uns", overwrite)
    if n_perms is not None and (isinstance(n_perms, bool) or not isinstance(n_perms, int | np.integer) or n_perms < 1):
        raise ValueError(f"`n_perms` must be a positive integer or None, got {n_perms!r}.")
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"`nan_policy` must be 'raise' or 'omit', got {nan_policy!r}.")
    frame, W, blocks, n_omitted = _without_missing(
        adata, _abundances(adata, key), _weights(adata, connectivity_key), _blocks(adata, sample), key, nan_policy
    )
    std = _standardise(frame, W, blocks)
    if std.W.sum() <= 0:
        raise ValueError(f"`obsp[{connectivity_key!r}]` has no positive weights among the spots analysed.")

    var_off, mean_diag, var_diag, s0 = _null_moments(std.W, std.block_starts)
    R = std.Z.T @ np.asarray(std.W @ std.Z) / s0
    k = R.shape[0]
    mean = np.where(np.eye(k, dtype=bool), mean_diag, 0.0)
    sd = np.sqrt(np.where(np.eye(k, dtype=bool), var_diag, var_off))
    z = (R - mean) / sd
    result = {"R": R, "z": z, "pval": stats.norm.sf(z)}
    if n_perms is not None:
        result["pval_perm"] = (1 + _permutation_counts(std, R, n_perms, seed)) / (1 + n_perms)

    if std.constant.any():
        names = frame.columns[std.constant].tolist()
        warnings.warn(
            f"Cell types {names} are constant (within some sample) in `obsm[{key!r}]`; their Moran's R "
            "is undefined and set to NaN.",
            UserWarning,
            stacklevel=2,
        )
        for values in result.values():
            values[std.constant, :] = np.nan
            values[:, std.constant] = np.nan

    names = pd.Index(frame.columns, name="cell_type")
    # The columns carry no name: h5ad and zarr keep an index name but drop a columns name.
    output = {name: pd.DataFrame(values, index=names, columns=names.rename(None)) for name, values in result.items()}
    output["params"] = {
        "key": key,
        "connectivity_key": connectivity_key,
        "sample": sample,
        "n_spots": int(std.Z.shape[0]),
        "n_omitted": n_omitted,
        "n_perms": n_perms,
        "seed": seed,
        "alternative": "greater",
    }
    output["params"] = {name: value for name, value in output["params"].items() if value is not None}
    if copy:
        data = copy_data(data)
        adata = get_table(data, table_key)
    write_result(adata, "uns", key_added, output, overwrite=overwrite)
    return data if copy else None
