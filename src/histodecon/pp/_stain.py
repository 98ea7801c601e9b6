"""One stain reference over several training slides, and the lazy normalisation of the patches read, by squidpy.

The estimation and the transform are squidpy's (:mod:`squidpy.experimental.im`): the reference is
:func:`~squidpy.experimental.im.fit_stain_reference` on a mosaic of the training slides' coarsest
pyramid levels, and a slide is normalised by squidpy's Macenko / Vahadane colour-basis transfer
or Reinhard transfer applied to each batch of patches :class:`~histodecon.pp.SpotPatches` reads:
only the patches read are normalised, never a copy of the slide.

Tissue is told from background by the project's glass rule (:mod:`histodecon._glass`: a pixel
brighter than 220 in R, G and B is glass), not by :func:`~squidpy.experimental.im.detect_tissue`:
it is the rule that already decides which spots are in tissue, it needs no labels element in
the user's SpatialData, and it is one comparison per pixel (``detect_tissue``'s Otsu with
classifier refinement costs seconds per slide and its mask must be written to the data). The
same rule keeps glass pixels as they are, like squidpy's ``preserve_background``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import squidpy as sq
import xarray as xr
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel
from squidpy.experimental.im import MacenkoParams, ReinhardParams, StainReference, VahadaneParams
from squidpy.experimental.im._stain import StainFittingError, apply_decomposition, apply_reinhard
from squidpy.experimental.im._stain._conversion import cast_to_image_dtype
from xarray import DataArray, DataTree

from histodecon._constants import Key
from histodecon._geometry import sample_geometries
from histodecon._glass import glass_mask
from histodecon._utils import as_slide_list

#: squidpy's stain methods.
METHODS = ("macenko", "vahadane", "reinhard")
#: The provenance field (embeddings and models) holding a stain reference record.
STAIN_REFERENCE = "stain_reference"
#: Pixels of a slide that a stain fit reads at most: the coarsest level, strided down to this many.
FIT_PIXELS = 2**20
#: Tissue pixels of a slide, drawn once, on which squidpy estimates the slide's own stain for every batch.
SOURCE_PIXELS = 2**14
#: Relative tolerance when two references are compared (records pass through JSON, zarr and h5ad).
SAME_REFERENCE_RTOL = 1e-6
#: What to do when squidpy's stain estimation fails; ends those errors.
FIT_FAILED_FIX = (
    "Check that the image is an RGB H&E scan with stained tissue (pass the H&E as `image_key=`), or use "
    "`method='reinhard'`, which fits colour statistics rather than stain vectors."
)
_ARRAY_FIELDS = ("stain_matrix", "white_point", "max_concentrations", "mu", "sigma")
_PARAMS = {"macenko": MacenkoParams(), "vahadane": VahadaneParams(), "reinhard": ReinhardParams()}
_MOSAIC = "stain_mosaic"


def stain_reference(
    slides: SpatialData | Sequence[SpatialData],
    *,
    method: str = "macenko",
    image_key: str | None = None,
    table_key: str = Key.tables.table,
) -> StainReference:
    """Fit one stain reference over several training slides with squidpy's estimation.

    The coarsest pyramid level of every sample's image (strided to at most :data:`FIT_PIXELS`
    pixels) is laid side by side in one mosaic, its
    tissue told from glass by the project's glass rule (a pixel above 220 in R, G and B is glass),
    and :func:`squidpy.experimental.im.fit_stain_reference` fits the mosaic: every slide's tissue
    pixels count, so the reference is the cohort's stain, not one slide's. Pass it to
    :func:`histodecon.tl.embed` (``stain_reference=``) to normalise every slide to it, or to
    :func:`squidpy.experimental.im.normalize_stains`.

    Parameters
    ----------
    slides
        The training slides (SpatialData read with :mod:`histodecon.io`).
    method
        squidpy's method: ``"macenko"`` (stain vectors by Macenko's angular extremes),
        ``"vahadane"`` (sparse NMF) or ``"reinhard"`` (colour statistics in Ruderman Lab space).
    image_key
        The image to fit on where several share the spots' coordinate system.
    table_key
        The table whose samples name the images.

    Returns
    -------
    squidpy's :class:`~squidpy.experimental.im.StainReference`.

    Examples
    --------
    >>> import histodecon as hd
    >>> slides = [hd.datasets.synthetic(n_spots=50, seed=s, sample=f"s{s}", counts=False) for s in range(2)]
    >>> reference = hd.pp.stain_reference(slides, method="macenko")
    >>> reference.method, reference.stain_matrix.shape
    ('macenko', (3, 3))
    >>> patches = hd.pp.spot_patches(slides[0], size=64, stain_reference=reference)
    >>> patches.stain_record["method"]
    'macenko'
    """
    check_method(method)
    slides = as_slide_list(slides, "slides")
    levels, names = [], []
    for slide in slides:
        for sample, geometry in sample_geometries(slide, table_key=table_key, image_key=image_key).items():
            levels.append(_fit_rgb(slide.images[geometry.image_key], geometry.image_key))
            names.append(sample)
    mosaic = _mosaic(levels)
    try:
        return sq.experimental.im.fit_stain_reference(mosaic, _MOSAIC, method=method)
    except (StainFittingError, ValueError) as error:  # Reinhard on no tissue raises ValueError
        raise ValueError(
            f"squidpy's {method} stain estimation failed on samples {names}: {_reason(error)}. {FIT_FAILED_FIX}"
        ) from error


def check_method(method: object) -> None:
    """Refuse a method squidpy does not have."""
    if method not in METHODS:
        raise ValueError(f"Unknown stain method {method!r}; squidpy's methods are {list(METHODS)}.")


def as_stain_reference(value: Any, name: str = "stain_reference") -> StainReference | None:
    """A squidpy reference from ``value``: ``None``, a reference, its record, or a model carrying one.

    A model (anything with a ``provenance`` mapping, such as a fitted
    :class:`~histodecon.tl.AbundanceRegressor`) gives the reference of its training embeddings,
    so that a new slide is embedded the model's way; a model trained without one gives ``None``.
    """
    if value is None or isinstance(value, StainReference):
        return value
    if isinstance(value, Mapping):
        return reference_from_record(value)
    provenance = getattr(value, "provenance", None)
    if isinstance(provenance, Mapping):
        record = provenance.get(STAIN_REFERENCE)
        return None if record is None else reference_from_record(record)
    raise TypeError(
        f"`{name}` must be a stain reference from `hd.pp.stain_reference` (squidpy's StainReference), its record, "
        f"or a fitted model whose training reference to use; got {type(value).__name__}."
    )


def stain_record(reference: StainReference | None) -> dict | None:
    """The reference as plain JSON values (method and lists of floats), for provenance; ``None`` stays ``None``."""
    if reference is None:
        return None
    record: dict[str, Any] = {"method": str(reference.method)}
    for field in _ARRAY_FIELDS:
        value = getattr(reference, field)
        if value is not None:
            record[field] = np.asarray(value, dtype=np.float64).tolist()
    return record


def reference_from_record(record: Mapping) -> StainReference:
    """Squidpy's reference from a :func:`stain_record` (also after zarr / h5ad turned its lists into arrays)."""
    if not isinstance(record, Mapping) or "method" not in record:
        raise ValueError(
            f"A stain reference record must be a mapping with a `method` and its arrays, got {record!r}. "
            "Make references with `hd.pp.stain_reference`."
        )
    check_method(str(record["method"]))
    unknown = sorted(set(record) - {"method", *_ARRAY_FIELDS})
    if unknown:
        raise ValueError(
            f"A stain reference record has unknown fields {unknown}; its fields are {list(_ARRAY_FIELDS)}."
        )
    arrays = {field: np.asarray(record[field], dtype=np.float64) for field in _ARRAY_FIELDS if field in record}
    try:
        return StainReference(method=str(record["method"]), **arrays)
    except ValueError as error:
        raise ValueError(f"The stain reference record is not a valid {record['method']} reference: {error}") from error


def same_reference(first: Mapping | None, second: Mapping | None) -> bool:
    """Whether two records (or ``None``) name the same reference, to :data:`SAME_REFERENCE_RTOL`."""
    if first is None or second is None:
        return first is None and second is None
    if str(first.get("method")) != str(second.get("method")) or set(first) != set(second):
        return False
    return all(
        np.allclose(np.asarray(first[f], float), np.asarray(second[f], float), rtol=SAME_REFERENCE_RTOL, atol=0)
        for f in _ARRAY_FIELDS
        if f in first
    )


def describe(record: Mapping | None) -> str:
    """A short name of a reference record for messages: its method and first stain vector or means."""
    if record is None:
        return "no stain reference"
    first = record.get("stain_matrix", record.get("mu"))
    vector = np.asarray(first, dtype=float)
    vector = vector[:, 0] if vector.ndim == 2 else vector
    return f"a {record['method']} reference ({', '.join(f'{v:.3f}' for v in vector)})"


@dataclass(frozen=True)
class PatchNormaliser:
    """squidpy's transform of one sample's patches to ``reference``, its source side fixed once per sample.

    squidpy's transfer (:func:`~squidpy.experimental.im._stain.apply_decomposition` for Macenko and
    Vahadane, :func:`~squidpy.experimental.im._stain.apply_reinhard`) estimates the source's stain
    from the pixels it is given to fit on, then maps every pixel of the image. Here the image is
    one batch of patches and the fit pixels are :data:`SOURCE_PIXELS` tissue pixels of the
    sample, drawn once: every batch gets the same map, and only the patches read are normalised.
    Glass pixels keep their value (squidpy's ``preserve_background``, with the glass rule).
    """

    reference: StainReference
    source: np.ndarray  # (3, 1, n) uint8 tissue pixels of the sample

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """The ``(k, h, w, 3)`` uint8 patches normalised to the reference."""
        k, h, w, _ = patches.shape
        image = xr.DataArray(np.moveaxis(patches, -1, 0).reshape(3, k * h, w), dims=("c", "y", "x"))
        fit = xr.DataArray(self.source, dims=("c", "y", "x"))
        everywhere = np.ones(self.source.shape[1:], dtype=bool)
        apply = apply_reinhard if self.reference.method == "reinhard" else apply_decomposition
        normalised = apply(image, self.reference, _PARAMS[self.reference.method], fit_rgb=fit, tissue_mask=everywhere)
        out = np.moveaxis(np.asarray(cast_to_image_dtype(normalised, np.uint8).data).reshape(3, k, h, w), 0, -1)
        glass = glass_mask(patches)
        out[glass] = patches[glass]
        return out


def patch_normaliser(
    element: DataArray | DataTree, reference: StainReference, *, image_key: str, sample: str
) -> PatchNormaliser:
    """The normaliser of one sample's patches: its source pixels drawn from the image's coarsest level.

    The source's stain is estimated here once, so that a slide squidpy cannot fit fails before
    anything is read.
    """
    pixels = np.asarray(_fit_rgb(element, image_key).data).reshape(3, -1)
    tissue = np.flatnonzero(~glass_mask(pixels.T))
    if len(tissue) > SOURCE_PIXELS:
        tissue = np.sort(np.random.default_rng(0).choice(tissue, SOURCE_PIXELS, replace=False))
    normaliser = PatchNormaliser(reference, np.ascontiguousarray(pixels[:, tissue][:, None, :]))
    try:
        normaliser(np.full((1, 1, 1, 3), 128, dtype=np.uint8))
    except (StainFittingError, ValueError) as error:
        raise ValueError(
            f"squidpy could not estimate the stain of sample {sample!r} (image {image_key!r}) to normalise it: "
            f"{_reason(error)}. {FIT_FAILED_FIX} Or embed this slide without `stain_reference=`."
        ) from error
    return normaliser


def _reason(error: Exception) -> str:
    """The reason squidpy gives for a failed fit, without its internal image name or final full stop."""
    return str(getattr(error, "reason", error)).rstrip(".")


def _fit_rgb(element: DataArray | DataTree, image_key: str) -> DataArray:
    """What a stain fit reads of an image: its coarsest level, strided to at most :data:`FIT_PIXELS`, loaded.

    Checked to be ``(c, y, x)`` RGB uint8. Striding keeps every colour statistic of the tissue while
    bounding the fit's time and memory whatever the slide's size.
    """
    if isinstance(element, DataTree):
        levels = [next(iter(element[name].ds.data_vars.values())) for name in element.children]
        level = min(levels, key=lambda lv: lv.sizes["x"] * lv.sizes["y"])
    else:
        level = element
    if level.sizes.get("c") != 3 or level.dtype != np.uint8:
        raise ValueError(
            f"The image {image_key!r} is {level.sizes.get('c')} channels of {level.dtype}; stain estimation needs "
            "an RGB uint8 H&E image. Pass the H&E image as `image_key=`."
        )
    step = max(1, int(np.ceil(np.sqrt(level.sizes["y"] * level.sizes["x"] / FIT_PIXELS))))
    strided = level.transpose("c", "y", "x")[:, ::step, ::step]
    return xr.DataArray(np.asarray(strided.data), dims=("c", "y", "x"))


def _mosaic(levels: list[DataArray]) -> SpatialData:
    """The levels side by side in one image, padded with glass, and the glass rule's tissue mask as labels."""
    height = max(level.sizes["y"] for level in levels)
    width = sum(level.sizes["x"] for level in levels)
    pixels = np.full((3, height, width), 255, dtype=np.uint8)
    x = 0
    for level in levels:
        h, w = level.sizes["y"], level.sizes["x"]
        pixels[:, :h, x : x + w] = level.data
        x += w
    tissue = ~glass_mask(np.moveaxis(pixels, 0, -1))
    return SpatialData(
        images={_MOSAIC: Image2DModel.parse(pixels, dims=("c", "y", "x"))},
        labels={f"{_MOSAIC}_tissue": Labels2DModel.parse(tissue.astype(np.uint8), dims=("y", "x"))},
    )
