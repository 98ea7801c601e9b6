"""Cell-type abundances of spots from their counts and a single-cell reference, by cell2location."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from histodecon._constants import Key
from histodecon._docs import inject_docs
from histodecon._settings import logger, progress_option, settings
from histodecon._utils import (
    Slide,
    as_slide_list,
    check_overwrite,
    check_positive,
    check_positive_int,
    check_unique_names,
    get_table,
    provenance,
    samples_of,
    write_result,
)

from ._signatures import (
    count_matrix,
    final_elbo,
    fit_signatures,
    import_cell2location,
    quiet_training,
    reference_cells,
    reference_signatures,
    seeded,
    train_kwargs,
    versions,
)

__all__ = ["deconvolve", "reference_signatures"]

#: Fewer shared genes than this make abundances unreliable: warn.
FEW_GENES = 100
#: The posterior summary written, as in cell2location's tutorials: the 5% quantile of w_sf.
ABUNDANCE_PREFIX = "q05cell_abundance_w_sf_"


#: How to resolve repeated gene names (cell2location needs one column per gene).
_DUPLICATED_GENES_FIX = (
    "Sum the counts of each gene into one column, or keep them apart with `adata.var_names_make_unique()`."
)


def _check_options(
    *,
    max_epochs: int,
    reference_epochs: int,
    num_samples: int,
    n_cells_per_location: float,
    detection_alpha: float,
    device: str | None,
) -> None:
    """Refuse bad numeric options and unknown or absent devices before any counts are read."""
    for value, name in (
        (max_epochs, "max_epochs"),
        (reference_epochs, "reference_epochs"),
        (num_samples, "num_samples"),
    ):
        check_positive_int(value, name)
    for value, name in ((n_cells_per_location, "n_cells_per_location"), (detection_alpha, "detection_alpha")):
        check_positive(value, name, what="a cell2location prior")
    settings.torch_device(device)


def _check_signatures(signatures: pd.DataFrame) -> pd.DataFrame:
    """Precomputed signatures as float64 with string cell-type names, after checking their values."""
    values = signatures.to_numpy(dtype=float)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("Signatures must be finite, non-negative mean counts per cell (genes x cell types).")
    if signatures.index.has_duplicates or signatures.columns.has_duplicates:
        raise ValueError("Signatures must have unique gene names (index) and cell-type names (columns).")
    signatures = signatures.astype(np.float64)
    signatures.columns = signatures.columns.astype(str)
    return signatures


def _shared_genes(slide_genes: list[pd.Index], reference_genes: pd.Index) -> pd.Index:
    """Genes measured on every slide and in the reference, in reference order; error if none, warn if few."""
    shared = reference_genes
    for genes in slide_genes:
        shared = shared[shared.isin(genes)]
    if len(shared) == 0:
        raise ValueError(
            "The slides and the reference share no gene names. Check that both use the same gene "
            f"identifiers (e.g. symbols vs Ensembl ids): slide genes look like {list(slide_genes[0][:3])}, "
            f"reference genes like {list(reference_genes[:3])}."
        )
    if len(shared) < FEW_GENES:
        logger.warning(
            f"The slides and the reference share only {len(shared)} genes; abundances from so few genes are "
            "unreliable. Check the gene identifiers, or use a reference measured on more genes."
        )
    return shared


def _spots(tables: list[AnnData], slide_counts: list[sparse.csr_matrix], genes: pd.Index) -> AnnData:
    """The spots of all slides, one AnnData of counts over ``genes``, batch ``obs[Key.obs.sample]``."""
    blocks, samples = [], []
    for table, counts in zip(tables, slide_counts, strict=True):
        blocks.append(counts[:, table.var_names.get_indexer(genes)])
        samples.append(table.obs[Key.obs.sample].astype(str).to_numpy())
    samples = np.concatenate(samples)
    n_spots = len(samples)
    return AnnData(
        X=sparse.vstack(blocks, format="csr"),
        obs=pd.DataFrame(
            {Key.obs.sample: pd.Categorical(samples, categories=pd.unique(samples))},
            index=[f"spot{i}" for i in range(n_spots)],
        ),
        var=pd.DataFrame(index=genes),
    )


@inject_docs
@progress_option
def deconvolve(
    slides: Slide | Sequence[Slide],
    reference: AnnData | pd.DataFrame,
    *,
    labels_key: str | None = None,
    batch_key: str | None = None,
    layer: str | None = None,
    n_cells_per_location: float = 30,
    detection_alpha: float = 20,
    max_epochs: int = 30000,
    reference_epochs: int = 250,
    num_samples: int = 1000,
    seed: int = 0,
    device: str | None = None,
    key_added: str = Key.obsm.abund,
    overwrite: bool = False,
    table_key: str = Key.tables.table,
    progress: bool | None = None,
) -> None:
    """Cell-type abundances of every spot from its counts, by cell2location.

    cell2location models a spot's counts as a sum of reference cell-type signatures weighted by
    the number of cells of each type, with per-slide and per-gene technical effects. Slides are
    deconvolved jointly (one model, batch = ``obs["sample"]``) on the genes they share with the
    reference; the 5% posterior quantile of the abundance (a conservative estimate of the number
    of cells of each type, cell2location's recommended summary) is written to each slide.

    Parameters
    ----------
    slides
        A SpatialData or AnnData with raw counts, or a list of them; each table has
        ``obs["sample"]``.
    reference
        Either a labelled single-cell AnnData of raw counts in ``X`` (signatures are then
        estimated with :func:`reference_signatures` on the genes shared with the slides), or
        precomputed signatures, a genes x cell types DataFrame of mean counts per cell.
    labels_key
        ``obs`` column of the cell-type labels of a reference AnnData.
    batch_key
        ``obs`` column of the batches of a reference AnnData, if several.
    layer
        Layer of the slide tables holding the raw counts; ``None`` uses ``X``.
    n_cells_per_location
        Expected number of cells per spot (cell2location's prior, tune it to the tissue and spot
        size: about 30 for Visium, more for 100 um legacy ST spots).
    detection_alpha
        Regularisation of the per-spot RNA detection sensitivity; 20 suits most data, 200
        suits data with little within-slide technical variation.
    max_epochs
        Training epochs (each one full-batch step) of the spatial model; cell2location
        recommends 30000. A few thousand are often enough for small slides.
    reference_epochs
        Training epochs of the reference model, when ``reference`` is an AnnData.
    num_samples
        Posterior samples drawn to summarise the abundances (and signatures).
    seed
        Seed of the training (torch's random state is restored afterwards).
    {{device}}
    {{key_added}}
    {{overwrite}}
    {{table_key}}
    progress
        Show progress bars for this call; ``None`` follows :attr:`histodecon.settings.progress`.

    Returns
    -------
    None
        Writes ``obsm[key_added]`` of every slide, a spots x cell types DataFrame of abundances
        (cells per spot), and ``uns["histodecon"]["deconvolve"][key_added]``: parameters, genes,
        epochs, final ELBO loss and package versions.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200)
    >>> ref = hd.datasets.synthetic_reference()
    >>> hd.tl.deconvolve(sdata, ref, labels_key="cell_type", max_epochs=2000)  # doctest: +SKIP
    >>> sdata.tables["table"].obsm["abund"].columns.tolist()  # doctest: +SKIP
    ['tumour', 'lymphocyte', 'fibroblast', 'adipocyte', 'endothelial']
    """
    tables = [get_table(slide, table_key) for slide in as_slide_list(slides)]
    _check_options(
        max_epochs=max_epochs,
        reference_epochs=reference_epochs,
        num_samples=num_samples,
        n_cells_per_location=n_cells_per_location,
        detection_alpha=detection_alpha,
        device=device,
    )
    slide_counts = []
    for table in tables:
        name = ", ".join(samples_of(table))
        check_overwrite(table.obsm, key_added, "adata.obsm", overwrite)
        check_unique_names(table.var_names, f"The gene names of slide {name}", _DUPLICATED_GENES_FIX)
        slide_counts.append(count_matrix(table, layer, f"Slide {name}"))
    if isinstance(reference, AnnData):
        check_unique_names(reference.var_names, "The gene names of the reference", _DUPLICATED_GENES_FIX)
    slide_genes = [table.var_names for table in tables]

    if isinstance(reference, pd.DataFrame):
        signatures = _check_signatures(reference)
        genes = _shared_genes(slide_genes, signatures.index)
        signatures = signatures.loc[genes]
        reference_record = {"kind": "signatures", "n_genes": int(reference.shape[0])}
    elif isinstance(reference, AnnData):
        cells = reference_cells(reference, labels_key=labels_key, batch_key=batch_key, layer=None)
        genes = _shared_genes(slide_genes, cells.var_names)
        cells = cells[:, genes].copy()
        signatures, reference_elbo = fit_signatures(
            cells, max_epochs=reference_epochs, num_samples=num_samples, seed=seed, device=device
        )
        reference_record = {
            "kind": "anndata",
            "labels_key": labels_key,
            "n_cells": int(reference.n_obs),
            "epochs": int(reference_epochs),
            "elbo": reference_elbo,
        }
    else:
        raise TypeError(
            "`reference` must be a labelled single-cell AnnData or a genes x cell types signature DataFrame "
            f"(see `hd.tl.reference_signatures`), got {type(reference).__name__}."
        )

    spots = _spots(tables, slide_counts, genes)
    abundance, elbo = _train_spatial(
        spots,
        signatures,
        n_cells_per_location=n_cells_per_location,
        detection_alpha=detection_alpha,
        max_epochs=max_epochs,
        num_samples=num_samples,
        seed=seed,
        device=device,
    )
    record = {
        "method": "cell2location",
        "summary": "q05",
        "n_cells_per_location": float(n_cells_per_location),
        "detection_alpha": float(detection_alpha),
        "epochs": int(max_epochs),
        "elbo": elbo,
        "num_samples": int(num_samples),
        "seed": int(seed),
        "n_genes": len(genes),
        "samples": list(spots.obs[Key.obs.sample].cat.categories),
        "cell_types": list(signatures.columns),
        "reference": reference_record,
        "versions": versions(),
    }
    start = 0
    for table in tables:
        block = abundance[start : start + table.n_obs]
        start += table.n_obs
        frame = pd.DataFrame(block, index=table.obs_names.copy(), columns=list(signatures.columns))
        write_result(table, "obsm", key_added, frame, overwrite=overwrite)
        provenance(table).setdefault(Key.uns.deconvolve, {})[key_added] = dict(record)


def _train_spatial(
    spots: AnnData,
    signatures: pd.DataFrame,
    *,
    n_cells_per_location: float,
    detection_alpha: float,
    max_epochs: int,
    num_samples: int,
    seed: int,
    device: str | None,
) -> tuple[np.ndarray, float]:
    """Train cell2location on prepared spots; the q05 abundances (spots x types) and the final ELBO loss."""
    models = import_cell2location().models
    kwargs = train_kwargs(device)
    logger.info(
        f"cell2location: {spots.n_obs} spots of {spots.obs[Key.obs.sample].nunique()} sample(s), "
        f"{spots.n_vars} genes, {signatures.shape[1]} cell types, {max_epochs} epochs."
    )
    with quiet_training(), seeded(seed, device):
        models.Cell2location.setup_anndata(spots, batch_key=Key.obs.sample)
        model = models.Cell2location(
            spots,
            cell_state_df=signatures,
            N_cells_per_location=n_cells_per_location,
            detection_alpha=detection_alpha,
        )
        model.train(max_epochs=max_epochs, **kwargs)
        spots = model.export_posterior(
            spots,
            sample_kwargs={
                "num_samples": num_samples,
                "batch_size": spots.n_obs,
                "accelerator": kwargs["accelerator"],
                "device": kwargs["device"],
            },
        )
    q05 = spots.obsm["q05_cell_abundance_w_sf"]
    q05 = q05[[ABUNDANCE_PREFIX + name for name in signatures.columns]]
    elbo = final_elbo(model)
    logger.info(f"cell2location trained, final ELBO loss {elbo:.4g}.")
    return q05.to_numpy(dtype=np.float64), elbo
