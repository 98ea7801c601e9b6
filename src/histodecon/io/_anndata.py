"""Conversion of a scanpy / squidpy Visium AnnData (``uns['spatial']``) into the histodecon layout."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._utils import check_centres, check_positive, check_spot_spacing, check_spots_inside, get_table
from histodecon.io._build import build_sdata
from histodecon.io._image import as_rgb
from histodecon.io._visium import VISIUM_SPOT_UM

#: Columns that the histodecon table sets itself; same-named user columns are not carried over.
_RESERVED_OBS = (Key.obs.sample, Key.obs.region, Key.obs.spot_id)


def _hires_uint8(image: np.ndarray, library_id: str) -> np.ndarray:
    """Scanpy stores the hires image as float in [0, 1]; histodecon uses uint8."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        if image.min() < 0 or image.max() > 1:
            raise ValueError(
                f"The hires image of {library_id!r} is float outside [0, 1]; convert it to uint8 RGB first."
            )
        image = (image * 255).round().astype(np.uint8)
    return as_rgb(image, f"{library_id} hires", "YXS" if image.ndim == 3 else "YX")


def _library_spots(adata: AnnData, library_id: str, library_key: str | None, libraries: list[str]) -> AnnData:
    """The spots of ``library_id``: those whose ``obs[library_key]`` names it, or all with one library."""
    if library_key is None:
        if len(libraries) > 1:
            raise ValueError(
                f"`uns['spatial']` holds libraries {libraries}, so the spots may come from several sections. Pass "
                "`library_key=` naming the obs column that says each spot's library (e.g. 'library_id'), so that "
                f"only the spots of {library_id!r} are placed on its image."
            )
        return adata
    if library_key not in adata.obs:
        raise KeyError(f"No `obs[{library_key!r}]` column; the obs columns are {list(adata.obs.columns)}.")
    mine = (adata.obs[library_key].astype(str) == str(library_id)).to_numpy()
    if not mine.any():
        found = sorted(map(str, adata.obs[library_key].unique()))[:5]
        raise ValueError(f"No spot has `obs[{library_key!r}] == {library_id!r}`; it holds {found}.")
    return adata if mine.all() else adata[mine].copy()


def from_anndata(
    adata: AnnData,
    library_id: str | None = None,
    *,
    library_key: str | None = None,
    sample: str | None = None,
    spot_diameter_um: float = VISIUM_SPOT_UM,
) -> SpatialData:
    """Convert a Visium AnnData as read by :func:`scanpy.read_visium` / :func:`squidpy.read.visium`.

    The image is the **hires** image of ``uns['spatial'][library_id]['images']``; spot
    centres (``obsm['spatial']``, full-resolution pixels) are scaled onto it by
    ``tissue_hires_scalef``, and its micrometres per pixel follow from the spot diameter:
    ``mpp = spot_diameter_um / (spot_diameter_fullres * tissue_hires_scalef)``. A float image
    in [0, 1] (scanpy's convention) is converted to uint8. ``X``, ``var``, the ``obs``
    columns and the other ``obsm`` entries are carried over; ``adata`` is not modified.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` and ``uns['spatial'][library_id]`` holding
        ``images['hires']`` and ``scalefactors``.
    library_id
        Which library of ``uns['spatial']``; may be omitted when there is one.
    library_key
        ``obs`` column naming each spot's library (squidpy's ``library_key``): only the spots of
        ``library_id`` are kept. Required when ``uns['spatial']`` holds several libraries, so
        that no other section's spots are placed on this library's image.
    sample
        Sample name; default ``library_id``.
    spot_diameter_um
        Physical spot diameter, 55 um for Visium.

    Returns
    -------
    SpatialData in the histodecon layout, with the hires image as ``images[f"{sample}_image"]``.

    Examples
    --------
    >>> import scanpy as sc
    >>> import histodecon as hd
    >>> adata = sc.datasets.visium_sge("V1_Breast_Cancer_Block_A_Section_1")  # doctest: +SKIP
    >>> sdata = hd.io.from_anndata(adata)  # doctest: +SKIP
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"from_anndata needs an AnnData, got {type(adata).__name__}.")
    check_positive(spot_diameter_um, "spot_diameter_um")
    libraries = adata.uns.get(Key.uns.spatial, {})
    if not libraries or Key.obsm.spatial not in adata.obsm:
        raise KeyError(
            f"The AnnData lacks `uns['spatial']` or `obsm['spatial']` (its uns keys are {list(adata.uns)}, its obsm "
            f"keys {list(adata.obsm)}). Read Visium data with "
            "`scanpy.read_visium` / `squidpy.read.visium`, or use `hd.io.read_visium` on the Space Ranger folder."
        )
    if library_id is None:
        if len(libraries) != 1:
            raise ValueError(f"`uns['spatial']` holds libraries {list(libraries)}; pass `library_id=` to pick one.")
        (library_id,) = libraries
    if library_id not in libraries:
        raise KeyError(f"No library {library_id!r} in `uns['spatial']`; it holds {list(libraries)}.")
    adata = _library_spots(adata, library_id, library_key, list(libraries))
    library = libraries[library_id]
    if "hires" not in library.get("images", {}) or "scalefactors" not in library:
        raise KeyError(
            f"`uns['spatial'][{library_id!r}]` needs `images['hires']` and `scalefactors`; it has {list(library)} "
            f"(images: {list(library.get('images', {}))}). Read the data with its hires image."
        )
    scalefactors = library["scalefactors"]
    scale = float(scalefactors["tissue_hires_scalef"])
    spot_px = float(scalefactors["spot_diameter_fullres"]) * scale
    image = _hires_uint8(library["images"]["hires"], library_id)
    centres = check_centres(adata.obsm[Key.obsm.spatial], adata.obs_names, f"`obsm[{Key.obsm.spatial!r}]`") * scale
    check_spots_inside(centres, adata.obs_names, image.shape[2], image.shape[1], f"{library_id} hires")
    mpp = spot_diameter_um / spot_px
    check_spot_spacing(centres, mpp, f"library {library_id!r}")

    sample = sample or library_id
    sdata = build_sdata(
        image,
        centres,
        sample=sample,
        mpp=mpp,
        spot_diameter_px=spot_px,
        spot_ids=adata.obs_names,
        X=adata.X.copy(),
        var_names=adata.var_names,
        obs=adata.obs.drop(columns=[c for c in _RESERVED_OBS if c in adata.obs]),
    )
    table = get_table(sdata)
    table.var = adata.var.copy()
    for key, value in adata.obsm.items():
        if key != Key.obsm.spatial:
            table.obsm[key] = value.copy()
    return sdata
