"""Adopt a SpatialData made elsewhere (spatialdata-io, HEST, the user's own code) as a histodecon slide."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from spatialdata import SpatialData, get_pyramid_levels
from spatialdata.transformations import Affine, Identity, Scale, Sequence, get_transformation, set_transformation
from xarray import DataTree

from histodecon._constants import Key
from histodecon._geometry import (
    SampleGeometry,
    affine_between,
    cache_record,
    check_geometry,
    circles_diameter_px,
    images_sharing,
    recorded_mpp,
    table_region_keys,
)
from histodecon._settings import logger
from histodecon._utils import (
    check_centres,
    check_positive,
    check_spots_inside,
    get_table,
    nearest_neighbour_px,
    provenance,
)
from histodecon.io._grid import VISIUM_PITCH_OVER_DIAMETER
from histodecon.io._visium import VISIUM_SPOT_UM

#: How far a layout's pitch over spot diameter may stray from Visium's to be taken for Visium.
VISIUM_RATIO_TOLERANCE = 0.05


@dataclass
class _Adoption:
    """What :func:`from_spatialdata` writes for one shapes element, computed before anything is written."""

    geometry: SampleGeometry
    rows: np.ndarray
    centres: np.ndarray
    to_pixels: np.ndarray


def from_spatialdata(
    sdata: SpatialData,
    *,
    mpp: float | None = None,
    image_key: str | None = None,
    shapes_key: str | None = None,
    table_key: str = Key.tables.table,
    spot_diameter_um: float | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> SpatialData | None:
    """Adopt a well-formed SpatialData (H&E image, circle shapes, a table annotating them) as a histodecon slide.

    The link between the spots, their circles and their image comes from spatialdata's own
    structure: the table's ``region`` annotation names the shapes element of each spot, the
    image is the one registered in a coordinate system shared with those shapes, and the spot
    size is the shapes' ``radius``. Each shapes element becomes a sample, named by the table's
    ``obs['sample']`` where present, else by the shapes element. For each sample this writes:

    - ``obs['sample']`` where it is missing, and ``obsm['spatial']``: the circle centres mapped into
      the image's full-resolution pixels;
    - two coordinate systems on the image and the shapes: ``Key.cs.pixels(sample)`` (the image's
      pixels) and ``Key.cs.micrometres(sample)`` = ``f"{sample}_um"``, reached by
      ``Scale([mpp, mpp])``. Existing transformations are kept. This is where histodecon reads
      the geometry from, so it survives ``write`` / ``read_zarr`` and :func:`spatialdata.concatenate`;
    - the cache ``uns['histodecon']['samples'][sample]`` (µm/px, spot diameter, element names).

    Parameters
    ----------
    sdata
        The SpatialData to adopt.
    mpp
        Micrometres per full-resolution pixel of the image. Default: read from a ``Scale`` to
        ``f"{sample}_um"`` or the cache when already adopted; else from ``spot_diameter_um``;
        else inferred when the spots have Visium's layout (pitch / diameter = 100 / 55): the
        spot diameter is then 55 um. Otherwise an error asks for it.
    image_key
        The H&E image, when several images share the spots' coordinate system (e.g.
        spatialdata-io's ``hires`` and ``lowres``).
    shapes_key
        Adopt only the spots that annotate this shapes element; default: every one the table
        annotates.
    table_key
        The table of the spots.
    spot_diameter_um
        Physical spot diameter (55 for Visium, 100 for legacy ST), to infer ``mpp`` from the
        circles' radius in pixels.
    overwrite
        Replace an ``obsm['spatial']`` that holds other coordinates than the image pixels.
    copy
        Return an adopted copy (tables copied, images and shapes shallow copies carrying the new
        transformations) and leave ``sdata`` untouched. Default: adopt ``sdata`` in place
        (transformations are added to its image and shapes elements) and return ``None``.

    Returns
    -------
    ``None``, or the adopted copy with ``copy=True``.

    Examples
    --------
    >>> import histodecon as hd
    >>> import spatialdata_io
    >>> sdata = spatialdata_io.visium("outs", dataset_id="V1")  # doctest: +SKIP
    >>> hd.io.from_spatialdata(sdata, image_key="V1_hires_image", overwrite=True)  # doctest: +SKIP
    >>> hd.tl.embed(sdata, models=["uni"])  # doctest: +SKIP
    """
    if not isinstance(sdata, SpatialData):
        raise TypeError(
            f"from_spatialdata needs a SpatialData, got {type(sdata).__name__}. "
            "Convert a scanpy/squidpy AnnData with `hd.io.from_anndata`."
        )
    if mpp is not None:
        check_positive(mpp, "mpp")
    if spot_diameter_um is not None:
        check_positive(spot_diameter_um, "spot_diameter_um")
    if image_key is not None and image_key not in sdata.images:
        raise KeyError(f"No image {image_key!r} in the SpatialData; its images are {list(sdata.images)}.")
    adata = get_table(sdata, table_key)
    regions, region_key, instance_key = table_region_keys(adata)
    if shapes_key is not None:
        if shapes_key not in regions:
            raise ValueError(
                f"The table annotates shapes {regions}, not {shapes_key!r}; pass one of them as `shapes_key=`."
            )
        regions = [shapes_key]
    adoptions = [
        _adoption(sdata, adata, region, region_key, instance_key, mpp=mpp, image_key=image_key,
                  spot_diameter_um=spot_diameter_um)
        for region in regions
    ]  # fmt: skip
    _check_spatial_kept(adata, adoptions, overwrite=overwrite)
    _check_coordinate_systems(sdata, adoptions)

    if copy:
        sdata = _shallow_copy(sdata, adoptions, table_key)
        adata = get_table(sdata, table_key)
    _write(sdata, adata, adoptions)
    return sdata if copy else None


def _adoption(
    sdata: SpatialData,
    adata,
    region: str,
    region_key: str,
    instance_key: str,
    *,
    mpp: float | None,
    image_key: str | None,
    spot_diameter_um: float | None,
) -> _Adoption:
    """Resolve and check one shapes element's sample, image, spot centres and scale."""
    if region not in sdata.shapes:
        raise ValueError(
            f"The table annotates shapes {region!r}, which the SpatialData lacks; its shapes are "
            f"{list(sdata.shapes)}. Add the spots' circles under that name or annotate the table with the right one."
        )
    shapes = sdata.shapes[region]
    if "radius" not in shapes.columns:
        raise ValueError(
            f"The shapes {region!r} are not circles (no `radius` column); histodecon needs the spots as circles "
            "(`spatialdata.models.ShapesModel.parse(centres, geometry=0, radius=...)`)."
        )
    rows = np.flatnonzero((adata.obs[region_key].astype(str) == region).to_numpy())
    sample = _sample_name(adata, rows, region)
    image_key = _image_key(sdata, shapes, region, image_key)
    image = sdata.images[image_key]
    to_pixels = affine_between(shapes, image)

    instances = adata.obs[instance_key].to_numpy()[rows]
    missing = ~pd.Index(instances).isin(shapes.index)
    if missing.any():
        raise ValueError(
            f"{missing.sum()} spots of the table (e.g. {list(instances[missing][:3])}) are not in the shapes "
            f"{region!r} (`obs[{instance_key!r}]` must name rows of the shapes' index)."
        )
    points = shapes.geometry.loc[instances]
    xy1 = np.stack([points.x.to_numpy(), points.y.to_numpy(), np.ones(len(rows))], axis=1)
    centres = check_centres((xy1 @ to_pixels.T)[:, :2], adata.obs_names[rows], f"centres of the shapes {region!r}")
    spot_diameter_px = circles_diameter_px(shapes, to_pixels)
    full = get_pyramid_levels(image, n=0) if isinstance(image, DataTree) else image
    check_spots_inside(centres, adata.obs_names[rows], full.sizes["x"], full.sizes["y"], image_key)
    mpp = _resolve_mpp(mpp, image, adata, sample, centres, spot_diameter_px, spot_diameter_um)
    check_geometry(sample, mpp, spot_diameter_px)
    return _Adoption(SampleGeometry(sample, mpp, spot_diameter_px, image_key, region), rows, centres, to_pixels)


def _sample_name(adata, rows: np.ndarray, region: str) -> str:
    """The spots' ``obs['sample']`` where set (one value), else the shapes element's name."""
    if Key.obs.sample not in adata.obs:
        return region
    names = adata.obs[Key.obs.sample].iloc[rows].dropna().astype(str).unique()
    if len(names) > 1:
        raise ValueError(
            f"The spots of the shapes {region!r} belong to several samples {list(names)} (`obs['sample']`); "
            "a sample's spots must be one shapes element and one image."
        )
    return names[0] if len(names) else region


def _image_key(sdata: SpatialData, shapes, region: str, image_key: str | None) -> str:
    """The H&E image of the shapes: ``image_key`` if given, else the only image sharing their coordinate system."""
    candidates = images_sharing(sdata, shapes)
    if image_key is not None:
        if image_key not in candidates:
            raise ValueError(
                f"The image {image_key!r} shares no coordinate system with the shapes {region!r} (their systems: "
                f"{list(get_transformation(shapes, get_all=True))}), so the spots cannot be placed on it. Register "
                "both in one coordinate system (`spatialdata.transformations.set_transformation`)."
            )
        return image_key
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            f"No image shares a coordinate system with the shapes {region!r}; the images are {list(sdata.images)}. "
            "Register the H&E image and the spots in one coordinate system, then pass it as `image_key=`."
        )
    raise ValueError(
        f"Several images share a coordinate system with the shapes {region!r}: {candidates}. Pass the H&E image "
        "the spots were placed on as `image_key=`."
    )


def _resolve_mpp(mpp, image, adata, sample, centres, spot_diameter_px, spot_diameter_um) -> float:
    """The µm/px: given, already recorded, from a known spot diameter, or from Visium's layout."""
    if mpp is not None:
        return float(mpp)
    recorded = recorded_mpp(image, adata, sample)
    if recorded is not None:
        return recorded
    if spot_diameter_um is not None:
        return spot_diameter_um / spot_diameter_px
    ratio = nearest_neighbour_px(centres) / spot_diameter_px
    if abs(ratio / VISIUM_PITCH_OVER_DIAMETER - 1) <= VISIUM_RATIO_TOLERANCE:
        logger.info(
            f"Sample {sample!r} has Visium's layout (spot pitch {ratio:.2f} spot diameters): "
            f"inferred {VISIUM_SPOT_UM / spot_diameter_px:.4f} um/px from its {VISIUM_SPOT_UM:g} um spots."
        )
        return VISIUM_SPOT_UM / spot_diameter_px
    raise ValueError(
        f"The µm per pixel of sample {sample!r} cannot be inferred: its image has no scale to micrometres and its "
        f"spots ({spot_diameter_px:.1f} px across, {ratio:.2f} diameters apart) do not have Visium's layout. Pass "
        "`mpp=` (the image's µm per pixel) or `spot_diameter_um=` (55 for Visium, 100 for legacy ST)."
    )


def _check_spatial_kept(adata, adoptions: list[_Adoption], *, overwrite: bool) -> None:
    """Refuse to replace other coordinates in ``obsm['spatial']`` unless ``overwrite``."""
    spatial = adata.obsm.get(Key.obsm.spatial)
    if spatial is None or overwrite:
        return
    spatial = np.asarray(spatial, dtype=np.float64)
    for adoption in adoptions:
        if not _holds_centres(spatial, adoption):
            raise KeyError(
                f"`obsm[{Key.obsm.spatial!r}]` holds other coordinates than the spots' pixels in the image "
                f"{adoption.geometry.image_key!r}. Pass `overwrite=True` to replace them (with `copy=True` the "
                "original SpatialData keeps them)."
            )


def _holds_centres(spatial: np.ndarray, adoption: _Adoption) -> bool:
    """Whether ``spatial`` holds the adopted centres; NaN rows (spots an earlier call did not adopt) hold none."""
    if spatial.ndim != 2 or spatial.shape[1] < 2:
        return False
    existing = spatial[adoption.rows, :2]
    known = np.isfinite(existing).all(axis=1)
    return np.allclose(existing[known], adoption.centres[known], rtol=0, atol=1e-6)


def _check_coordinate_systems(sdata: SpatialData, adoptions: list[_Adoption]) -> None:
    """Refuse a sample whose name is already a coordinate system the elements use with another meaning."""
    for adoption in adoptions:
        geometry = adoption.geometry
        for name, wanted in _transformations(adoption).items():
            for key, element in ((geometry.image_key, sdata.images[geometry.image_key]),
                                 (geometry.shapes_key, sdata.shapes[geometry.shapes_key])):  # fmt: skip
                existing = get_transformation(element, get_all=True).get(name)
                if existing is not None and not np.allclose(
                    _matrix(existing), _matrix(wanted[key == geometry.shapes_key])
                ):
                    raise ValueError(
                        f"{key!r} already has a coordinate system {name!r} with another transformation; histodecon "
                        f"names sample {geometry.sample!r}'s systems {Key.cs.pixels(geometry.sample)!r} and "
                        f"{Key.cs.micrometres(geometry.sample)!r}. Set `obs['sample']` of its spots to another name."
                    )


def _matrix(transformation) -> np.ndarray:
    return transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))


def _transformations(adoption: _Adoption) -> dict[str, tuple]:
    """``{coordinate system: (image transformation, shapes transformation)}`` of a sample."""
    mpp, sample = adoption.geometry.mpp, adoption.geometry.sample
    to_pixels = (
        Identity()
        if np.allclose(adoption.to_pixels, np.eye(3))
        else Affine(adoption.to_pixels, input_axes=("x", "y"), output_axes=("x", "y"))
    )
    to_um = Scale([mpp, mpp], axes=("x", "y"))
    shapes_to_um = to_um if isinstance(to_pixels, Identity) else Sequence([to_pixels, to_um])
    return {Key.cs.pixels(sample): (Identity(), to_pixels), Key.cs.micrometres(sample): (to_um, shapes_to_um)}


def _shallow_copy(sdata: SpatialData, adoptions: list[_Adoption], table_key: str) -> SpatialData:
    """A SpatialData sharing the pixels, with its own tables and own image / shapes elements to register."""
    images, shapes = dict(sdata.images), dict(sdata.shapes)
    for adoption in adoptions:
        images[adoption.geometry.image_key] = images[adoption.geometry.image_key].copy(deep=False)
        shapes[adoption.geometry.shapes_key] = shapes[adoption.geometry.shapes_key].copy()
    return SpatialData(
        images=images,
        labels=dict(sdata.labels),
        points=dict(sdata.points),
        shapes=shapes,
        tables={name: table.copy() for name, table in sdata.tables.items()},
        attrs=dict(sdata.attrs),
    )


def _write(sdata: SpatialData, adata, adoptions: list[_Adoption]) -> None:
    """Register the elements in each sample's coordinate systems and write the table's columns and cache."""
    spatial = np.full((adata.n_obs, 2), np.nan)  # spots of shapes not adopted have no position yet
    if Key.obsm.spatial in adata.obsm:
        spatial = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)[:, :2].copy()
    samples = (
        adata.obs[Key.obs.sample].astype(object).to_numpy()
        if Key.obs.sample in adata.obs
        else np.full(adata.n_obs, None, dtype=object)
    )
    records = provenance(adata).setdefault(Key.uns.samples, {})
    for adoption in adoptions:
        geometry = adoption.geometry
        image, shapes = sdata.images[geometry.image_key], sdata.shapes[geometry.shapes_key]
        for element, which in ((image, 0), (shapes, 1)):
            systems = dict(get_transformation(element, get_all=True))
            systems |= {name: pair[which] for name, pair in _transformations(adoption).items()}
            set_transformation(element, systems, set_all=True)
        spatial[adoption.rows] = adoption.centres
        samples[adoption.rows] = geometry.sample
        records[geometry.sample] = cache_record(geometry)
    adata.obsm[Key.obsm.spatial] = spatial
    adata.obs[Key.obs.sample] = pd.Categorical(samples)
    logger.info(f"Adopted samples {[a.geometry.sample for a in adoptions]}: `obsm['spatial']`, `obs['sample']`")
