"""Abundances as an AnnData (X = cell types) that scanpy, squidpy and spatialdata-plot read directly."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import TableModel

from histodecon._constants import Key
from histodecon._geometry import image_pixels, sample_geometry
from histodecon._settings import logger
from histodecon._utils import cell_type_frame, check_overwrite, get_table, samples_of
from histodecon.pl._utils import image_crop
from histodecon.pp._patches import image_levels

#: Longest side, in pixels, of the ``hires`` image stored in ``uns['spatial'][sample]['images']``.
HIRES_MAX_PX = 2000
#: scanpy's names of the image and its scale factors in ``uns['spatial'][library_id]``.
_IMAGES, _HIRES, _SCALEFACTORS = "images", "hires", "scalefactors"
_HIRES_SCALEF, _SPOT_DIAMETER = "tissue_hires_scalef", "spot_diameter_fullres"
#: Layers holding the bounds of :func:`histodecon.tl.predict`'s intervals, when it wrote them.
INTERVAL_LAYERS = ("lower", "upper")


def _spot_results(adata: AnnData) -> dict:
    """``uns`` results about these spots: graph records (``{'connectivities_key': ...}``) and Moran's R results."""
    return {
        key: copy.deepcopy(value)
        for key, value in adata.uns.items()
        if isinstance(value, Mapping)
        and (value.get("connectivities_key") in adata.obsp or (key.endswith(Key.uns.moran_suffix) and "R" in value))
    }


def _library(sdata: SpatialData, sample: str, table_key: str) -> dict:
    """The ``uns['spatial'][sample]`` of scanpy: the image, at most :data:`HIRES_MAX_PX` on a side, and its scale factors."""
    geometry = sample_geometry(sdata, sample, table_key=table_key)
    element = sdata.images[geometry.image_key]
    full = image_levels(element)[0]
    box = np.array([0.0, 0.0, full.sizes["x"], full.sizes["y"]])
    pixels, extent = image_crop(element, box, HIRES_MAX_PX)
    return {
        _IMAGES: {_HIRES: np.ascontiguousarray(pixels)},
        _SCALEFACTORS: {
            # Pixel j of the image covers full-resolution x in [j / scalef, (j + 1) / scalef).
            _HIRES_SCALEF: float(pixels.shape[1] / (extent[1] - extent[0])),
            _SPOT_DIAMETER: float(geometry.spot_diameter_px),
        },
    }


def _spatial_record(data: SpatialData | AnnData, adata: AnnData, table_key: str) -> dict | None:
    """``uns['spatial']`` of the result: built from the images of a SpatialData, copied from an AnnData."""
    if isinstance(data, SpatialData):
        return {sample: _library(data, sample, table_key) for sample in samples_of(adata)}
    existing = adata.uns.get(Key.uns.spatial)
    return copy.deepcopy(dict(existing)) if isinstance(existing, Mapping) else None


def _centres(data: SpatialData | AnnData, adata: AnnData, table_key: str) -> np.ndarray:
    """``obsm['spatial']`` in the pixels of each sample's image, as scanpy reads it with ``uns['spatial']``."""
    centres = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64).copy()
    if isinstance(data, SpatialData):
        samples = adata.obs[Key.obs.sample].astype(str).to_numpy()
        for sample in samples_of(adata):
            rows = samples == str(sample)
            geometry = sample_geometry(data, sample, table_key=table_key)
            centres[rows, :2] = image_pixels(data, geometry, centres[rows, :2])
    return centres


def _add_table(sdata: SpatialData, source: AnnData, result: AnnData, table_key_added: str, overwrite: bool) -> None:
    """Add ``result`` to ``sdata`` as a table annotating the shapes that ``source`` annotates."""
    attrs = source.uns.get(TableModel.ATTRS_KEY)
    if not isinstance(attrs, Mapping) or attrs.get(TableModel.REGION_KEY) is None:
        raise ValueError(
            "The table annotates no shapes (no `uns['spatialdata_attrs']` region), so a table of abundances "
            "could not annotate them either. Read the slide with `hd.io` or adopt it with "
            "`hd.io.from_spatialdata`, or call `hd.get.abundances` without `table_key_added`."
        )
    check_overwrite(sdata.tables, table_key_added, "sdata.tables", overwrite, option="table_key_added")
    sdata.tables[table_key_added] = TableModel.parse(
        result,
        region=attrs[TableModel.REGION_KEY],
        region_key=attrs[TableModel.REGION_KEY_KEY],
        instance_key=attrs[TableModel.INSTANCE_KEY],
        overwrite_metadata=True,
    )
    logger.info(f"Adding `sdata.tables[{table_key_added!r}]`")


def abundances(
    data: SpatialData | AnnData,
    key: str = Key.obsm.pred_abund,
    *,
    table_key: str = Key.tables.table,
    table_key_added: str | None = None,
    overwrite: bool = False,
) -> AnnData:
    """Cell-type abundances as an AnnData whose ``X`` holds them, for scanpy, squidpy and spatialdata-plot.

    ``obsm[key]`` (a spots x cell types DataFrame) becomes ``X`` (float32; ``var_names`` are the
    cell types, as given: spaces and slashes included). The spots' ``obs``, ``obsm['spatial']``,
    the ``obsp`` graphs (e.g. :func:`histodecon.gr.rbf_graph`'s) with their ``uns`` records, the
    Moran's R results of :func:`histodecon.gr.moran_r` (so :func:`histodecon.pl.colocalization`
    draws them beside squidpy's results on this AnnData), histodecon's record
    ``uns['histodecon']`` and a scanpy-style ``uns['spatial']`` come along,
    so :func:`scanpy.pl.spatial`, :func:`squidpy.pl.spatial_scatter` (``color="<cell type>"``)
    and :func:`squidpy.gr.spatial_autocorr` (``connectivity_key="rbf_connectivities"``) work on
    it directly, the cell types taking the place of genes. The bounds of the prediction intervals
    (``obsm[f"{key}_lower"]`` and ``obsm[f"{key}_upper"]``, from ``hd.tl.predict(..., interval=)``)
    become the layers ``"lower"`` and ``"upper"`` when the table has them.

    ``uns['spatial'][sample]`` holds, per sample (scanpy's ``library_id``), the H&E image read
    from a pyramid level of the SpatialData image, at most 2000 pixels on a side, as
    ``images['hires']`` (``(y, x, 3)``, the image's dtype), and the ``scalefactors``
    ``tissue_hires_scalef`` (hires pixels per full-resolution pixel of ``obsm['spatial']``) and
    ``spot_diameter_fullres``. With several samples, pass ``library_key="sample"`` to squidpy
    and ``library_id=`` to scanpy.

    With ``table_key_added``, the AnnData is also added to the SpatialData as a table annotating
    the same shapes as ``table_key`` (same ``region``, ``region_key`` and ``instance_key``), so
    ``sdata.pl.render_shapes(element, color="<cell type>", table_name=table_key_added)`` draws it.
    Both write with :meth:`~anndata.AnnData.write_h5ad` and :meth:`~spatialdata.SpatialData.write`.

    squidpy's Moran's I of a cell type with ``transformation=False`` on ``rbf_connectivities``
    equals the diagonal of :func:`histodecon.gr.moran_r`'s ``R`` for a single sample: both are
    ``n / sum(W) * z^T W z / z^T z``. squidpy's default ``transformation=True`` row-normalises
    ``W`` first, a different statistic.

    Parameters
    ----------
    data
        A :class:`~spatialdata.SpatialData` (its table ``table_key``), or an
        :class:`~anndata.AnnData` (then ``uns['spatial']`` is copied when it has one, and no table can be added).
    key
        ``obsm`` key of the abundances: ``'pred_abund'`` (:func:`histodecon.tl.predict`),
        ``'abund'`` (:func:`histodecon.tl.deconvolve`) or any spots x cell types matrix.
    table_key
        Name of the table in a SpatialData.
    table_key_added
        Also add the result to the SpatialData under this table name.
    overwrite
        Replace an existing table ``table_key_added``.

    Returns
    -------
    The AnnData of the abundances (a new object; the table of ``data`` is left unchanged).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.synthetic(n_spots=200, counts=False)
    >>> adata = hd.get.abundances(sdata, "abund", table_key_added="abund")
    >>> adata.var_names.tolist()
    ['tumour', 'lymphocyte', 'fibroblast', 'adipocyte', 'endothelial']
    >>> sorted(adata.uns["spatial"]["synthetic"]["scalefactors"])
    ['spot_diameter_fullres', 'tissue_hires_scalef']
    """
    if table_key_added is not None and not isinstance(data, SpatialData):
        raise TypeError(
            f"`table_key_added` adds a table to a SpatialData, but `data` is a {type(data).__name__}; "
            "pass the SpatialData, or leave `table_key_added=None`."
        )
    source = get_table(data, table_key)
    frame = cell_type_frame(
        source,
        key,
        missing=f"No `obsm[{key!r}]` in the table; its obsm keys are {list(source.obsm)}. "
        "Predict it with `hd.tl.predict` or pass `key=` naming a spots x cell types matrix.",
    )
    spatial = _spatial_record(data, source, table_key)
    result = AnnData(
        X=frame.to_numpy(dtype=np.float32),
        obs=source.obs.copy(),
        obsm={Key.obsm.spatial: _centres(data, source, table_key)} if Key.obsm.spatial in source.obsm else None,
        obsp={name: graph.copy() for name, graph in source.obsp.items()},
        uns=_spot_results(source),
    )
    result.var_names = frame.columns
    for layer, bound_key in zip(INTERVAL_LAYERS, Key.obsm.interval_bounds(key), strict=True):
        if bound_key in source.obsm:  # hd.tl.predict(..., interval=)'s bounds
            result.layers[layer] = source.obsm[bound_key].loc[:, frame.columns].to_numpy(dtype=np.float32)
    if Key.uns.root in source.uns:
        result.uns[Key.uns.root] = copy.deepcopy(dict(source.uns[Key.uns.root]))
    if spatial is not None:
        result.uns[Key.uns.spatial] = spatial
    if table_key_added is not None:
        _add_table(data, source, result, table_key_added, overwrite)
        result = data.tables[table_key_added]
    return result
