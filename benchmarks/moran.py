"""Moran's R of all cell-type pairs: histodecon's one sparse product vs an esda Moran_BV loop.

Random smooth abundance fields on a Visium-like hexagonal grid (100 um pitch): the RBF graph
build, the full k x k matrix (analytic z-scores and p-values included) and esda's Moran_BV
on the same weights (``transformation="o"``, which equals our R for a graph summing to n).
esda is timed on a sample of pairs and extrapolated to all k^2 ordered pairs. A Visium HD-like
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

import histodecon as hd


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
    adata.uns["histodecon"] = {"samples": {"bench": {"mpp": mpp}}}
    names = [f"type{j:02d}" for j in range(k)]
    adata.obsm["abund"] = pd.DataFrame(smooth_abundances(rc, k, seed), index=adata.obs_names, columns=names)
    return adata


def timed(func, *args, **kwargs) -> float:
    start = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - start


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
    args = parser.parse_args()
    hd.settings.verbosity = 1
    n_spots, k = (3_000, 39) if args.quick else (30_000, 39)

    adata = slide(n_spots, k, pitch_um=100.0)
    graph_s = timed(hd.gr.rbf_graph, adata)  # default 240 um length scale, cutoff 0.2
    W = adata.obsp["rbf_connectivities"]
    moran_s = min(timed(hd.gr.moran_r, adata, key="abund", overwrite=True) for _ in range(3))
    perms_s = timed(hd.gr.moran_r, adata, key="abund", n_perms=100, key_added="perm")
    figures = {
        "visium": {
            "n_spots": adata.n_obs,
            "n_types": k,
            "length_scale_um": 240.0,
            "neighbours_per_spot": W.nnz / adata.n_obs,
            "graph_build_s": graph_s,
            "moran_r_full_matrix_s": moran_s,
            "graph_plus_moran_s": graph_s + moran_s,
            "moran_r_with_100_permutations_s": perms_s,
        }
    }
    figures["visium"].update(esda_comparison(adata, n_pairs=5 if args.quick else 8))
    v = figures["visium"]
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
        }
    figures["peak_rss_mb"] = peak_rss_mb()
    write_results("moran_quick" if args.quick else "moran", figures)


if __name__ == "__main__":
    main()
