"""Assemble the SpatialData layout of histodecon from an image, spot centres and a table."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import BaseTransformation, Identity, Scale, set_transformation
from xarray import DataArray, Dataset, DataTree

from histodecon._constants import Key
from histodecon._geometry import SampleGeometry, cache_record, check_geometry
from histodecon._pyramid import halvings
from histodecon._utils import check_centres

#: Images whose longer side exceeds this many pixels are stored as a multiscale pyramid.
PYRAMID_ABOVE_PX = 4096
IMAGE_CHUNK_PX = 1024


def _n_halvings(height: int, width: int) -> int:
    """How many halvings bring the image's longer side within :data:`PYRAMID_ABOVE_PX`."""
    n, side = 0, max(height, width)
    while side > PYRAMID_ABOVE_PX:
        n, side = n + 1, side // 2
    return n


def _image_element(
    levels: list[np.ndarray | da.Array], transform: dict[str, BaseTransformation]
) -> DataArray | DataTree:
    """The image as spatialdata stores it, in 1024 px chunks: stored levels kept, else a pyramid built when large.

    The pyramid of an image that stores none is built by :func:`histodecon._pyramid.halvings`, the
    rule patches are read by: right away for an image in memory (it adds at most a third of the
    image's own memory), else lazily, chunk by chunk.
    """
    if len(levels) == 1:
        levels = [levels[0], *halvings(levels[0], _n_halvings(*levels[0].shape[1:]))]
    if len(levels) > 1:
        return _pyramid_element(levels, transform)
    return Image2DModel.parse(
        da.asarray(levels[0]),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        chunks=(levels[0].shape[0], IMAGE_CHUNK_PX, IMAGE_CHUNK_PX),
        transformations=transform,
    )


def _pyramid_element(levels: list[np.ndarray | da.Array], transform: dict[str, BaseTransformation]) -> DataTree:
    """Pyramid levels (finest first) as one multiscale image, placed by ``transform``."""
    full = dict(zip("yx", levels[0].shape[1:], strict=True))
    scales = {}
    for i, level in enumerate(levels):
        level = da.asarray(level)
        level = level.rechunk((level.shape[0], IMAGE_CHUNK_PX, IMAGE_CHUNK_PX))
        # pixel centres in full-resolution pixels, as spatialdata places them
        coords = {ax: (np.arange(n) + 0.5) * full[ax] / n for ax, n in zip("yx", level.shape[1:], strict=True)}
        array = DataArray(level, dims=("c", "y", "x"), coords={"c": ["r", "g", "b"], **coords})
        scales[f"scale{i}"] = Dataset({"image": array})
    tree = DataTree.from_dict(scales)
    set_transformation(tree, transform, set_all=True)
    Image2DModel().validate(tree)
    return tree


def build_sdata(
    image: np.ndarray | da.Array | list[np.ndarray | da.Array],
    centres_xy: np.ndarray,
    *,
    sample: str,
    mpp: float,
    spot_diameter_px: float,
    spot_ids: pd.Index | list[str] | None = None,
    X: np.ndarray | sparse.spmatrix | None = None,
    var_names: pd.Index | list[str] | None = None,
    obs: pd.DataFrame | None = None,
) -> SpatialData:
    """Build ``images[f"{sample}_image"]``, ``shapes[f"{sample}_spots"]`` and ``tables["table"]``.

    The image and the spots' circles are registered in the sample's own coordinate systems:
    ``Key.cs.pixels(sample)`` (full-resolution pixels, ``Identity``) and
    ``Key.cs.micrometres(sample)`` (``Scale([mpp, mpp])``), where the geometry is read back from
    (:mod:`histodecon._geometry`); ``uns["histodecon"]["samples"][sample]`` caches it.

    Parameters
    ----------
    image
        RGB image, ``(c, y, x)`` uint8, or its stored pyramid levels, finest first (a list),
        which are kept as they are. A single image longer than :data:`PYRAMID_ABOVE_PX` gets a
        pyramid of halvings (:func:`histodecon._pyramid.halve`).
    centres_xy
        Spot centres in full-resolution pixels, ``(n, 2)`` as ``(x, y)``.
    sample
        Sample (section) name; prefixes the element names and fills ``obs["sample"]``.
    mpp
        Micrometres per pixel of ``image``.
    spot_diameter_px
        Spot diameter in pixels.
    spot_ids
        Spot names (``obs_names``); default ``"0"``, ``"1"``, ...
    X
        Counts, spots x genes; ``None`` for an H&E-only slide (zero genes).
    var_names
        Gene names, required with ``X``.
    obs
        Extra per-spot columns, indexed like ``spot_ids``.
    """
    check_geometry(sample, mpp, spot_diameter_px)
    if not isinstance(sample, str) or sample.startswith("__") or not all(c.isalnum() or c in "_-." for c in sample):
        raise ValueError(
            f"The sample name {sample!r} cannot name SpatialData elements ({sample}_image, {sample}_spots): pass "
            "`sample=` with letters, digits, '_', '-' and '.' only."
        )
    centres_xy = np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2)
    n_spots = len(centres_xy)
    spot_ids = pd.Index([str(i) for i in range(n_spots)] if spot_ids is None else [str(s) for s in spot_ids])
    if spot_ids.has_duplicates:
        dup = spot_ids[spot_ids.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"Spot ids must be unique; duplicated: {dup}. Give each spot its own id (e.g. `adata.obs_names_make_unique()`)."
        )
    centres_xy = check_centres(centres_xy, spot_ids, "spot centres")

    image_key, shapes_key = f"{sample}_image", f"{sample}_spots"
    transform = {Key.cs.pixels(sample): Identity(), Key.cs.micrometres(sample): Scale([mpp, mpp], axes=("x", "y"))}
    image_el = _image_element(image if isinstance(image, list) else [image], transform)
    shapes_el = ShapesModel.parse(
        centres_xy,
        geometry=0,
        radius=np.full(n_spots, spot_diameter_px / 2),
        index=spot_ids,
        transformations=transform,
    )

    table_obs = pd.DataFrame(index=spot_ids)
    if obs is not None:
        table_obs = table_obs.join(obs.set_axis(obs.index.astype(str)))
    table_obs[Key.obs.sample] = pd.Categorical([sample] * n_spots)
    table_obs[Key.obs.in_tissue] = table_obs.get(Key.obs.in_tissue, pd.Series(True, index=spot_ids)).astype(bool)
    table_obs[Key.obs.region] = pd.Categorical([shapes_key] * n_spots)
    table_obs[Key.obs.spot_id] = spot_ids.to_numpy()
    if X is None:
        X, var = sparse.csr_matrix((n_spots, 0), dtype=np.float32), pd.DataFrame(index=pd.Index([], dtype=str))
    else:
        if var_names is None:
            raise ValueError("`var_names` is required together with counts `X`.")
        var = pd.DataFrame(index=pd.Index([str(g) for g in var_names]))
    adata = AnnData(X=X, obs=table_obs, var=var)
    adata.obsm[Key.obsm.spatial] = centres_xy
    geometry = SampleGeometry(sample, mpp, spot_diameter_px, image_key, shapes_key)
    adata.uns[Key.uns.root] = {Key.uns.samples: {sample: cache_record(geometry)}}
    table = TableModel.parse(adata, region=shapes_key, region_key=Key.obs.region, instance_key=Key.obs.spot_id)
    return SpatialData(images={image_key: image_el}, shapes={shapes_key: shapes_el}, tables={Key.tables.table: table})
