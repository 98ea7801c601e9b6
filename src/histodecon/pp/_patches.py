"""Lazy, indexable reading of fixed-size RGB patches centred on the spots of a slide."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import dask.array as da
import numpy as np
import pandas as pd
from PIL import Image
from spatialdata import SpatialData
from xarray import DataArray, DataTree

from histodecon._constants import Key
from histodecon._geometry import SampleGeometry, image_pixels, sample_geometries
from histodecon._pyramid import halve
from histodecon._utils import check_centres, check_samples_named, check_spot_spacing, check_spots_inside, get_table
from histodecon.pp._chunk_cache import ChunkCache
from histodecon.pp._stain import PatchNormaliser, StainReference, as_stain_reference, patch_normaliser, stain_record

#: Decoded image chunks kept between reads; bounds memory whatever the slide size.
CACHE_BYTES = 256 * 2**20
#: A pyramid level may be this much coarser than requested and still be used (rounding of level shapes).
LEVEL_TOLERANCE = 1.01
#: Value of pixels outside the image: white, like glass.
PAD_VALUE = 255


def image_levels(element: DataArray | DataTree) -> list[DataArray]:
    """The resolution levels of a SpatialData image element, finest first."""
    if isinstance(element, DataTree):
        levels = [next(iter(element[name].ds.data_vars.values())) for name in element.children]
    else:
        levels = [element]
    return sorted(levels, key=lambda level: -level.sizes["x"] * level.sizes["y"])


class _Level:
    """One stored pyramid level of one sample's image, with its chunk grid, read ``halvings`` times halved.

    The halvings make up for a level the image does not store (see :mod:`histodecon._pyramid`):
    the level read is ``height x width`` pixels, ``factor_yx`` full-resolution pixels each.
    """

    def __init__(self, level: DataArray, halvings: int, full_hw: tuple[int, int], name: str) -> None:
        data = level.data if isinstance(level.data, da.Array) else da.from_array(level.data)
        if data.shape[0] != 3:
            raise ValueError(
                f"Image {name!r} has {data.shape[0]} channels; patches need RGB (3 channels). "
                "Read the slide with `hd.io`, which converts images to RGB."
            )
        if data.dtype != np.uint8:
            raise ValueError(
                f"Image {name!r} has dtype {data.dtype}; patches need uint8 RGB. "
                "Convert the image to 8 bits per channel before building the SpatialData."
            )
        self.data = data.rechunk({0: -1})
        self.halvings = halvings
        self.height, self.width = (side >> halvings for side in self.data.shape[1:])
        self.factor_yx = (full_hw[0] / self.height, full_hw[1] / self.width)
        self.y_edges = np.concatenate([[0], np.cumsum(self.data.chunks[1])])
        self.x_edges = np.concatenate([[0], np.cumsum(self.data.chunks[2])])

    def chunks_of(self, y0: int, x0: int, h: int, w: int) -> list[tuple[int, int]]:
        """Chunk indices of the stored level under the window ``[y0, y0 + h) x [x0, x0 + w)`` of the level read."""
        step = 1 << self.halvings
        return self._chunks_under(y0 * step, x0 * step, h * step, w * step)

    def _chunks_under(self, y0: int, x0: int, h: int, w: int) -> list[tuple[int, int]]:
        """Chunk indices overlapping the window ``[y0, y0 + h) x [x0, x0 + w)`` of the stored level."""
        y0, y1 = max(y0, 0), min(y0 + h, self.data.shape[1])
        x0, x1 = max(x0, 0), min(x0 + w, self.data.shape[2])
        if y1 <= y0 or x1 <= x0:
            return []
        rows = range(np.searchsorted(self.y_edges, y0, "right") - 1, np.searchsorted(self.y_edges, y1, "left"))
        cols = range(np.searchsorted(self.x_edges, x0, "right") - 1, np.searchsorted(self.x_edges, x1, "left"))
        return [(i, j) for i in rows for j in cols]

    def fill(self, out: np.ndarray, y0: int, x0: int, chunks: dict[tuple[int, int], np.ndarray]) -> None:
        """Copy the window of the level read starting at ``(y0, x0)`` with the shape of ``out`` into ``out``.

        ``out`` must hold :data:`PAD_VALUE` where the window leaves the image.
        """
        if self.halvings == 0:
            self._copy(out, y0, x0, chunks)
            return
        step = 1 << self.halvings
        h, w = out.shape[:2]
        stored = np.full((h * step, w * step, 3), PAD_VALUE, dtype=np.uint8)
        self._copy(stored, y0 * step, x0 * step, chunks)
        window = np.moveaxis(stored, -1, 0)
        for _ in range(self.halvings):
            window = halve(window)
        ya, yb = max(y0, 0), min(y0 + h, self.height)
        xa, xb = max(x0, 0), min(x0 + w, self.width)
        if yb > ya and xb > xa:  # past the level's last pixel stays padding, as in a stored level
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = np.moveaxis(window, 0, -1)[ya - y0 : yb - y0, xa - x0 : xb - x0]

    def _copy(self, out: np.ndarray, y0: int, x0: int, chunks: dict[tuple[int, int], np.ndarray]) -> None:
        """Copy the stored level's window starting at ``(y0, x0)`` with the shape of ``out`` into ``out``."""
        h, w = out.shape[:2]
        for i, j in self._chunks_under(y0, x0, h, w):
            cy0, cy1, cx0, cx1 = self.y_edges[i], self.y_edges[i + 1], self.x_edges[j], self.x_edges[j + 1]
            ya, yb = max(y0, cy0), min(y0 + h, cy1)
            xa, xb = max(x0, cx0), min(x0 + w, cx1)
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = chunks[i, j][ya - cy0 : yb - cy0, xa - cx0 : xb - cx0]


class SpotPatches:
    """Square RGB patches centred on the spots of a table, read lazily from the slide images.

    Created by :func:`histodecon.pp.spot_patches`. Indexing follows the table order:
    ``patches[i]`` is one ``(size, size, 3)`` uint8 patch, ``patches[slice]``,
    ``patches[int_array]`` and ``patches[bool_mask]`` give ``(k, size, size, 3)``.
    Only the image chunks under the requested patches are read; decoded chunks are kept in a
    cache of :data:`CACHE_BYTES` so that neighbouring spots share reads.

    Attributes
    ----------
    size
        Patch side in pixels.
    obs_names
        Spot names, in table order.
    mpp
        Micrometres per pixel of each spot's patch.
    sample_mpp
        Micrometres per pixel of the patches of each sample (plain floats, by sample name).
    padded
        Whether each spot's patch reaches past the image border (that part is white).
    stain_record
        The stain reference the patches are normalised to, as plain JSON values (``None``: as scanned).
    """

    def __init__(
        self,
        sdata: SpatialData,
        *,
        size: int,
        mpp: float | None | Mapping[str, float | None],
        table_key: str,
        image_key: str | None = None,
        stain_reference: StainReference | None = None,
    ) -> None:
        if not isinstance(sdata, SpatialData):
            raise TypeError(
                f"spot_patches needs a SpatialData (the images are read from it), got {type(sdata).__name__}. "
                "Read the slide with `hd.io` first."
            )
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
            raise ValueError(f"`size` must be a positive integer number of pixels, got {size!r}.")
        for value in mpp.values() if isinstance(mpp, Mapping) else [mpp]:
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.number)
                or not (np.isfinite(value) and value > 0)
            ):
                raise ValueError(f"`mpp` must be a positive number of micrometres per pixel or None, got {value!r}.")
        adata = get_table(sdata, table_key)
        check_samples_named(adata, "reading patches")
        spatial = Key.obsm.spatial
        if spatial not in adata.obsm:
            raise KeyError(
                f"The table has no `obsm[{spatial!r}]` spot centres (its obsm keys are {list(adata.obsm)}). Read the slide "
                "with `hd.io`."
            )
        centres = check_centres(adata.obsm[spatial], adata.obs_names, f"`obsm[{spatial!r}]`")
        geometries = sample_geometries(sdata, table_key=table_key, image_key=image_key)
        if isinstance(mpp, Mapping) and (missing := sorted(set(geometries) - set(mpp))):
            raise KeyError(f"`mpp` gives no micrometres per pixel for samples {missing}; give one for every sample.")
        spot_samples = adata.obs[Key.obs.sample].astype(str).to_numpy()

        self.size = int(size)
        self.obs_names = pd.Index(adata.obs_names)
        n = adata.n_obs
        self.mpp = np.empty(n)
        self.sample_mpp: dict[str, float] = {}
        self.padded = np.zeros(n, dtype=bool)
        self._level = np.zeros(n, dtype=np.intp)
        self._origin = np.zeros((n, 2), dtype=np.int64)  # (y0, x0) of the read window in level pixels
        self._box = np.zeros((n, 4))  # resampling box (x0, y0, x1, y1) inside the read window
        self._levels: list[_Level] = []
        self._window: list[tuple[int, int]] = []  # (h, w) of the read window per level
        self._resample: list[bool] = []
        self._cache = ChunkCache(CACHE_BYTES)
        self._lock = threading.Lock()
        self._stain_reference = stain_reference
        self._normalisers: list[PatchNormaliser | None] = []  # per level
        self.stain_record = stain_record(stain_reference)

        for sample, geometry in geometries.items():
            spots = np.flatnonzero(spot_samples == sample)
            check_spot_spacing(centres[spots], geometry.mpp, f"sample {sample!r}")
            sample_mpp = mpp[sample] if isinstance(mpp, Mapping) else mpp
            in_image = image_pixels(sdata, geometry, centres[spots])
            self._add_sample(sdata.images[geometry.image_key], geometry, spots, in_image, sample_mpp)
            self.sample_mpp[sample] = float(geometry.mpp if sample_mpp is None else sample_mpp)

    def _add_sample(
        self, element, geometry: SampleGeometry, spots: np.ndarray, centres: np.ndarray, mpp: float | None
    ) -> None:
        """Choose the pyramid level and precompute the read window of each spot of one sample."""
        native_mpp = geometry.mpp
        image_key = geometry.image_key
        levels = image_levels(element)
        full_h, full_w = levels[0].sizes["y"], levels[0].sizes["x"]
        factors = [(full_h / lv.sizes["y"], full_w / lv.sizes["x"]) for lv in levels]
        scale = 1.0 if mpp is None else mpp / native_mpp  # full-resolution pixels per output pixel
        patch_px = self.size * scale
        if patch_px > full_h and patch_px > full_w:
            raise ValueError(
                f"Patches of {self.size} px at {native_mpp * scale:g} um/px cover {patch_px:.0f} full-resolution px, "
                f"more than the whole {full_w} x {full_h} px image {image_key!r}. Check `size` and `mpp`, "
                "and the slide's um/px (is the image a downscaled copy?)."
            )
        check_spots_inside(centres, self.obs_names[spots], full_w, full_h, image_key)
        # the coarsest level not coarser than the patch's pixels: stored, then halved while that still holds
        chosen = max(i for i, f in enumerate(factors) if i == 0 or max(f) <= scale * LEVEL_TOLERANCE)
        n_halvings = 0 if mpp is None else int(np.log2(max(scale * LEVEL_TOLERANCE / max(factors[chosen]), 1)))
        level = _Level(levels[chosen], n_halvings, (full_h, full_w), image_key)
        level_id = len(self._levels)
        self._levels.append(level)
        self._normalisers.append(
            None
            if self._stain_reference is None
            else patch_normaliser(element, self._stain_reference, image_key=image_key, sample=geometry.sample)
        )
        self.mpp[spots] = native_mpp if mpp is None else mpp
        self._level[spots] = level_id

        half = self.size * scale / 2
        cx, cy = centres[:, 0], centres[:, 1]
        if mpp is None:
            # Native crop: pixels x0 .. x0 + size - 1 with x0 = round(cx - size / 2).
            origin = np.floor(np.stack([cy, cx], axis=1) - self.size / 2 + 0.5).astype(np.int64)
            self._origin[spots] = origin
            self.padded[spots] = (origin < 0).any(axis=1) | (origin + self.size > [full_h, full_w]).any(axis=1)
            self._window.append((self.size, self.size))
            self._resample.append(False)
            return
        self.padded[spots] = (cx - half < 0) | (cy - half < 0) | (cx + half > full_w) | (cy + half > full_h)
        fy, fx = level.factor_yx
        box_x0, box_y0 = (cx - half) / fx, (cy - half) / fy
        box_w, box_h = 2 * half / fx, 2 * half / fy
        origin_y, origin_x = np.floor(box_y0) - 1, np.floor(box_x0) - 1
        self._origin[spots] = np.stack([origin_y, origin_x], axis=1)
        self._box[spots] = np.stack(
            [box_x0 - origin_x, box_y0 - origin_y, box_x0 - origin_x + box_w, box_y0 - origin_y + box_h], axis=1
        )
        self._window.append((int(np.ceil(box_h)) + 3, int(np.ceil(box_w)) + 3))
        self._resample.append(True)

    def __len__(self) -> int:
        return len(self.obs_names)

    def __repr__(self) -> str:
        return f"SpotPatches of {len(self)} spots, {self.size} x {self.size} px"

    def __getitem__(self, key) -> np.ndarray:
        index = np.arange(len(self))[key]
        if np.ndim(index) == 0:
            return self._read(np.array([index]))[0]
        return self._read(np.asarray(index))

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, patches)`` for consecutive batches of spots in table order."""
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be positive, got {batch_size!r}.")
        for start in range(0, len(self), batch_size):
            index = np.arange(start, min(start + batch_size, len(self)))
            yield index, self._read(index)

    def _read(self, index: np.ndarray) -> np.ndarray:
        out = np.full((len(index), self.size, self.size, 3), PAD_VALUE, dtype=np.uint8)
        with self._lock:
            for level_id in np.unique(self._level[index]):
                rows = np.flatnonzero(self._level[index] == level_id)
                self._read_level(level_id, index[rows], out, rows)
        for level_id in np.unique(self._level[index]):  # outside the lock: reading threads normalise in parallel
            if (normaliser := self._normalisers[level_id]) is not None:
                rows = np.flatnonzero(self._level[index] == level_id)
                out[rows] = normaliser(out[rows])
        return out

    def _read_level(self, level_id: int, spots: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        level, (h, w), resample = self._levels[level_id], self._window[level_id], self._resample[level_id]
        needed = sorted({key for s in spots for key in level.chunks_of(*self._origin[s], h, w)})
        chunks = self._cache.get_many(level.data, needed)
        window = np.empty((h, w, 3), dtype=np.uint8)
        for row, spot in zip(rows, spots, strict=True):
            if not resample:
                level.fill(out[row], *self._origin[spot], chunks)
                continue
            window.fill(PAD_VALUE)
            level.fill(window, *self._origin[spot], chunks)
            patch = Image.fromarray(window).resize(
                (self.size, self.size), Image.Resampling.BILINEAR, box=tuple(self._box[spot])
            )
            out[row] = np.asarray(patch)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"], state["_lock"] = ChunkCache(CACHE_BYTES), None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def spot_patches(
    sdata: SpatialData,
    *,
    size: int = 224,
    mpp: float | None | Mapping[str, float | None] = None,
    table_key: str = Key.tables.table,
    image_key: str | None = None,
    stain_reference: StainReference | None = None,
) -> SpotPatches:
    """Lazy, indexable patches of ``size`` x ``size`` RGB pixels centred on every spot.

    Patches follow the table order; a table holding several samples (e.g. slides joined by
    :func:`spatialdata.concatenate`) reads each spot from its own sample's image: the image that
    shares the coordinate system of the shapes the spots annotate, at the µm per pixel of its
    ``Scale`` to ``f"{sample}_um"`` (see :func:`histodecon.io.from_spatialdata`). Nothing is read
    until the patches are indexed, and then only the image chunks under them, so memory does
    not grow with the slide.

    Parameters
    ----------
    sdata
        Slide(s) read with :mod:`histodecon.io` or adopted by :func:`histodecon.io.from_spatialdata`.
    size
        Patch side in output pixels.
    mpp
        Micrometres per pixel of the patches. ``None`` (default, as in the paper) crops
        ``size`` pixels at the image's native resolution: the patch covers pixel columns
        ``x0 .. x0 + size - 1`` with ``x0 = round(x - size / 2)`` (rows likewise). Otherwise
        the coarsest pyramid level that is not coarser than ``mpp`` is read and the window
        of ``size * mpp`` micrometres around the spot centre is resampled (bilinear, with
        antialiasing) to exactly ``size`` pixels. A mapping gives each sample its own
        (e.g. a field of a few spot diameters, whatever the spot size of each slide).
    table_key
        Name of the table whose spots are read.
    image_key
        The image to read where several share the spots' coordinate system (e.g. the
        ``f"{image_key}_normalized"`` image of :func:`squidpy.experimental.im.normalize_stains`
        beside the raw H&E); several without it are an error that lists them.
    stain_reference
        Normalise the patches to this stain reference (:func:`histodecon.pp.stain_reference`,
        its record, or a fitted model whose training reference to use) with squidpy's transform,
        lazily: only the image chunks under the patches read are normalised. ``None``: as scanned.

    Returns
    -------
    :class:`~histodecon.pp.SpotPatches`
        A :class:`SpotPatches`; parts of a patch beyond the image border are white (255) and
        flagged in ``SpotPatches.padded``.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.her2st("C2")  # doctest: +SKIP
    >>> patches = hd.pp.spot_patches(sdata, size=224)  # doctest: +SKIP
    >>> patches[0].shape  # doctest: +SKIP
    (224, 224, 3)
    >>> for index, batch in patches.batches(64):  # doctest: +SKIP
    ...     print(index[0], batch.shape)

    A field of two spot diameters, at the um/px it needs on each sample:

    >>> sdata = hd.datasets.synthetic(n_spots=50, seed=0)
    >>> spot_um = 55.0  # Visium
    >>> patches = hd.pp.spot_patches(sdata, size=112, mpp={"synthetic": 2 * spot_um / 112})
    >>> round(patches.sample_mpp["synthetic"] * 112)
    110
    """
    return SpotPatches(
        sdata,
        size=size,
        mpp=mpp,
        table_key=table_key,
        image_key=image_key,
        stain_reference=as_stain_reference(stain_reference),
    )
