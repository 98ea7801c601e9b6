"""Each sample's image, spots, spot size and micrometres per pixel, read from the SpatialData itself.

The link comes from spatialdata's own structure, so it survives ``write`` / ``read_zarr``,
subsetting and :func:`spatialdata.concatenate`: the table's ``region`` annotation names the
spots' shapes element, the shapes' ``radius`` gives the spot size, the image is the one that
shares the shapes' pixel coordinate system ``Key.cs.pixels(sample)``, and the µm per pixel is the
``Scale`` from that image to ``Key.cs.micrometres(sample)``. ``uns['histodecon']['samples']`` is
only a cache, read for a bare AnnData table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import get_table_keys
from spatialdata.transformations import BaseTransformation, get_transformation

from ._constants import Key
from ._utils import get_table, samples_of

#: How to set a sample's geometry; ends every geometry error.
SET_GEOMETRY = (
    "Set them with `hd.io.from_spatialdata(sdata, mpp=...)` (the spot size is the radius of the spots' circle "
    "shapes), or read the slide with `hd.io`."
)


@dataclass(frozen=True)
class SampleGeometry:
    """Where one sample's spots and image are, and their scale.

    Attributes
    ----------
    sample
        Sample name (``obs['sample']``).
    mpp
        Micrometres per full-resolution pixel of the image.
    spot_diameter_px
        Spot diameter in full-resolution pixels of the image.
    image_key
        The sample's element of ``sdata.images``.
    shapes_key
        The element of ``sdata.shapes`` that the sample's spots annotate.
    """

    sample: str
    mpp: float
    spot_diameter_px: float
    image_key: str
    shapes_key: str


def check_geometry(sample: str, mpp: object, spot_diameter_px: object) -> None:
    """The one check of a sample's geometry: µm per pixel and spot size present, finite and positive."""
    for what, value in (("µm per pixel (mpp)", mpp), ("spot diameter in pixels", spot_diameter_px)):
        number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
        if not (number and np.isfinite(value) and value > 0):
            problem = "is missing" if value is None else f"is {value!r}"
            raise ValueError(
                f"The {what} of sample {sample!r} {problem}; µm per pixel and spot size must be finite positive "
                f"numbers. {SET_GEOMETRY}"
            )


def sample_geometry(
    data: SpatialData | AnnData, sample: str | None = None, *, table_key: str, image_key: str | None = None
) -> SampleGeometry:
    """The checked geometry of ``sample`` (``None``: the only sample of the table).

    From a SpatialData it is read from the elements; from a bare AnnData table, from the cache
    ``uns['histodecon']['samples']`` written by :mod:`histodecon.io`. ``image_key`` chooses the
    image among several sharing the spots' coordinate system (e.g. squidpy's
    ``normalize_stains`` output beside the raw H&E); without it, several are an error listing them.
    """
    adata = get_table(data, table_key)
    sample = _one_sample(adata, sample)
    if isinstance(data, SpatialData):
        geometry = _from_structure(data, adata, sample, image_key)
    else:
        geometry = _from_cache(adata, sample)
    check_geometry(sample, geometry.mpp, geometry.spot_diameter_px)
    return geometry


def sample_geometries(
    data: SpatialData | AnnData, *, table_key: str, image_key: str | None = None
) -> dict[str, SampleGeometry]:
    """The checked geometry of every sample of the table, in the order of :func:`samples_of`.

    ``image_key``: see :func:`sample_geometry`; with several samples, each must have that image.
    """
    adata = get_table(data, table_key)
    return {
        sample: sample_geometry(data, sample, table_key=table_key, image_key=image_key) for sample in samples_of(adata)
    }


def cache_record(geometry: SampleGeometry) -> dict:
    """The ``uns['histodecon']['samples'][sample]`` record of a geometry: plain numbers and strings."""
    return {
        "mpp": float(geometry.mpp),
        "spot_diameter_px": float(geometry.spot_diameter_px),
        "image_key": geometry.image_key,
        "shapes_key": geometry.shapes_key,
        "coordinate_system": Key.cs.pixels(geometry.sample),
    }


def linear_scale(transformation: BaseTransformation) -> float:
    """The length scale of a 2-D transformation: ``sqrt(|det|)`` of its linear part (``mpp`` for ``Scale(mpp)``)."""
    matrix = transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    return float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))


def affine_between(source, target) -> np.ndarray | None:
    """The 3 x 3 affine matrix from ``source``'s to ``target``'s intrinsic ``(x, y)`` coordinates.

    Taken through a coordinate system both are registered in; ``None`` when they share none.
    """
    source_systems = get_transformation(source, get_all=True)
    target_systems = get_transformation(target, get_all=True)
    shared = [name for name in source_systems if name in target_systems]
    if not shared:
        return None
    axes = {"input_axes": ("x", "y"), "output_axes": ("x", "y")}
    to_shared = source_systems[shared[0]].to_affine_matrix(**axes)
    from_shared = np.linalg.inv(target_systems[shared[0]].to_affine_matrix(**axes))
    return from_shared @ to_shared


def image_pixels(sdata: SpatialData, geometry: SampleGeometry, centres: np.ndarray) -> np.ndarray:
    """Spot centres of ``obsm['spatial']`` in the pixels of the sample's image array.

    ``obsm['spatial']`` holds the sample's pixel coordinate system (``Key.cs.pixels(sample)``),
    which is the image array's own pixels until the image moves in it: a crop by
    :func:`spatialdata.bounding_box_query` adds a translation, which this undoes.
    """
    systems = get_transformation(sdata.images[geometry.image_key], get_all=True)
    transformation = systems.get(Key.cs.pixels(geometry.sample))
    if transformation is None:
        return centres
    to_array = np.linalg.inv(transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))
    if np.allclose(to_array, np.eye(3)):
        return centres
    return centres @ to_array[:2, :2].T + to_array[:2, 2]


def images_sharing(sdata: SpatialData, element, system: str | None = None) -> list[str]:
    """Images registered in a coordinate system of ``element`` (only ``system``, when given)."""
    systems = set(get_transformation(element, get_all=True)) if system is None else {system}
    return [name for name, image in sdata.images.items() if systems & set(get_transformation(image, get_all=True))]


def table_region_keys(adata: AnnData) -> tuple[list[str], str, str]:
    """The shapes names a table annotates, its region key and instance key; refuses a table that annotates none."""
    attrs = adata.uns.get("spatialdata_attrs")
    if not attrs:
        raise ValueError(
            "The table annotates no shapes (it has no `uns['spatialdata_attrs']` region annotation), so its spots "
            "cannot be linked to their circles and image. Annotate it with `spatialdata.models.TableModel.parse("
            "table, region=<shapes name>, region_key='region', instance_key='spot_id')` and then run "
            "`hd.io.from_spatialdata(sdata, mpp=...)`."
        )
    region, region_key, instance_key = get_table_keys(adata)
    return [region] if isinstance(region, str) else list(region), region_key, instance_key


def _one_sample(adata: AnnData, sample: str | None) -> str:
    if sample is not None:
        return str(sample)
    samples = samples_of(adata) if Key.obs.sample in adata.obs else list(_cache(adata))
    if len(samples) != 1:
        raise ValueError(f"The table holds samples {samples}; pass `sample=` to pick one.")
    return samples[0]


def _cache(adata: AnnData) -> dict:
    return adata.uns.get(Key.uns.root, {}).get(Key.uns.samples, {})


def _from_cache(adata: AnnData, sample: str) -> SampleGeometry:
    record = _cache(adata).get(sample)
    if record is None:
        raise KeyError(
            f"The table alone does not say the µm per pixel and spot size of sample {sample!r} (no "
            f"`uns[{Key.uns.root!r}][{Key.uns.samples!r}][{sample!r}]` record). Pass the SpatialData, whose elements "
            f"hold them. {SET_GEOMETRY}"
        )
    return SampleGeometry(
        sample=sample,
        mpp=record.get("mpp"),
        spot_diameter_px=record.get("spot_diameter_px"),
        image_key=record.get("image_key"),
        shapes_key=record.get("shapes_key"),
    )


def _from_structure(sdata: SpatialData, adata: AnnData, sample: str, image_key: str | None) -> SampleGeometry:
    shapes_key = _shapes_of_sample(sdata, adata, sample)
    shapes = sdata.shapes[shapes_key]
    if "radius" not in shapes.columns:
        raise ValueError(
            f"The spots {shapes_key!r} of sample {sample!r} are not circles (no `radius` column), so the spot size "
            f"is unknown. {SET_GEOMETRY}"
        )
    image_key = _image_of_shapes(sdata, shapes, shapes_key, sample, image_key)
    image = sdata.images[image_key]
    return SampleGeometry(
        sample=sample,
        mpp=recorded_mpp(image, adata, sample),
        spot_diameter_px=circles_diameter_px(shapes, affine_between(shapes, image)),
        image_key=image_key,
        shapes_key=shapes_key,
    )


def circles_diameter_px(circles, to_pixels: np.ndarray) -> float:
    """The circles' median diameter in image pixels; ``to_pixels`` is the affine from the circles to the image."""
    radius = float(np.median(circles["radius"].to_numpy(dtype=np.float64))) if len(circles) else np.nan
    return 2 * radius * float(np.sqrt(abs(np.linalg.det(to_pixels[:2, :2]))))


def recorded_mpp(image, adata: AnnData, sample: str) -> float | None:
    """The µm/px of ``sample``: the image's scale to ``f"{sample}_um"``, else the table's cache, else ``None``."""
    systems = get_transformation(image, get_all=True)
    if Key.cs.micrometres(sample) in systems:
        return linear_scale(systems[Key.cs.micrometres(sample)])
    return _cache(adata).get(sample, {}).get("mpp")


def _shapes_of_sample(sdata: SpatialData, adata: AnnData, sample: str) -> str:
    _, region_key, _ = table_region_keys(adata)
    regions = adata.obs[region_key]
    if Key.obs.sample in adata.obs:
        regions = regions[(adata.obs[Key.obs.sample] == sample).to_numpy()]
    names = [str(name) for name in regions.astype(str).unique()]
    if len(names) != 1:
        raise ValueError(
            f"The spots of sample {sample!r} annotate {len(names)} shapes elements {names} "
            f"(`obs[{region_key!r}]`); a sample's spots must be one shapes element. Give each shapes element its own "
            f"`obs[{Key.obs.sample!r}]`, e.g. with `hd.io.from_spatialdata(sdata, shapes_key=...)`."
        )
    if names[0] not in sdata.shapes:
        raise ValueError(
            f"The table annotates shapes {names[0]!r} for sample {sample!r}, which the SpatialData lacks; its shapes "
            f"are {list(sdata.shapes)}. Add the spots' circles as that shapes element, or re-annotate the table "
            "and run `hd.io.from_spatialdata(sdata, shapes_key=...)`."
        )
    return names[0]


def _image_of_shapes(sdata: SpatialData, shapes, shapes_key: str, sample: str, image_key: str | None) -> str:
    pixels = Key.cs.pixels(sample)
    in_pixels = pixels in get_transformation(shapes, get_all=True)
    candidates = images_sharing(sdata, shapes, pixels if in_pixels else None)
    where = f"coordinate system {pixels!r}" if in_pixels else "a coordinate system"
    if image_key is not None:
        if image_key not in sdata.images:
            raise KeyError(f"No image {image_key!r} in the SpatialData; its images are {list(sdata.images)}.")
        if image_key not in candidates:
            raise ValueError(
                f"The image {image_key!r} does not share {where} with the spots {shapes_key!r} of sample {sample!r}, "
                f"so the spots cannot be placed on it; the images that do are {candidates}. Pass one of them as "
                "`image_key=`."
            )
        return image_key
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            f"No image shares {where} with the spots {shapes_key!r} of sample {sample!r}; its images are "
            f"{list(sdata.images)}. Register the H&E image with them: `hd.io.from_spatialdata(sdata, "
            "image_key=..., mpp=...)`."
        )
    raise ValueError(
        f"Several images share {where} with the spots {shapes_key!r} of sample {sample!r}: {candidates}. Say which "
        f"to read: pass `image_key=` (e.g. `hd.tl.embed(sdata, image_key={candidates[-1]!r})`)."
    )
