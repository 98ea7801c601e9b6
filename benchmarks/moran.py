"""Moran's R of all cell-type pairs: histodecon against a 15-line scipy reference and esda's Moran_BV.

Random smooth abundance fields on a Visium-like hexagonal grid (100 um pitch): the RBF graph
build and the full k x k matrix (analytic z-scores and p-values included), timed side by side
in this process with the shortest scipy route to the same numbers (``reference_moran``: a
``cKDTree.sparse_distance_matrix`` truncated at the radius, the kernel in place, one sparse
product), alternating the two, median of ``--repeats``; and esda's Moran_BV on the same
weights (``transformation="o"``, which equals our R for a graph summing to n), timed on a
sample of pairs and extrapolated to all k^2 ordered pairs. BLAS runs one thread during the side
by side, so that a busy machine's oversubscribed threads time neither side. A Visium HD-like
run (8 um bins) times the graph and R at 1M spots. Run with ``--quick`` for a small size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from _common import peak_rss_mb, write_results
from anndata import AnnData
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

import histodecon as hd
from histodecon.gr._rbf import truncation_radius


def hex_grid(n_spots: int, pitch_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) of about ``n_spots`` on a square patch of a hexagonal grid, and their (row, col)."""
    side = int(np.ceil(np.sqrt(n_spots)))
    rows, cols = np.divmod(np.arange(side * side), side)
    xy = np.stack([(cols + 0.5 * (rows % 2)) * pitch_px, rows * pitch_px * np.sqrt(3) / 2], axis=1)
    return xy[:n_spots], np.stack([rows, cols], axis=1)[:n_spots]


def smooth_abundances(grid_rc: np.ndarray, k: int, seed: int, sigma: float = 4.0) -> np.ndarray:
    """``k`` positive fields correlated over about ``sigma`` spots, sampled at the spots."""
    rng = np.random.default_rng(seed)
    shape = tuple(grid_rc.max(axis=0) + 1)
    out = np.empty((len(grid_rc), k))
    for j in range(k):
        field = gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
        out[:, j] = np.exp(field[grid_rc[:, 0], grid_rc[:, 1]] / field.std())
    return out


def slide(n_spots: int, k: int, pitch_um: float, mpp: float = 1.0, seed: int = 0) -> AnnData:
    xy, rc = hex_grid(n_spots, pitch_um / mpp)
    adata = AnnData(np.zeros((len(xy), 0), dtype=np.float32))
    adata.obs["sample"] = pd.Categorical(["bench"] * len(xy))
    adata.obsm["spatial"] = xy
    adata.uns["histodecon"] = {"samples": {"bench": {"mpp": mpp, "spot_diameter_px": 0.55 * pitch_um / mpp}}}
    names = [f"type{j:02d}" for j in range(k)]
    adata.obsm["abund"] = pd.DataFrame(smooth_abundances(rc, k, seed), index=adata.obs_names, columns=names)
    return adata


def timed(func, *args, **kwargs) -> float:
    start = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - start


def reference_moran(xy: np.ndarray, X: np.ndarray, length_scale_px: float, cutoff: float = 0.2):
    """The shortest scipy route to histodecon's weights and R: the yardstick ``rbf_graph`` + ``moran_r`` must meet."""
    tree = cKDTree(xy)
    W = tree.sparse_distance_matrix(tree, truncation_radius(length_scale_px, cutoff), output_type="coo_matrix")
    W.data = np.exp(-(W.data**2) / (2.0 * length_scale_px**2))
    W = W.tocsr()
    W *= len(xy) / W.sum()
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    return W, Z.T @ (W @ Z) / W.sum()


def side_by_side(adata: AnnData, length_scale_px: float, repeats: int) -> dict:
    """Median times of the reference and of ``hd.gr.rbf_graph`` + ``hd.gr.moran_r``, run alternately."""
    xy, X = adata.obsm["spatial"], adata.obsm["abund"].to_numpy()
    mpp = adata.uns["histodecon"]["samples"]["bench"]["mpp"]  # through the um/px, as users call it

    def ours() -> tuple[float, float]:
        start = time.perf_counter()
        hd.gr.rbf_graph(adata, length_scale_um=length_scale_px * mpp, overwrite=True)
        middle = time.perf_counter()
        hd.gr.moran_r(adata, key="abund", overwrite=True)
        return middle - start, time.perf_counter() - middle

    reference_s, graph_s, moran_s = [], [], []
    with threadpool_limits(1, user_api="blas"):
        reference_moran(xy, X, length_scale_px), ours()  # warm-up
        for _ in range(repeats):
            reference_s.append(timed(reference_moran, xy, X, length_scale_px))
            graph, moran = ours()
            graph_s.append(graph)
            moran_s.append(moran)
    W, R = reference_moran(xy, X, length_scale_px)
    ours_s = np.add(graph_s, moran_s)
    return {
        "repeats": repeats,
        "blas_threads": 1,
        "reference_s_median": float(np.median(reference_s)),
        "ours_s_median": float(np.median(ours_s)),
        "ours_graph_s_median": float(np.median(graph_s)),
        "ours_moran_r_s_median": float(np.median(moran_s)),
        "ratio_ours_to_reference": float(np.median(ours_s) / np.median(reference_s)),
        "ratio_per_repeat": (ours_s / np.array(reference_s)).round(3).tolist(),
        "max_abs_weight_difference": float(abs(adata.obsp["rbf_connectivities"] - W).max()),
        "max_abs_R_difference": float(np.abs(adata.uns["abund_moranR"]["R"].to_numpy() - R).max()),
    }


def esda_comparison(adata: AnnData, n_pairs: int, seed: int = 0) -> dict:
    import esda
    import libpysal

    start = time.perf_counter()
    w = libpysal.weights.W.from_sparse(adata.obsp["rbf_connectivities"])
    convert_s = time.perf_counter() - start
    X = adata.obsm["abund"].to_numpy()
    R = adata.uns["abund_moranR"]["R"].to_numpy()
    k = X.shape[1]
    pairs = np.random.default_rng(seed).choice(k * k, size=n_pairs, replace=False)
    start = time.perf_counter()
    worst = 0.0
    for a, b in zip(*np.divmod(pairs, k), strict=True):
        bv = esda.Moran_BV(X[:, a], X[:, b], w, transformation="o", permutations=0)
        worst = max(worst, abs(bv.I - R[a, b]))
    per_pair = (time.perf_counter() - start) / n_pairs
    return {
        "esda_pairs_timed": n_pairs,
        "esda_s_per_pair": per_pair,
        "esda_all_pairs_s_extrapolated": per_pair * k * k,
        "esda_weights_conversion_s": convert_s,
        "max_abs_difference_to_esda": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3k spots, no 1M run")
    parser.add_argument("--no-hd", action="store_true", help="skip the 1M-spot Visium HD-like run")
    parser.add_argument("--no-esda", action="store_true", help="skip esda's Moran_BV and the permutations")
    parser.add_argument("--repeats", type=int, default=9, help="side-by-side repeats (median)")
    args = parser.parse_args()
    hd.settings.verbosity = 1
    n_spots, k = (3_000, 39) if args.quick else (30_000, 39)

    adata = slide(n_spots, k, pitch_um=100.0)
    graph_s = timed(hd.gr.rbf_graph, adata)  # default 240 um length scale, cutoff 0.2
    W = adata.obsp["rbf_connectivities"]
    moran_s = min(timed(hd.gr.moran_r, adata, key="abund", overwrite=True) for _ in range(3))
    figures = {
        "visium": {
            "n_spots": adata.n_obs,
            "n_types": k,
            "length_scale_um": 240.0,
            "neighbours_per_spot": W.nnz / adata.n_obs,
            "graph_build_s": graph_s,
            "moran_r_full_matrix_s": moran_s,
            "graph_plus_moran_s": graph_s + moran_s,
        }
    }
    v = figures["visium"]
    v["vs_reference"] = side_by_side(adata, length_scale_px=240.0, repeats=args.repeats)  # mpp 1
    if not args.no_esda:
        v["moran_r_with_100_permutations_s"] = timed(hd.gr.moran_r, adata, key="abund", n_perms=100, key_added="perm")
        v.update(esda_comparison(adata, n_pairs=5 if args.quick else 8))
        v["speedup_vs_esda"] = v["esda_all_pairs_s_extrapolated"] / v["moran_r_full_matrix_s"]

    if not (args.quick or args.no_hd):
        del adata, W
        big = slide(1_000_000, k, pitch_um=8.0, mpp=0.5)  # Visium HD 8 um bins
        graph_s = timed(hd.gr.rbf_graph, big, length_scale_um=16.0)
        moran_s = timed(hd.gr.moran_r, big, key="abund")
        figures["visium_hd_1M"] = {
            "n_spots": big.n_obs,
            "n_types": k,
            "length_scale_um": 16.0,
            "neighbours_per_spot": big.obsp["rbf_connectivities"].nnz / big.n_obs,
            "graph_build_s": graph_s,
            "moran_r_full_matrix_s": moran_s,
            "graph_plus_moran_s": graph_s + moran_s,
            "peak_rss_mb_after": peak_rss_mb(),
        }
    figures["peak_rss_mb"] = peak_rss_mb()
    write_results("moran_quick" if args.quick else "moran", figures)


if __name__ == "__main__":
    main()
