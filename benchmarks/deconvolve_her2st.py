"""cell2location on her2st C2 + C3 with the Wu et al. CID4465 reference, against the stereoscope proportions.

Run from the project root: ``.venv/bin/python benchmarks/deconvolve_her2st.py`` (``--quick`` for
a short smoke run). The reference model trains for 250 epochs and the spatial model for 3000
(cell2location recommends 30000; on 367 spots the ELBO flattens well before). Abundances are
row-normalised into proportions and correlated per cell type, across the spots of both sections,
with the stereoscope proportions the her2st authors published (``obsm['proportions']``).
Types are matched by name; the reference's Cancer + Normal Epithelial are summed for
stereoscope's Epithelial, and its Plasmablasts stand for Plasma Cells.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
from _common import default_data_dir, peak_rss_mb, write_results

import histodecon as hd

DATA_DIR = default_data_dir()
#: Reference type(s) summed into each stereoscope type.
MATCH = {
    "B-cells": ["B-cells"],
    "CAFs": ["CAFs"],
    "Endothelial": ["Endothelial"],
    "Epithelial": ["Cancer Epithelial", "Normal Epithelial"],
    "Myeloid": ["Myeloid"],
    "Plasma Cells": ["Plasmablasts"],
    "PVL": ["PVL"],
    "T-cells": ["T-cells"],
}


def main(quick: bool) -> None:
    hd.settings.progress = False
    reference_epochs, spatial_epochs, num_samples = (20, 200, 100) if quick else (250, 3000, 200)
    slides = [hd.datasets.her2st(section, data_dir=DATA_DIR / "her2st") for section in ("C2", "C3")]
    reference = ad.read_h5ad(DATA_DIR / "reference" / "wu2021_CID4465.h5ad")
    start = time.perf_counter()
    signatures = hd.tl.reference_signatures(
        reference, labels_key="celltype_major", max_epochs=reference_epochs, num_samples=num_samples
    )
    reference_s = time.perf_counter() - start
    start = time.perf_counter()
    hd.tl.deconvolve(slides, signatures, max_epochs=spatial_epochs, num_samples=num_samples)
    spatial_s = time.perf_counter() - start

    tables = [s.tables["table"] for s in slides]
    abundance = pd.concat([t.obsm["abund"] for t in tables])
    stereoscope = pd.concat([t.obsm["proportions"] for t in tables])
    proportions = abundance.div(abundance.sum(axis=1), axis=0)
    matched = pd.DataFrame({name: proportions[parts].sum(axis=1) for name, parts in MATCH.items()})
    pearson = {name: float(np.corrcoef(matched[name], stereoscope[name])[0, 1]) for name in MATCH}
    record = tables[0].uns["histodecon"]["deconvolve"]["abund"]
    write_results(
        "deconvolve_her2st",
        {
            "quick": quick,
            "sections": ["C2", "C3"],
            "n_spots": int(abundance.shape[0]),
            "n_genes": record["n_genes"],
            "n_signature_genes": int(signatures.shape[0]),
            "cell_types": list(abundance.columns),
            "reference_epochs": reference_epochs,
            "spatial_epochs": spatial_epochs,
            "num_samples": num_samples,
            "final_elbo": record["elbo"],
            "reference_seconds": reference_s,
            "spatial_seconds": spatial_s,
            "pearson_vs_stereoscope": pearson,
            "mean_pearson": float(np.mean(list(pearson.values()))),
            "mean_cells_per_spot": float(abundance.sum(axis=1).mean()),
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs, to check that it runs")
    main(parser.parse_args().quick)
