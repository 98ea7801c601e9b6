"""A labelled single-cell reference drawn from the same expression signatures as the synthetic slides."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from histodecon._utils import check_count

from ._expression import GENE_NAMES, cell_counts
from ._layout import CELL_TYPES


def synthetic_reference(*, n_cells_per_type: int = 100, seed: int = 0) -> AnnData:
    """A labelled single-cell reference for the cell types of :func:`synthetic`.

    Raw counts of ``n_cells_per_type`` cells of each type drawn from the same expression
    signatures as the spot counts of :func:`synthetic` (negative binomial, with a log-normal
    library size per cell), so that deconvolution can be tested end to end.

    Parameters
    ----------
    n_cells_per_type
        Cells per cell type.
    seed
        Seed of the counts.

    Returns
    -------
    AnnData
        Cells x genes: integer counts in ``X`` (sparse, float32), labels in ``obs["cell_type"]``
        (categorical, in the column order of ``obsm["abund"]``).

    Examples
    --------
    >>> import histodecon as hd
    >>> ref = hd.datasets.synthetic_reference(n_cells_per_type=50)
    >>> ref.obs["cell_type"].value_counts()["tumour"]
    np.int64(50)
    """
    check_count(n_cells_per_type, "n_cells_per_type", 1)
    check_count(seed, "seed", 0)
    labels = np.repeat(np.arange(len(CELL_TYPES)), n_cells_per_type)
    X = cell_counts(labels, np.random.default_rng(seed))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical.from_codes(labels, categories=list(CELL_TYPES))},
        index=[f"cell{i:05d}" for i in range(len(labels))],
    )
    return AnnData(X=sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=list(GENE_NAMES)))
