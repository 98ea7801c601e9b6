"""What a slide looked like when it was embedded: native µm/px and stain vectors per sample.

:func:`histodecon.tl.predict` judges whether a slide lies within a model's reach from these
figures (:mod:`histodecon.tl._estimator._applicability`), so it needs no image. The stain
vectors come from squidpy's Macenko fit (:func:`squidpy.experimental.im.fit_stain_reference`)
on a mosaic of at most :data:`STAIN_PATCHES` small in-tissue patches per sample, evenly spread
over the sample's spots and read at :data:`STAIN_MPP` (a coarse pyramid level where the slide has
one, as squidpy itself fits on the coarsest): a bounded read, whatever the slide's size.
"""

from __future__ import annotations

import numpy as np
import squidpy as sq
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel

from histodecon._constants import Key
from histodecon._geometry import SampleGeometry, sample_geometries
from histodecon._utils import get_table
from histodecon.pp import spot_patches
from histodecon.pp._patches import image_levels
from histodecon.pp._stain import StainReference

#: In-tissue patches per sample behind the stain estimate, their side in pixels and µm/px (colour needs no detail).
STAIN_PATCHES = 64
STAIN_PATCH_PX = 32
STAIN_MPP = 4.0
#: Mean optical density above which a pixel counts as stained tissue (squidpy's Macenko default ``beta``).
TISSUE_OD = 0.15
_MOSAIC = "mosaic"


def slide_record(
    slide: SpatialData, table_key: str, *, image_key: str | None = None, stain_reference: StainReference | None = None
) -> dict[str, dict]:
    """Per sample: ``native_mpp`` and the unit ``hematoxylin`` / ``eosin`` optical-density vectors (RGB).

    Of the image ``image_key`` as the encoders saw it: normalised to ``stain_reference`` where given.

    The vectors are ``None`` where squidpy's fit fails (too little stained tissue, an image that
    is not H&E); :mod:`~histodecon.tl._estimator._applicability` then leaves the stain unjudged.
    """
    geometries = sample_geometries(slide, table_key=table_key, image_key=image_key)
    native = {sample: geometry.mpp for sample, geometry in geometries.items()}
    patches = spot_patches(
        slide,
        size=STAIN_PATCH_PX,
        mpp={sample: _stain_mpp(slide, geometry) for sample, geometry in geometries.items()},
        table_key=table_key,
        image_key=image_key,
        stain_reference=stain_reference,
    )
    table = get_table(slide, table_key)
    samples = table.obs[Key.obs.sample].astype(str).to_numpy()
    tissue = in_tissue_flags(table)
    record = {}
    for sample, mpp in native.items():
        spots = np.flatnonzero((samples == sample) & tissue)
        spots = spots if len(spots) else np.flatnonzero(samples == sample)
        chosen = spots[np.linspace(0, len(spots) - 1, min(STAIN_PATCHES, len(spots))).round().astype(int)]
        record[str(sample)] = {"native_mpp": float(mpp)} | stain_vectors(patches[chosen])
    return record


def _stain_mpp(slide: SpatialData, geometry: SampleGeometry) -> float:
    """:data:`STAIN_MPP`, or finer where a patch read at it would not fit in the image (a small crop)."""
    level = image_levels(slide.images[geometry.image_key])[0]
    fitting = geometry.mpp * min(level.sizes["y"], level.sizes["x"]) / STAIN_PATCH_PX
    return max(geometry.mpp, min(STAIN_MPP, fitting))


def stain_vectors(patches: np.ndarray) -> dict[str, list[float] | None]:
    """The H and E unit vectors of squidpy's Macenko fit on ``patches`` ``(k, size, size, 3)`` uint8, laid side by side."""
    mosaic = np.concatenate(list(patches), axis=1) if len(patches) else np.full((1, 1, 3), 255, np.uint8)
    density = -np.log(np.maximum(mosaic.astype(np.float64), 1.0) / 255.0).mean(axis=2)
    sdata = SpatialData(
        images={_MOSAIC: Image2DModel.parse(np.moveaxis(mosaic, -1, 0), dims=("c", "y", "x"))},
        labels={f"{_MOSAIC}_tissue": Labels2DModel.parse((density > TISSUE_OD).astype(np.uint8), dims=("y", "x"))},
    )
    try:
        matrix = sq.experimental.im.fit_stain_reference(sdata, _MOSAIC).stain_matrix
    except (RuntimeError, ValueError):  # squidpy's StainFittingError is a RuntimeError
        return {"hematoxylin": None, "eosin": None}
    return {"hematoxylin": _rounded(matrix[:, 0]), "eosin": _rounded(matrix[:, 1])}


def _rounded(vector: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in vector]


def in_tissue_flags(table: AnnData) -> np.ndarray:
    """``obs[Key.obs.in_tissue]`` as booleans (all True without the column; missing values False)."""
    if Key.obs.in_tissue not in table.obs:
        return np.ones(table.n_obs, dtype=bool)
    return table.obs[Key.obs.in_tissue].fillna(False).astype(bool).to_numpy()
