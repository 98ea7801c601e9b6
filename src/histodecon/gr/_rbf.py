"""Radial-basis-function spatial weight graph, as used by SpatialDM and Hist2Cell for Moran's R."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from scipy import sparse
from scipy.spatial import cKDTree
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._geometry import sample_geometry
from histodecon._utils import (
    MIN_SPOT_SPACING_UM,
    check_centres,
    check_overwrite,
    check_positive,
    check_samples_named,
    check_spot_spacing,
    copy_data,
    get_table,
    write_result,
)

#: Default RBF length scale: 1.2 spot pitches of legacy ST (200 um), SpatialDM's setting for ST data.
DEFAULT_LENGTH_SCALE_UM = 240.0
#: Default truncation: weights below 0.2 are dropped (SpatialDM and Hist2Cell).
DEFAULT_CUTOFF = 0.2
#: Spots whose nearest neighbours screen the spacing before the graph is built.
_SPACING_SCREEN_SPOTS = 1000


def truncation_radius(length_scale: float, cutoff: float) -> float:
    """Distance at which ``exp(-d^2 / 2 l^2)`` falls to ``cutoff``: ``l * sqrt(-2 ln cutoff)``."""
    return length_scale * np.sqrt(-2.0 * np.log(cutoff))


def sample_blocks(adata: AnnData) -> list[tuple[str | None, np.ndarray]]:
    """``(sample, positions)`` of each sample with spots; one unnamed block without ``obs[Key.obs.sample]``."""
    if Key.obs.sample not in adata.obs:
        return [(None, np.arange(adata.n_obs))]
    check_samples_named(adata, "the spatial graph")
    samples = adata.obs[Key.obs.sample].astype("category")
    codes = samples.cat.codes.to_numpy()
    blocks = [(str(name), np.flatnonzero(codes == i)) for i, name in enumerate(samples.cat.categories)]
    return [(name, rows) for name, rows in blocks if len(rows)]  # unused categories hold no spots


def _mpp(data: SpatialData | AnnData, table_key: str, sample: str | None) -> float:
    """The um/px of a sample (from the SpatialData's elements, or a table's cache), or an error saying how to set it."""
    try:
        return sample_geometry(data, sample, table_key=table_key).mpp
    except (KeyError, ValueError) as error:
        raise type(error)(
            f"{error.args[0]} The length scale in micrometres needs each sample's um/px: read the slide "
            "with `hd.io`, or give the length scale in pixels with `length_scale_px=`."
        ) from None


def _block_pairs(tree: cKDTree, radius_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of the spots of one sample's tree within ``radius_px``, and their distances."""
    pairs = tree.query_pairs(radius_px, output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    x, y = tree.data[:, 0].copy(), tree.data[:, 1].copy()
    dx, dy = x[i] - x[j], y[i] - y[j]
    return i, j, np.sqrt(dx * dx + dy * dy)


def _screen_spacing(tree: cKDTree, mpp: float, what: str) -> None:
    """Refuse badly scaled coordinates before they make the graph huge: a cheap screen of the spacing.

    Badly scaled coordinates (array indices, coordinates in [0, 1], a wrong um/px) put every spot
    too close to its neighbours. The median nearest-neighbour distance of an even subsample of
    :data:`_SPACING_SCREEN_SPOTS` spots shows it; only when that comes near the smallest allowed
    spacing does :func:`check_spot_spacing` measure all spots, and raise.
    """
    spots = tree.data[:: max(1, tree.n // _SPACING_SCREEN_SPOTS)]
    if tree.n > 1 and np.median(tree.query(spots, k=2)[0][:, 1]) < 2 * MIN_SPOT_SPACING_UM / mpp:
        check_spot_spacing(tree.data, mpp, what)


def _nearest_px(distances: sparse.csr_matrix) -> np.ndarray:
    """Each spot's distance to its nearest neighbour in the graph; ``inf`` where it has none."""
    nearest = np.full(distances.shape[0], np.inf)
    linked = np.diff(distances.indptr) > 0
    if linked.any():
        nearest[linked] = np.minimum.reduceat(distances.data, distances.indptr[:-1][linked])
    return nearest


def _check_spacing(nearest_px: np.ndarray, tree: cKDTree, mpp: float, radius_px: float, what: str) -> None:
    """:func:`check_spot_spacing` of one sample from its spots' nearest-neighbour distances in the graph.

    The graph holds each nearest-neighbour distance up to ``radius_px``; the others, unknown,
    exceed it, which cannot move the median below the smallest allowed spacing when that lies
    within the radius. Only a median below it (or a radius too small to tell) runs the full
    check, which raises.
    """
    smallest_px = MIN_SPOT_SPACING_UM / mpp
    if tree.n > 1 and (smallest_px >= radius_px or np.median(nearest_px) < smallest_px):
        check_spot_spacing(tree.data, mpp, what)


def _index_dtype(size: int) -> type:
    """The integer type scipy uses for indices up to ``size``: int32 where it fits."""
    return np.int32 if size < np.iinfo(np.int32).max else np.int64


def _symmetric_csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> sparse.csr_matrix:
    """The canonical CSR matrix holding ``values[e]`` at ``(rows[e], cols[e])``, for symmetric entries.

    The entries must describe a symmetric matrix without duplicates. Two linear-time transpositions in
    scipy's C code replace the comparison sort of :meth:`~scipy.sparse.csr_matrix.sum_duplicates`:
    transposing a matrix with one entry per row (entry ``e`` in column ``rows[e]``) groups the entries
    by row, and transposing the grouped matrix, equal to its transpose, sorts each row's columns.
    """
    m = len(rows)
    one_per_row = sparse.csr_matrix((values, rows, np.arange(m + 1, dtype=rows.dtype)), shape=(m, n))
    by_row = one_per_row.T.tocsr()
    grouped = sparse.csr_matrix((by_row.data, cols[by_row.indices], by_row.indptr), shape=(n, n))
    return grouped.T.tocsr()


def _graph(
    trees: dict[str | None, cKDTree], blocks: list[tuple[str | None, np.ndarray]], scales: dict, cutoff: float
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Weights (self-pairs included, each block scaled to sum to its size) and distances (no self-pairs), CSR.

    The pairs of all blocks are put in CSR order at once, carrying their distances; the weights
    are computed on that structure, and the distances are it less its diagonal, which every row
    holds exactly once.
    """
    n = sum(len(positions) for _, positions in blocks)
    rows, cols, dists = [], [], []
    for sample, positions in blocks:
        i, j, dist = _block_pairs(trees[sample], truncation_radius(scales[sample], cutoff))
        if len(blocks) > 1:  # from the sample's spots to the table's
            i, j = positions[i], positions[j]
        rows += [i, j, positions]
        cols += [j, i, positions]
        dists += [dist, dist, np.zeros(len(positions))]
    dtype = _index_dtype(sum(len(d) for d in dists))
    rows, cols = (np.concatenate(parts, dtype=dtype) for parts in (rows, cols))
    graph = _symmetric_csr(rows, cols, np.concatenate(dists), n)
    del rows, cols
    indptr, indices, dist = graph.indptr, graph.indices, graph.data
    row_of = np.repeat(np.arange(n, dtype=indices.dtype), np.diff(indptr))
    if len(blocks) == 1:
        weights = np.exp(-(dist**2) / (2.0 * scales[blocks[0][0]] ** 2))
        # Each sample's weights sum to its number of spots, so pooled Moran's R weighs samples by size.
        weights *= n / weights.sum()
    else:
        block_of = np.empty(n, dtype=np.intp)
        for b, (_, positions) in enumerate(blocks):
            block_of[positions] = b
        entry_block = block_of[row_of]
        lengths = np.array([scales[sample] for sample, _ in blocks])
        weights = np.exp(-(dist**2) / (2.0 * lengths[entry_block] ** 2))
        sizes = np.array([len(positions) for _, positions in blocks])
        weights *= (sizes / np.bincount(entry_block, weights=weights, minlength=len(blocks)))[entry_block]
    connectivities = sparse.csr_matrix((weights, indices, indptr), shape=(n, n))
    off_diagonal = indices != row_of
    no_diagonal = indptr - np.arange(n + 1, dtype=indptr.dtype)
    distances = sparse.csr_matrix((dist[off_diagonal], indices[off_diagonal], no_diagonal), shape=(n, n))
    for matrix in (connectivities, distances):
        matrix.has_canonical_format = True
    return connectivities, distances


@inject_docs
def rbf_graph(
    data: SpatialData | AnnData,
    *,
    length_scale_um: float = DEFAULT_LENGTH_SCALE_UM,
    length_scale_px: float | None = None,
    cutoff: float = DEFAULT_CUTOFF,
    table_key: str = Key.tables.table,
    key_added: str = Key.obsp.rbf,
    overwrite: bool = False,
    copy: bool = False,
) -> SpatialData | AnnData | None:
    """Build the radial-basis-function spatial weight graph of the spots.

    The weight of spots ``i`` and ``j`` at distance ``d`` is ``exp(-d^2 / 2 l^2)``, kept where it
    is at least ``cutoff``, i.e. within the radius ``l * sqrt(-2 ln cutoff)`` (so the graph is
    symmetric). Every spot is its own neighbour with weight 1 (``exp(0)``), as in SpatialDM's
    ``weight_matrix(..., single_cell=False)`` that Hist2Cell uses for spot data: two cell types
    sharing a spot are colocalised. Spots of different samples are never connected, and the
    weights of each sample are scaled to sum to its number of spots (SpatialDM scales to ``n``),
    so the whole matrix sums to ``n_obs``. This is the weight matrix of :func:`moran_r`.

    The default length scale, 240 um with ``cutoff=0.2``, is SpatialDM's setting for legacy
    ST data (``l = 1.2`` spot pitches of 200 um, ``cutoff = 0.2``; Hist2Cell uses the same
    cutoff): the neighbourhood reaches 430 um, two ST pitches or four Visium pitches (100 um),
    so the statistic measures colocalisation at the same physical scale on both. For Visium HD
    bins, choose a length scale of a few bin sizes: the number of neighbours grows with
    ``(l / pitch)^2``.

    Parameters
    ----------
    {{data}}
    length_scale_um
        RBF length scale ``l`` in micrometres, converted to pixels with each sample's um/px
        (from a SpatialData's ``Scale`` to ``f"{sample}_um"``; for a bare table, its cache
        ``uns['histodecon']['samples'][sample]['mpp']``).
    length_scale_px
        RBF length scale in pixels of ``obsm['spatial']``; when given, ``length_scale_um`` is
        ignored and no um/px is needed.
    cutoff
        Smallest weight kept, in ``(0, 1)``.
    {{table_key}}
    key_added
        Writes ``obsp[f'{key_added}_connectivities']`` (weights, CSR),
        ``obsp[f'{key_added}_distances']`` (pixel distances of the connected pairs, self-pairs
        not stored) and ``uns[f'{key_added}_neighbors']`` (keys and parameters), like
        :func:`squidpy.gr.spatial_neighbors`.
    {{overwrite}}
    {{copy}}

    Returns
    -------
    ``None``, or the modified copy of ``data`` with ``copy=True``.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200, counts=False)
    >>> hd.gr.rbf_graph(sdata, length_scale_um=150)
    >>> round(float(sdata.tables["table"].obsp["rbf_connectivities"].sum()), 6)
    200.0
    """
    if isinstance(cutoff, bool) or not isinstance(cutoff, int | float | np.number) or not 0 < cutoff < 1:
        raise ValueError(f"`cutoff` must lie strictly between 0 and 1, got {cutoff!r}; SpatialDM uses 0.2.")
    if length_scale_px is not None:
        check_positive(length_scale_px, "length_scale_px")
    else:
        check_positive(length_scale_um, "length_scale_um")
    adata = get_table(data, table_key)
    if Key.obsm.spatial not in adata.obsm:
        raise KeyError(
            f"The table has no `obsm[{Key.obsm.spatial!r}]` spot coordinates (its obsm keys are {list(adata.obsm)}); "
            "read the slide with `hd.io` first."
        )
    if adata.n_obs == 0:
        raise ValueError("The table has no spots; a spatial graph needs at least one.")
    blocks = sample_blocks(adata)  # spots without a sample are refused first: they have no position either
    coords = check_centres(adata.obsm[Key.obsm.spatial], adata.obs_names, f"`obsm[{Key.obsm.spatial!r}]`")
    trees = {sample: cKDTree(coords[positions]) for sample, positions in blocks}
    mpps = {sample: None if length_scale_px is not None else _mpp(data, table_key, sample) for sample, _ in blocks}
    scales = {sample: float(length_scale_px) if mpp is None else length_scale_um / mpp for sample, mpp in mpps.items()}
    for sample, mpp in mpps.items():
        if mpp is not None:
            _screen_spacing(trees[sample], mpp, f"sample {sample!r}")
    (conn_key, dist_key), params_key = Key.obsp.graph(key_added), Key.uns.graph(key_added)
    check_overwrite(adata.obsp, conn_key, "adata.obsp", overwrite)
    check_overwrite(adata.obsp, dist_key, "adata.obsp", overwrite)
    check_overwrite(adata.uns, params_key, "adata.uns", overwrite)

    connectivities, distances = _graph(trees, blocks, scales, cutoff)
    if length_scale_px is None:
        nearest_px = _nearest_px(distances)
        for sample, positions in blocks:
            radius_px = truncation_radius(scales[sample], cutoff)
            _check_spacing(nearest_px[positions], trees[sample], mpps[sample], radius_px, f"sample {sample!r}")
    if copy:
        data = copy_data(data)
        adata = get_table(data, table_key)
    write_result(adata, "obsp", conn_key, connectivities, overwrite=overwrite)
    write_result(adata, "obsp", dist_key, distances, overwrite=overwrite)
    scales = {"all" if sample is None else sample: px for sample, px in scales.items()}
    params = {
        "length_scale_um": None if length_scale_px is not None else float(length_scale_um),
        "length_scale_px": scales,
        "cutoff": float(cutoff),
        "radius_px": {name: float(truncation_radius(px, cutoff)) for name, px in scales.items()},
        "self_weight": True,
        "method": "rbf",
    }
    params = {key: value for key, value in params.items() if value is not None}
    write_result(
        adata,
        "uns",
        params_key,
        {"connectivities_key": conn_key, "distances_key": dist_key, "params": params},
        overwrite=overwrite,
    )
    return data if copy else None
