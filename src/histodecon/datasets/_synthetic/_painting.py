"""Paint an H&E-like RGB image from the layout of a synthetic slide.

Cells are drawn from the layout's intensity fields, so the pixels around a spot reflect its
expected abundances. Haematoxylin and eosin optical densities (plus haemoglobin in red blood
cells) are painted as separate maps and composed into RGB with the stain vectors of
:data:`skimage.color.rgb_from_hed`. Everything is vectorised: cells are stamped as ellipses
(or hexagons) in chunks and summed with one :func:`numpy.bincount` per map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from skimage.color import rgb_from_hed

from ._layout import CELL_DENSITY, CELL_TYPES, FIELD_UM, Layout, smooth_field

#: Optical density per unit stain in R, G, B. Eosin takes a share of the DAB vector, as the eosin
#: of real H&E absorbs more blue than the pure dye vector (stroma pink rather than magenta).
_H_RGB = rgb_from_hed[0].astype(np.float32)
_E_RGB = (rgb_from_hed[1] + 0.4 * rgb_from_hed[2]).astype(np.float32)
_E_RGB /= np.linalg.norm(_E_RGB)
#: Haemoglobin of red blood cells absorbs like DAB (blue and green), which makes them red.
_D_RGB = rgb_from_hed[2].astype(np.float32)
_T, _L, _F, _A, _EN = range(len(CELL_TYPES))
_SIN60 = np.sqrt(3) / 2

#: Stain of the cytoplasm / stroma between nuclei where the tissue is one type (optical density).
_BACKGROUND_E = np.array([0.45, 0.18, 0.6, 0.5, 0.32])
_BACKGROUND_H = np.array([0.08, 0.08, 0.03, 0.03, 0.06])
_GLASS_H, _GLASS_E, _CLEAR_E = 0.01, 0.03, 0.03
#: Collagen bundles: spacing (um) of the pale clefts between them, and smoothing (um) /
#: amplitude (rad) of their waviness.
_FIBRE_UM, _FIBRE_WARP_UM, _FIBRE_WARP_RAD = 7.0, 30.0, 20.0
#: Fat cells are hexagons on a jittered lattice, shrunk by a random factor to leave septa.
_SEPTUM_UM, _MEMBRANE_UM, _VACUOLE_SHRINK, _VACUOLE_SQUASH = 1.0, 1.0, 0.85, (0.9, 1.0)
#: Endothelial cells line elliptical vessel lumens (minor semi-axis range, um; elongation range).
_CELLS_PER_VESSEL, _LUMEN_UM, _LUMEN_ELONGATION, _VESSEL_WALL_UM = 3, (4.0, 9.0), (1.0, 1.6), 2.0
_RBC_UM = 3.5


def _filled(r: np.ndarray, b_px: np.ndarray) -> np.ndarray:
    """A filled shape with an anti-aliased edge about one pixel wide."""
    return np.clip((1 - r) * b_px + 0.5, 0, 1)


def _vesicular(r: np.ndarray, b_px: np.ndarray) -> np.ndarray:
    """An open nucleus: chromatin along the membrane, a paler centre and a nucleolus."""
    return _filled(r, b_px) * (0.55 + 0.45 * r**2 + 0.6 * np.exp(-((r / 0.2) ** 2)))


def _biconcave(r: np.ndarray, b_px: np.ndarray) -> np.ndarray:
    """A red blood cell: a disc with a paler centre."""
    return _filled(r, b_px) * (0.6 + 0.4 * r**2)


def _wall(thickness_px: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A wall of ``thickness_px`` hugging the outline from outside."""

    def profile(r: np.ndarray, b_px: np.ndarray) -> np.ndarray:
        return np.exp(-((((r - 1) * b_px - thickness_px / 2) / (thickness_px / 2)) ** 2))

    return profile


def _texture(rng: np.random.Generator, shape: tuple[int, int], sd: float) -> np.ndarray:
    """Multiplicative pixel noise with mean 1 and standard deviation ``sd`` (uniform, cheap to draw)."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= 0.5
    noise *= sd * np.sqrt(12)
    noise += 1
    return noise


class _Canvas:
    """Accumulates many small stamps into one image with a single :func:`numpy.bincount`."""

    def __init__(self, shape: tuple[int, int], mpp: float):
        self.shape, self.mpp = shape, mpp
        self._index: list[np.ndarray] = []
        self._value: list[np.ndarray] = []

    def stamp(
        self,
        x_um: np.ndarray,
        y_um: np.ndarray,
        a_um: np.ndarray,
        b_um: np.ndarray,
        angle: np.ndarray,
        weight: np.ndarray,
        profile: Callable[[np.ndarray, np.ndarray], np.ndarray],
        reach: float = 1.0,
        hexagon: bool = False,
    ) -> None:
        """Add ``weight * profile(r)`` of ellipses with semi-axes ``a`` (along ``angle``) and ``b``.

        ``r`` is the elliptical radius (1 on the outline); pixels up to ``reach * a`` are drawn.
        ``hexagon=True`` draws regular hexagons of apothem ``a`` instead (``r`` is the hexagonal norm).
        """
        h, w = self.shape
        n = len(x_um)
        if n == 0:
            return
        x, y = x_um / self.mpp, y_um / self.mpp
        a, b = a_um[:, None, None] / self.mpp, b_um[:, None, None] / self.mpp
        half = int(np.ceil(reach * a.max())) + 1
        offset = np.arange(-half, half + 1)
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        weight = np.broadcast_to(weight, (n,))
        chunk = max(1, 2**19 // len(offset) ** 2)
        for start in range(0, n, chunk):
            s = slice(start, start + chunk)
            px = np.floor(x[s]).astype(np.int64)[:, None, None] + offset[None, None, :]
            py = np.floor(y[s]).astype(np.int64)[:, None, None] + offset[None, :, None]
            dx, dy = px + 0.5 - x[s, None, None], py + 0.5 - y[s, None, None]
            u = (dx * cos[s] + dy * sin[s]) / a[s]
            v = (dy * cos[s] - dx * sin[s]) / b[s]
            if hexagon:
                r = np.maximum(np.abs(u), np.abs(0.5 * u + _SIN60 * v))
                r = np.maximum(r, np.abs(0.5 * u - _SIN60 * v))
            else:
                r = np.sqrt(u**2 + v**2)
            value = profile(r, b[s]) * weight[s, None, None]
            keep = (value > 1e-3) & (px >= 0) & (px < w) & (py >= 0) & (py < h)
            self._index.append((py * w + px)[keep])
            self._value.append(value[keep])

    def render(self) -> np.ndarray:
        """The summed stamps, ``float32`` of :attr:`shape`."""
        h, w = self.shape
        if not self._index:
            return np.zeros(self.shape, dtype=np.float32)
        flat = np.bincount(np.concatenate(self._index), np.concatenate(self._value), minlength=h * w)
        return flat.astype(np.float32).reshape(h, w)


@dataclass(frozen=True)
class _Layers:
    """What cells leave on the slide: cleared areas (fat, lumens), extra eosin, haemoglobin, nuclei."""

    clear: _Canvas
    eosin: _Canvas
    blood: _Canvas
    nuclei: _Canvas


class _Resample:
    """Bilinear interpolation from the ``FIELD_UM`` grid to the image pixels, as two sparse matrices."""

    def __init__(self, layout: Layout):
        (h, w), (ny, nx) = layout.shape_px, layout.tissue.shape
        self._rows, self._cols = self._matrix(h, ny, layout.mpp), self._matrix(w, nx, layout.mpp)

    @staticmethod
    def _matrix(n_px: int, n_field: int, mpp: float) -> sparse.csr_matrix:
        pos = (np.arange(n_px) + 0.5) * mpp / FIELD_UM - 0.5  # pixel centres in field-cell units
        lo = np.floor(pos)
        frac = (pos - lo).astype(np.float32)
        lo = lo.astype(int)
        rows = np.r_[np.arange(n_px), np.arange(n_px)]
        cols = np.r_[np.clip(lo, 0, n_field - 1), np.clip(lo + 1, 0, n_field - 1)]
        return sparse.csr_matrix((np.r_[1 - frac, frac], (rows, cols)), shape=(n_px, n_field))

    def __call__(self, field: np.ndarray) -> np.ndarray:
        along_x = np.ascontiguousarray((self._cols @ field.astype(np.float32).T).T)
        return self._rows @ along_x


def _at(field: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Values of a ``FIELD_UM`` grid at points."""
    ny, nx = field.shape
    return field[np.clip((y_um // FIELD_UM).astype(int), 0, ny - 1), np.clip((x_um // FIELD_UM).astype(int), 0, nx - 1)]


def _poisson_points(intensity: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points of a Poisson process with ``intensity`` per um², constant within each field cell."""
    counts = rng.poisson(intensity * FIELD_UM**2)
    iy, ix = np.nonzero(counts)
    iy, ix = np.repeat(iy, counts[iy, ix]), np.repeat(ix, counts[iy, ix])
    return (ix + rng.random(len(ix))) * FIELD_UM, (iy + rng.random(len(iy))) * FIELD_UM


def _vacuole_spacing() -> float:
    """Lattice spacing (um) giving one adipocyte per ``1 / CELL_DENSITY`` um²."""
    return float(np.sqrt(2 / (np.sqrt(3) * CELL_DENSITY[_A])))


def _clear_share(fraction: np.ndarray) -> np.ndarray:
    """Expected share of the area taken by fat vacuoles and vessel lumens."""

    def mean_square(lo: float, hi: float) -> float:  # E[U²], U ~ uniform(lo, hi)
        return (hi**3 - lo**3) / (3 * (hi - lo))

    apothem = _vacuole_spacing() / 2 - _SEPTUM_UM
    vacuole = (
        2 * np.sqrt(3) * apothem**2 * mean_square(_VACUOLE_SHRINK, 1) * np.mean(_VACUOLE_SQUASH) * CELL_DENSITY[_A]
    )
    elongation = np.mean(_LUMEN_ELONGATION)
    lumen = np.pi * mean_square(*_LUMEN_UM) * elongation * CELL_DENSITY[_EN] / _CELLS_PER_VESSEL
    return vacuole * fraction[_A] + lumen * fraction[_EN]


def _adipocytes(layout: Layout, rng: np.random.Generator, layers: _Layers) -> None:
    """White fat cells: hexagons on a jittered lattice, each kept with the local adipocyte share."""
    spacing = _vacuole_spacing()
    h_um, w_um = layout.tissue.shape[0] * FIELD_UM, layout.tissue.shape[1] * FIELD_UM
    rows = np.arange(0, h_um / (spacing * np.sqrt(3) / 2) + 1)
    cols = np.arange(0, w_um / spacing + 1)
    row, col = np.meshgrid(rows, cols, indexing="ij")
    x = ((col + 0.5 * (row % 2)) * spacing + rng.uniform(0, spacing)).ravel()
    y = (row * spacing * np.sqrt(3) / 2 + rng.uniform(0, spacing)).ravel()
    x, y = x + rng.normal(0, 0.06 * spacing, x.size), y + rng.normal(0, 0.06 * spacing, y.size)
    keep = rng.random(x.size) < _at(layout.fraction[_A] * layout.tissue, x, y)
    x, y = x[keep], y[keep]
    radius = (spacing / 2 - _SEPTUM_UM) * rng.uniform(_VACUOLE_SHRINK, 1, x.size)
    # Slightly squashed and turned, so that the cells are irregular polygons.
    squash, turn = rng.uniform(*_VACUOLE_SQUASH, x.size), rng.normal(0, 0.1, x.size)
    layers.clear.stamp(x, y, radius, radius * squash, turn, 1.0, _filled, reach=1.2, hexagon=True)
    membrane = _wall(_MEMBRANE_UM / layout.mpp)
    layers.eosin.stamp(x, y, radius, radius * squash, turn, 0.3, membrane, reach=1.25, hexagon=True)
    # A flat nucleus pressed against the membrane, visible in about half of the sections.
    shown = rng.random(x.size) < 0.5
    x, y, radius = x[shown], y[shown], radius[shown]
    theta = rng.uniform(0, 2 * np.pi, x.size)
    cx, cy = x + (radius - 1.0) * np.cos(theta), y + (radius - 1.0) * np.sin(theta)
    layers.nuclei.stamp(cx, cy, np.full(x.size, 5.0), np.full(x.size, 1.4), theta + np.pi / 2, 1.0, _filled)


def _vessels(layout: Layout, rng: np.random.Generator, layers: _Layers) -> None:
    """Small vessels: a lumen with a few red blood cells, lined by flat endothelial nuclei."""
    x, y = _poisson_points(layout.intensity[_EN] / _CELLS_PER_VESSEL, rng)
    minor = rng.uniform(*_LUMEN_UM, x.size)
    major = minor * rng.uniform(*_LUMEN_ELONGATION, x.size)
    angle = rng.uniform(0, np.pi, x.size)
    layers.clear.stamp(x, y, major, minor, angle, 1.0, _filled)
    layers.eosin.stamp(x, y, major, minor, angle, 0.35, _wall(_VESSEL_WALL_UM / layout.mpp), reach=1.6)
    # Red blood cells (eosin and haemoglobin) fill the lumens.
    n_rbc = rng.integers(1, 4, x.size)
    rx, ry, room = np.repeat(x, n_rbc), np.repeat(y, n_rbc), np.repeat(np.maximum(minor - _RBC_UM, 0), n_rbc)
    t, d = rng.uniform(0, 2 * np.pi, rx.size), rng.uniform(0, 1, rx.size) * room
    rx, ry, size = rx + d * np.cos(t), ry + d * np.sin(t), np.full(rx.size, _RBC_UM)
    layers.eosin.stamp(rx, ry, size, size, t, 0.9, _biconcave)
    layers.blood.stamp(rx, ry, size, size, t, 0.5, _biconcave)
    # Endothelial nuclei lie flat along the outline, evenly spread around it.
    k = _CELLS_PER_VESSEL
    t = rng.uniform(0, 2 * np.pi, x.size)[:, None] + np.linspace(0, 2 * np.pi, k, endpoint=False)
    t = (t + rng.normal(0, 0.3, t.shape)).ravel()
    a, b, angle = np.repeat(major + 1.2, k), np.repeat(minor + 1.2, k), np.repeat(angle, k)
    u, v = a * np.cos(t), b * np.sin(t)
    cx = np.repeat(x, k) + u * np.cos(angle) - v * np.sin(angle)
    cy = np.repeat(y, k) + u * np.sin(angle) + v * np.cos(angle)
    tangent = angle + np.arctan2(b * np.cos(t), -a * np.sin(t))
    n = cx.size
    layers.nuclei.stamp(cx, cy, rng.normal(5.0, 0.6, n), np.full(n, 1.4), tangent, 1.1, _filled)


def _free_cells(
    layout: Layout, rng: np.random.Generator, clear: np.ndarray, fibre_normal: Callable, nuclei: _Canvas
) -> None:
    """Tumour, lymphocyte and fibroblast nuclei, scattered outside vacuoles and lumens."""
    # Cells landing in a vacuole or lumen are dropped: draw more to keep the expected counts.
    boost = 1 / (1 - _clear_share(layout.fraction))
    h, w = clear.shape
    for k in (_T, _L, _F):
        x, y = _poisson_points(layout.intensity[k] * boost, rng)
        px = np.clip((x / layout.mpp).astype(int), 0, w - 1)
        py = np.clip((y / layout.mpp).astype(int), 0, h - 1)
        free = clear[py, px] < 0.5
        x, y = x[free], y[free]
        n = x.size
        if k == _T:
            major = np.clip(rng.normal(5.0, 0.7, n), 3.5, 7.0)
            minor, angle = major / rng.uniform(1.0, 1.5, n), rng.uniform(0, np.pi, n)
            nuclei.stamp(x, y, major, minor, angle, 0.85 * rng.uniform(0.8, 1.2, n), _vesicular)
        elif k == _L:
            major = rng.normal(2.8, 0.25, n)
            minor, angle = major / rng.uniform(1.0, 1.15, n), rng.uniform(0, np.pi, n)
            nuclei.stamp(x, y, major, minor, angle, 1.5 * rng.uniform(0.9, 1.1, n), _filled)
        else:
            major = np.clip(rng.normal(6.0, 1.0, n), 4.0, 9.0)
            minor = major / rng.uniform(3.0, 4.5, n)
            angle = fibre_normal(x, y) + np.pi / 2 + rng.normal(0, 0.15, n)
            nuclei.stamp(x, y, major, minor, angle, 1.1 * rng.uniform(0.9, 1.1, n), _filled)


class _Fibres:
    """Collagen: stripes of phase ``k0 · x + warp(x)``, bending along a smooth random warp."""

    def __init__(self, layout: Layout, rng: np.random.Generator):
        direction = rng.uniform(0, np.pi)
        self.k0 = 2 * np.pi / _FIBRE_UM * np.array([np.cos(direction), np.sin(direction)])
        self.warp = _FIBRE_WARP_RAD * smooth_field(rng, layout.tissue.shape, _FIBRE_WARP_UM)
        self._warp_dy, self._warp_dx = np.gradient(self.warp, FIELD_UM)

    def normal(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Angle of the stripes' normal (the phase gradient) at points; fibres run across it."""
        return np.arctan2(self.k0[1] + _at(self._warp_dy, x_um, y_um), self.k0[0] + _at(self._warp_dx, x_um, y_um))

    def render(self, layout: Layout, resample: _Resample) -> np.ndarray:
        """Stripe intensity in [0, 1] at every pixel, 1 along the clefts between bundles."""
        h, w = layout.shape_px
        phase = resample(self.warp)
        phase += (self.k0[0] * (np.arange(w) + 0.5) * layout.mpp).astype(np.float32)[None, :]
        phase += (self.k0[1] * (np.arange(h) + 0.5) * layout.mpp).astype(np.float32)[:, None]
        np.sin(phase, out=phase)
        phase += 1
        phase *= 0.5
        return phase


def _stain_maps(layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin and eosin optical density per pixel, and haemoglobin as ``(flat index, density)``."""
    shape, mpp = layout.shape_px, layout.mpp
    fibres = _Fibres(layout, rng)
    layers = _Layers(*(_Canvas(shape, mpp) for _ in range(4)))
    _adipocytes(layout, rng, layers)
    _vessels(layout, rng, layers)
    clear = np.minimum(layers.clear.render(), 1)
    _free_cells(layout, rng, clear, fibres.normal, layers.nuclei)

    resample = _Resample(layout)
    on_tissue = layout.fraction * layout.tissue
    others = np.arange(len(CELL_TYPES)) != _F
    stain_e = fibres.render(layout, resample)
    stain_e **= 6  # narrow pale clefts between broad bundles
    stain_e *= -0.8
    stain_e += 1.1
    stain_e *= resample(on_tissue[_F] * _BACKGROUND_E[_F])
    stain_e += resample(np.tensordot(_BACKGROUND_E[others], on_tissue[others], 1))
    stain_e -= clear * (stain_e - _CLEAR_E)
    stain_e += layers.eosin.render()
    stain_e *= _texture(rng, shape, 0.08)
    stain_h = resample(np.tensordot(_BACKGROUND_H, on_tissue, 1))
    stain_h -= clear * stain_h
    stain_h += layers.nuclei.render() * _texture(rng, shape, 0.25)
    blood = layers.blood.render().ravel()
    bloody = np.flatnonzero(blood)
    return stain_h, stain_e, (bloody, blood[bloody])


def paint(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """Render the slide as ``(3, y, x)`` uint8 RGB."""
    h_gain, e_gain = rng.uniform(0.9, 1.1, 2)  # slide-to-slide staining variation
    stain_h, stain_e, (bloody, blood) = _stain_maps(layout, rng)
    blur = 0.3 / layout.mpp
    stain_h = ndimage.gaussian_filter(stain_h * h_gain + _GLASS_H, blur, output=np.float32)
    stain_e = ndimage.gaussian_filter(stain_e * e_gain + _GLASS_E, blur, output=np.float32)
    noise = _texture(rng, layout.shape_px, 0.01)
    image = np.empty((3, *layout.shape_px), dtype=np.uint8)
    for c in range(3):
        channel = stain_h * _H_RGB[c]
        channel += stain_e * _E_RGB[c]
        channel.ravel()[bloody] += blood * _D_RGB[c]
        np.negative(channel, out=channel)
        np.exp(channel, out=channel)
        channel *= noise
        channel *= 255
        np.clip(channel, 0, 255, out=channel)
        image[c] = channel
    return image
