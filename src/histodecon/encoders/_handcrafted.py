"""The weights-free ``handcrafted`` encoder: stain, colour, texture and nuclear-density statistics.

It makes every function usable on any machine without downloading a foundation model, and is
the honest baseline those models must beat. The entry reads 112 px patches whose side is 2.24
spot diameters: about 123 um at 1.1 um/px on Visium's 55 um spots, 224 um at 2 um/px on
legacy ST's 100 um spots, with nuclei (6-10 um) still a few pixels across. On her2st that
field beats a fixed 112 um (see ``docs/large_slides.md``). All statistics are computed for a
whole batch at once (no loop over patches), in float32 even under autocast, and do not change
when the patch is flipped or rotated by 90 degrees (exactly so for sides divisible by 16).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from histodecon._glass import GLASS_THRESHOLD

from ._registry import Encoder, register

#: Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB (rows).
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
#: Luminance weights of grey (ITU-R BT.601).
GREY_WEIGHTS = (0.299, 0.587, 0.114)
#: Smallest intensity in optical-density conversion: one uint8 step, so OD <= log10(255).
MIN_INTENSITY = 1 / 255
#: Bin width and count of the stain-concentration histograms used for quantiles.
STAIN_BIN = 0.02
STAIN_BINS = 128
#: Haematoxylin optical densities above which a pixel (or a smoothed blob) counts as nuclear.
NUCLEAR_H = (0.6, 1.0)
QUANTILES = (0.1, 0.5, 0.9)
GREY_BINS = 8
#: Downsampling factors at which gradients are measured; block sides for local variance.
GRADIENT_SCALES = (1, 2, 4)
LOCAL_BLOCKS = (4, 16)
#: Block side for the spatial heterogeneity (sd of block means) of grey and haematoxylin.
HETEROGENEITY_BLOCK = 16
#: Blob densities are counted per this many pixels (a (100 um)^2 at 1 um/px).
BLOB_AREA = 10_000

_RGB = ("r", "g", "b")
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{c}_mean" for c in _RGB),
    *(f"{c}_sd" for c in _RGB),
    *(f"{c}_q{round(q * 100)}" for c in _RGB for q in QUANTILES),
    *(f"{s}_{stat}" for s in ("h", "e") for stat in ("mean", "sd", "q50", "q90")),
    "d_mean",
    "od_mean",
    *(f"grey_hist_{i}" for i in range(GREY_BINS)),
    *(f"gradient_{stat}_x{k}" for k in GRADIENT_SCALES for stat in ("mean", "sd")),
    *(f"local_sd_{k}px" for k in LOCAL_BLOCKS),
    "grey_heterogeneity",
    "tissue_fraction",
    "h_mean_tissue",
    "e_mean_tissue",
    *(f"h_above_{t}" for t in NUCLEAR_H),
    "nuclear_share_of_tissue",
    *(f"blob_density_{t}" for t in NUCLEAR_H),
    "h_heterogeneity",
)


def _histogram(bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Counts ``(b, c, n_bins)`` of int32 bin indices ``(b, c, n)``, all rows in one ``bincount``."""
    b, c, _ = bins.shape
    offset = torch.arange(b * c, device=bins.device, dtype=torch.int32).view(b, c, 1) * n_bins
    counts = torch.bincount((bins + offset).flatten(), minlength=b * c * n_bins)
    return counts.view(b, c, n_bins).float()


def _bin(values: torch.Tensor, width: float, n_bins: int) -> torch.Tensor:
    """Bin index ``floor(values / width)`` of non-negative values, capped at the last bin, as int32."""
    return (values / width).to(torch.int32).clamp_(max=n_bins - 1).flatten(2)


def _quantile_bins(counts: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Index ``(b, c, len(quantiles))`` of the first bin whose cumulative share reaches each quantile."""
    cdf = counts.cumsum(-1) / counts.sum(-1, keepdim=True)
    levels = torch.tensor(quantiles, device=counts.device).view(1, 1, -1, 1)
    return (cdf.unsqueeze(2) < levels).sum(-1)


def _mix(x: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """Weighted sum of the three channels of ``(b, 3, h, w)`` as ``(b, 1, h, w)``."""
    return (x[:, 0:1] * weights[0] + x[:, 1:2] * weights[1]) + x[:, 2:3] * weights[2]


def _sd(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Population sd of ``x`` over ``dims``, centred (two passes: stable, and cheaper than ``torch.std``)."""
    return (x - x.mean(dims, keepdim=True)).square_().mean(dims).sqrt_()


def _block_sd(x: torch.Tensor, k: int) -> torch.Tensor:
    """Population sd within each ``k x k`` block of ``(b, 1, h, w)`` (centred, so stable in float32)."""
    b, _, height, width = x.shape
    blocks = x[..., : height // k * k, : width // k * k].reshape(b, 1, height // k, k, width // k, k)
    return _sd(blocks, (3, 5))


def _symmetric_sum(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Valid sum of ``k`` neighbours along ``dim``, adding mirrored pairs so that flips give identical bits."""
    n = x.shape[dim] - k + 1
    terms = [x.narrow(dim, i, n) for i in range(k)]
    pairs = [terms[i] + terms[k - 1 - i] for i in range(k // 2)] + ([terms[k // 2]] if k % 2 else [])
    total = pairs[0]
    for pair in pairs[1:]:
        total = total + pair
    return total


def _box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Valid ``k x k`` moving average over the last two dims."""
    return _symmetric_sum(_symmetric_sum(x, k, -1), k, -2) / (k * k)


def _euler_number(mask: torch.Tensor) -> torch.Tensor:
    """Regions minus holes of a binary ``(b, 1, h, w)`` mask, 8-connected, from counts of 2 x 2 patterns (Gray 1971)."""
    m = F.pad(mask.float(), (1, 1, 1, 1))
    top_left, top_right, bottom_left, bottom_right = m[..., :-1, :-1], m[..., :-1, 1:], m[..., 1:, :-1], m[..., 1:, 1:]
    ones = (top_left + bottom_right) + (top_right + bottom_left)
    diagonal = (ones == 2) & (top_left == bottom_right)
    return ((ones == 1).sum((1, 2, 3)) - (ones == 3).sum((1, 2, 3)) - 2 * diagonal.sum((1, 2, 3))) / 4


def _blob_density(h: torch.Tensor, threshold: float) -> torch.Tensor:
    """Dark haematoxylin blobs (nuclei) per :data:`BLOB_AREA` pixels of ``h`` ``(b, 1, height, width)``.

    Blobs are the 8-connected regions of the 3 x 3 box-smoothed ``h`` above ``threshold``,
    counted by their Euler number (regions minus holes), which needs no loop.
    """
    area = h.shape[-2] * h.shape[-1]
    return _euler_number(_box_mean(h, 3) > threshold) * (BLOB_AREA / area)


def _gradient_magnitude(grey: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude (valid, 1/8-normalised so that a unit step gives 0.5... 1)."""
    smooth_y = (grey[..., :-2, :] + grey[..., 2:, :]) + 2 * grey[..., 1:-1, :]
    smooth_x = (grey[..., :, :-2] + grey[..., :, 2:]) + 2 * grey[..., :, 1:-1]
    gx = (smooth_y[..., 2:] - smooth_y[..., :-2]) / 8
    gy = (smooth_x[..., 2:, :] - smooth_x[..., :-2, :]) / 8
    return (gx.square() + gy.square()).sqrt_()


class HandcraftedFeatures(nn.Module):
    """Maps ``[0, 1]`` RGB patches ``(b, 3, s, s)`` to ``(b, len(FEATURE_NAMES))`` statistics.

    Stain concentrations come from colour deconvolution of the optical density
    ``-log10(rgb)`` with the Ruifrok-Johnston haematoxylin / eosin / DAB matrix
    (unit-norm rows), clipped at 0.
    """

    def __init__(self) -> None:
        super().__init__()
        rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
        rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
        # od = conc @ rgb_from_hed, so conc = od @ inv(rgb_from_hed) = log10(rgb) @ -inv(rgb_from_hed):
        # row j of rgb_to_stain weighs the channels of log10(rgb) into stain j.
        self.rgb_to_stain = tuple(tuple(row) for row in (-torch.linalg.inv(rgb_from_hed)).T.tolist())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Statistics of a batch, in the order of :data:`FEATURE_NAMES`, computed in float32."""
        with torch.autocast(x.device.type, enabled=False):
            features = self._features(x.float().contiguous())
        return torch.stack([features[name] for name in FEATURE_NAMES], dim=1)

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f: dict[str, torch.Tensor] = {}
        self._colour(x, f)
        log_x = torch.log10(x.clamp(min=MIN_INTENSITY))  # minus the optical density
        h = _mix(log_x, self.rgb_to_stain[0]).clamp_(min=0)
        e = _mix(log_x, self.rgb_to_stain[1]).clamp_(min=0)
        self._stain(log_x, h, e, f)
        self._texture(_mix(x, GREY_WEIGHTS), f)
        self._nuclei(x, h, e, f)
        return f

    def _colour(self, x: torch.Tensor, f: dict) -> None:
        mean = x.mean((2, 3))
        sd = _sd(x, (2, 3))
        quantiles = _quantile_bins(_histogram(_bin(x * 255 + 0.5, 1, 256), 256), QUANTILES) / 255
        for i, c in enumerate(_RGB):
            f[f"{c}_mean"], f[f"{c}_sd"] = mean[:, i], sd[:, i]
            for j, q in enumerate(QUANTILES):
                f[f"{c}_q{round(q * 100)}"] = quantiles[:, i, j]

    def _stain(self, log_x: torch.Tensor, h: torch.Tensor, e: torch.Tensor, f: dict) -> None:
        he = torch.cat([h, e], 1)
        mean = he.mean((2, 3))
        sd = _sd(he, (2, 3))
        counts = _histogram(_bin(he, STAIN_BIN, STAIN_BINS), STAIN_BINS)
        quantiles = (_quantile_bins(counts, (0.5, 0.9)) + 0.5) * STAIN_BIN
        for i, s in enumerate(("h", "e")):
            f[f"{s}_mean"], f[f"{s}_sd"] = mean[:, i], sd[:, i]
            f[f"{s}_q50"], f[f"{s}_q90"] = quantiles[:, i, 0], quantiles[:, i, 1]
        log_mean = log_x.mean((2, 3))
        # The residual (DAB) density is linear in the optical density, so its mean comes from the mean.
        f["d_mean"] = sum(log_mean[:, c] * self.rgb_to_stain[2][c] for c in range(3))
        f["od_mean"] = -log_mean.mean(1)

    def _texture(self, grey: torch.Tensor, f: dict) -> None:
        hist = _histogram(_bin(grey, 1 / GREY_BINS, GREY_BINS), GREY_BINS)[:, 0]
        hist = hist / hist.sum(1, keepdim=True)
        for i in range(GREY_BINS):
            f[f"grey_hist_{i}"] = hist[:, i]
        for k in GRADIENT_SCALES:
            magnitude = _gradient_magnitude(F.avg_pool2d(grey, k) if k > 1 else grey)
            mean = magnitude.mean((1, 2, 3))
            f[f"gradient_mean_x{k}"], f[f"gradient_sd_x{k}"] = mean, _sd(magnitude, (1, 2, 3))
        for k in LOCAL_BLOCKS:
            f[f"local_sd_{k}px"] = _block_sd(grey, k).mean((1, 2, 3))
        blocks = F.avg_pool2d(grey, HETEROGENEITY_BLOCK)
        f["grey_heterogeneity"] = _sd(blocks, (1, 2, 3))

    def _nuclei(self, x: torch.Tensor, h: torch.Tensor, e: torch.Tensor, f: dict) -> None:
        # Not glass in the sense of hd.pp.filter_background: some channel at most GLASS_THRESHOLD.
        tissue = (x.amin(1, keepdim=True) * 255 < GLASS_THRESHOLD + 0.5).float()
        tissue_pixels = tissue.sum((1, 2, 3)).clamp_(min=1)
        f["tissue_fraction"] = tissue.mean((1, 2, 3))
        f["h_mean_tissue"] = (h * tissue).sum((1, 2, 3)) / tissue_pixels
        f["e_mean_tissue"] = (e * tissue).sum((1, 2, 3)) / tissue_pixels
        for t in NUCLEAR_H:
            f[f"h_above_{t}"] = (h > t).float().mean((1, 2, 3))
        f["nuclear_share_of_tissue"] = (h > NUCLEAR_H[0]).float().sum((1, 2, 3)) / tissue_pixels
        for t in NUCLEAR_H:
            f[f"blob_density_{t}"] = _blob_density(h, t)
        blocks = F.avg_pool2d(h, HETEROGENEITY_BLOCK)
        f["h_heterogeneity"] = _sd(blocks, (1, 2, 3))


register(
    Encoder(
        name="handcrafted",
        dim=len(FEATURE_NAMES),
        build=HandcraftedFeatures,
        input_size=112,
        patch_size=112,
        mpp=1.0,  # the field where `field_spots` is switched off
        field_spots=2.24,
        mean=None,
        std=None,
        description="Weights-free stain (HED), colour, texture and nuclear-density statistics; the CPU baseline.",
    )
)
