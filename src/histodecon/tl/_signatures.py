"""Cell-type expression signatures from a labelled single-cell reference (cell2location's regression model)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from importlib.metadata import version

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from histodecon._docs import inject_docs
from histodecon._settings import logger, progress_option, settings
from histodecon._utils import check_storable_names

#: cell2location's ``filter_genes`` defaults: genes seen in more than 5% of cells are kept, and
#: genes seen in more than 15 cells if their mean count where detected exceeds 1.12.
CELL_PERCENTAGE_CUTOFF = 0.05
CELL_COUNT_CUTOFF = 15
NONZERO_MEAN_CUTOFF = 1.12
#: Cell types with fewer cells than this get a warning: their signature is poorly estimated.
MIN_CELLS_PER_TYPE = 10
#: cell2location's prefix of the signature columns exported by the regression model.
SIGNATURE_PREFIX = "means_per_cluster_mu_fg_"
_NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi")


def import_cell2location():
    """Import cell2location (slow: 20-60 s), or explain how to install it."""
    try:
        import cell2location
    except ImportError as error:
        raise ImportError(
            'Deconvolution needs cell2location, an optional dependency: pip install "histodecon[deconv]"'
        ) from error
    return cell2location


def versions() -> dict[str, str]:
    """Versions of the packages behind a deconvolution, for provenance."""
    return {name: version(name) for name in ("cell2location", "scvi-tools", "pyro-ppl", "torch")}


def count_matrix(adata: AnnData, layer: str | None, what: str) -> sparse.csr_matrix:
    """Raw counts of ``adata`` (``X`` or ``layers[layer]``) as CSR float32, after checking they are counts."""
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"{what} has no layer {layer!r}; its layers are {list(adata.layers)}.")
    matrix = adata.X if layer is None else adata.layers[layer]
    where = "X" if layer is None else f"layers[{layer!r}]"
    if matrix is None or adata.n_vars == 0:
        raise ValueError(f"{what} has no genes in `{where}`: deconvolution needs the spots' raw counts.")
    matrix = sparse.csr_matrix(matrix, dtype=np.float32)
    values = matrix.data
    if values.size and (values.min() < 0 or not np.array_equal(values, np.round(values))):
        raise ValueError(
            f"{what} `{where}` does not hold raw counts (non-negative integers): it looks normalised or "
            "log-transformed. cell2location models raw UMI counts; pass `layer=` the layer holding them "
            "(e.g. `layer='counts'`)."
        )
    return matrix


def check_labels(ref: AnnData, labels_key: str | None) -> pd.Series:
    """The reference labels as a categorical Series, warning about cell types with few cells."""
    if labels_key is None:
        raise ValueError("A reference AnnData needs `labels_key=`, the `obs` column holding the cell-type labels.")
    if labels_key not in ref.obs:
        raise KeyError(
            f"The reference has no `obs[{labels_key!r}]`; its obs columns are {list(ref.obs.columns)}. "
            "Pass `labels_key=` the column holding the cell-type labels."
        )
    labels = ref.obs[labels_key]
    if labels.isna().any():
        raise ValueError(
            f"`obs[{labels_key!r}]` of the reference has {int(labels.isna().sum())} missing labels; "
            "drop those cells first."
        )
    counts = labels.astype(str).value_counts()
    if len(counts) < 2:
        raise ValueError(f"`obs[{labels_key!r}]` has {len(counts)} cell type; deconvolution needs at least two.")
    rare = counts[counts < MIN_CELLS_PER_TYPE]
    if len(rare):
        logger.warning(
            f"Cell types with fewer than {MIN_CELLS_PER_TYPE} cells in the reference get unreliable signatures: "
            + ", ".join(f"{name} ({n})" for name, n in rare.items())
            + f". Merge them into broader types or drop them from `obs[{labels_key!r}]`."
        )
    check_storable_names(
        counts.index,
        f"Cell types of `obs[{labels_key!r}]` of the reference",
        f"Rename them, e.g. `ref.obs[{labels_key!r}] = ref.obs[{labels_key!r}].astype(str).str.replace('/', '_')`.",
    )
    labels = labels.astype("category").cat.remove_unused_categories()
    return labels.cat.rename_categories([str(name) for name in labels.cat.categories])


def select_genes(counts: sparse.csr_matrix, labels: pd.Series) -> np.ndarray:
    """cell2location's reference gene filter (``filter_genes``), as a boolean mask over genes.

    A gene is kept when detected in more than 5% of cells, or in more than 15 cells with a mean
    count above 1.12 in the cells that detect it. When the smallest cell type has 15 cells or
    fewer, the 15 is lowered so that a gene detected in all its cells passes: the markers of a
    rare type are not dropped.
    """
    detected = np.asarray((counts > 0).sum(axis=0)).ravel()
    total = np.asarray(counts.sum(axis=0)).ravel()
    nonzero_mean = np.divide(total, detected, out=np.zeros_like(total, dtype=float), where=detected > 0)
    count_cutoff = min(CELL_COUNT_CUTOFF, int(labels.value_counts().min()) - 1)
    return (detected > counts.shape[0] * CELL_PERCENTAGE_CUTOFF) | (
        (detected > count_cutoff) & (nonzero_mean > NONZERO_MEAN_CUTOFF)
    )


def accelerator(device: str | None) -> tuple[str, int | str]:
    """Lightning's ``(accelerator, device)`` for a torch device name (``None``: the package default)."""
    resolved = settings.torch_device(device)
    kind = {"cuda": "gpu"}.get(resolved.type, resolved.type)
    return kind, resolved.index if resolved.index is not None else "auto"


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Silence Lightning's and scvi-tools' console chatter (GPU lines, tips, loop warnings).

    Training progress bars follow :attr:`histodecon.settings.progress` (:func:`train_kwargs`);
    scvi-tools' posterior-sampling bars, which cannot be switched off, are muted with it.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for module in ("lightning", "pytorch_lightning", "scvi", "pyro"):
                warnings.filterwarnings("ignore", module=module)
            with contextlib.nullcontext() if settings.progress else contextlib.redirect_stdout(io.StringIO()):
                yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


@contextlib.contextmanager
def seeded(seed: int, device: str | None) -> Iterator[None]:
    """Seed torch (on ``device`` too) for a training, restoring its random state afterwards."""
    import torch

    resolved = settings.torch_device(device)
    with torch.random.fork_rng(devices=[resolved] if resolved.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def train_kwargs(device: str | None) -> dict:
    """Trainer options shared by both models: the device, our progress setting, no summaries or logs on disk."""
    kind, index = accelerator(device)
    return {
        "accelerator": kind,
        "device": index,
        "enable_progress_bar": settings.progress,
        "enable_model_summary": False,
    }


def final_elbo(model) -> float:
    """The last training ELBO loss of a cell2location / scvi-tools model."""
    return float(model.history["elbo_train"].iloc[-1, 0])


def reference_cells(ref: AnnData, *, labels_key: str | None, batch_key: str | None, layer: str | None) -> AnnData:
    """The checked reference on the genes of :func:`select_genes`: counts, obs ``label`` and ``batch``."""
    counts = count_matrix(ref, layer, "The reference")
    labels = check_labels(ref, labels_key)
    obs = pd.DataFrame({"label": labels.array}, index=ref.obs_names)
    if batch_key is not None:
        if batch_key not in ref.obs:
            raise KeyError(f"The reference has no `obs[{batch_key!r}]`; its obs columns are {list(ref.obs.columns)}.")
        obs["batch"] = ref.obs[batch_key].astype(str).astype("category").to_numpy()
    keep = select_genes(counts, labels)
    logger.info(f"Reference: {ref.n_obs} cells, {int(keep.sum())} of {ref.n_vars} genes pass the gene filter.")
    return AnnData(X=counts[:, keep], obs=obs, var=pd.DataFrame(index=ref.var_names[keep]))


@inject_docs
@progress_option
def reference_signatures(
    ref: AnnData,
    *,
    labels_key: str,
    batch_key: str | None = None,
    layer: str | None = None,
    max_epochs: int = 250,
    num_samples: int = 1000,
    seed: int = 0,
    device: str | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Cell-type expression signatures of a labelled single-cell reference, by cell2location.

    Genes are first filtered as cell2location recommends (:func:`select_genes`); then
    cell2location's negative-binomial regression model estimates each type's mean expression,
    corrected for batch effects and ambient RNA. The result can be saved and passed to
    :func:`histodecon.tl.deconvolve` for any number of slides.

    Parameters
    ----------
    ref
        Cells x genes AnnData of raw counts (in ``X``, or ``layers[layer]``).
    labels_key
        ``obs`` column with the cell-type labels.
    batch_key
        ``obs`` column with the batch (sample, technology) of each cell, if several.
    layer
        Layer holding the raw counts; ``None`` uses ``X``.
    max_epochs
        Training epochs of the regression model (cell2location recommends 250).
    num_samples
        Posterior samples drawn to summarise the signatures.
    seed
        Seed of the training (torch's random state is restored afterwards).
    {{device}}
    progress
        Show progress bars for this call; ``None`` follows :attr:`histodecon.settings.progress`.

    Returns
    -------
    pandas.DataFrame
        Genes x cell types (in the order of the labels' categories), posterior mean expression
        (counts per cell).

    Examples
    --------
    >>> import histodecon as hd
    >>> ref = hd.datasets.synthetic_reference()
    >>> signatures = hd.tl.reference_signatures(ref, labels_key="cell_type", max_epochs=50)  # doctest: +SKIP
    >>> signatures.columns.tolist()  # doctest: +SKIP
    ['tumour', 'lymphocyte', 'fibroblast', 'adipocyte', 'endothelial']
    """
    cells = reference_cells(ref, labels_key=labels_key, batch_key=batch_key, layer=layer)
    return fit_signatures(cells, max_epochs=max_epochs, num_samples=num_samples, seed=seed, device=device)[0]


def fit_signatures(
    cells: AnnData, *, max_epochs: int, num_samples: int, seed: int, device: str | None
) -> tuple[pd.DataFrame, float]:
    """Train the regression model on a prepared reference (obs ``label``, optional ``batch``).

    cell2location 0.1.5 starts each type's signature from the mean of the type at the same position
    in *sorted* label order, but trains and names it by the categorical's order: unless the
    categories are sorted, types start from (and, in short trainings, keep) another type's profile.
    The labels are therefore handed over sorted, and the columns returned in the caller's order.
    """
    models = import_cell2location().models
    order = list(cells.obs["label"].cat.categories)
    cells.obs["label"] = cells.obs["label"].cat.reorder_categories(sorted(order))
    kwargs = train_kwargs(device)
    with quiet_training(), seeded(seed, device):
        models.RegressionModel.setup_anndata(
            cells, labels_key="label", batch_key="batch" if "batch" in cells.obs else None
        )
        model = models.RegressionModel(cells)
        model.train(max_epochs=max_epochs, **kwargs)
        cells = model.export_posterior(
            cells,
            sample_kwargs={
                "num_samples": num_samples,
                "batch_size": 2500,
                "accelerator": kwargs["accelerator"],
                "device": kwargs["device"],
            },
        )
    names = list(cells.uns["mod"]["factor_names"])
    means = cells.varm["means_per_cluster_mu_fg"][[SIGNATURE_PREFIX + name for name in names]]
    means.columns = names
    means = means[order]
    elbo = final_elbo(model)
    logger.info(f"Reference model trained for {max_epochs} epochs, final ELBO loss {elbo:.4g}.")
    return means.astype(np.float64), elbo
