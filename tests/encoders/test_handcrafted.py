import numpy as np
import pytest
import torch

import histodecon as hd
from histodecon.encoders._handcrafted import FEATURE_NAMES, RGB_FROM_HED

SIZE = hd.encoders.get("handcrafted").input_size


@pytest.fixture(scope="module")
def encoder():
    return hd.encoders.load("handcrafted", device="cpu")


def features(encoder, patches: np.ndarray) -> dict[str, np.ndarray]:
    """Feature name -> values, for uint8 patches ``(b, s, s, 3)``."""
    values = encoder(torch.from_numpy(np.ascontiguousarray(patches))).numpy()
    return dict(zip(FEATURE_NAMES, values.T, strict=True))


def stained(concentrations: np.ndarray) -> np.ndarray:
    """uint8 RGB of per-pixel (H, E, DAB) concentrations ``(..., 3)`` by the Beer-Lambert law."""
    vectors = np.array(RGB_FROM_HED) / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
    return np.round(255 * 10 ** -(concentrations @ vectors)).astype(np.uint8)


@pytest.fixture(scope="module")
def slide_patches():
    sdata = hd.datasets.synthetic(n_spots=40, seed=3)
    return hd.pp.spot_patches(sdata, size=SIZE, mpp=1.0)[:]


def test_entry_names_every_output(encoder):
    entry = hd.encoders.get("handcrafted")
    assert entry.dim == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert (entry.mean, entry.std, entry.weights, entry.mpp) == (None, None, None, 1.0)
    out = encoder(torch.zeros((2, SIZE, SIZE, 3), dtype=torch.uint8))
    assert out.shape == (2, entry.dim) and out.dtype == torch.float32


def test_white_glass_has_no_tissue_and_no_stain(encoder):
    f = features(encoder, np.full((1, SIZE, SIZE, 3), 255, np.uint8))
    for name in ["tissue_fraction", "h_mean", "e_mean", "d_mean", "od_mean", "h_above_0.6", "blob_density_0.6"]:
        assert f[name][0] == 0, name
    assert f["r_q10"][0] == f["g_q50"][0] == f["b_q90"][0] == 1
    assert f["grey_hist_7"][0] == 1 and f["gradient_mean_x1"][0] == 0 and f["r_sd"][0] == 0


@pytest.mark.parametrize(("stain", "amount"), [(0, 0.8), (1, 0.5)])
def test_colour_deconvolution_recovers_a_pure_stain(encoder, stain, amount):
    concentrations = np.zeros(3)
    concentrations[stain] = amount
    f = features(encoder, np.broadcast_to(stained(concentrations), (1, SIZE, SIZE, 3)))
    h, e = (amount, 0.0) if stain == 0 else (0.0, amount)
    np.testing.assert_allclose([f["h_mean"][0], f["e_mean"][0], f["d_mean"][0]], [h, e, 0.0], atol=0.02)
    assert f["tissue_fraction"][0] == 1
    assert f["h_above_0.6"][0] == (1.0 if stain == 0 else 0.0)
    assert f["h_sd"][0] < 1e-6 and f["grey_heterogeneity"][0] < 1e-6  # uniform, up to float rounding


def test_nuclei_are_counted_and_measured(encoder):
    """Nine dark haematoxylin discs on pink stroma: nine blobs, and their area as the nuclear share."""
    y, x = np.mgrid[:SIZE, :SIZE]
    discs = np.zeros((SIZE, SIZE), bool)
    for cy in (20, 56, 92):
        for cx in (20, 56, 92):
            discs |= (y - cy) ** 2 + (x - cx) ** 2 <= 16
    concentrations = np.where(discs[..., None], [1.3, 0.0, 0.0], [0.0, 0.4, 0.0])
    f = features(encoder, stained(concentrations)[None])
    np.testing.assert_allclose(f["blob_density_0.6"][0], 9 * 1e4 / SIZE**2)
    np.testing.assert_allclose(f["blob_density_1.0"][0], 9 * 1e4 / SIZE**2)
    np.testing.assert_allclose(f["h_above_0.6"][0], discs.mean(), rtol=1e-6)
    np.testing.assert_allclose(f["nuclear_share_of_tissue"][0], discs.mean(), rtol=1e-6)
    np.testing.assert_allclose(f["e_mean_tissue"][0], 0.4 * (1 - discs.mean()), atol=0.01)


def test_a_ring_is_one_region_with_one_hole(encoder):
    y, x = np.mgrid[:SIZE, :SIZE]
    radius2 = (y - 56) ** 2 + (x - 56) ** 2
    ring = (radius2 <= 30**2) & (radius2 >= 20**2)
    f = features(encoder, stained(np.where(ring[..., None], [1.3, 0.0, 0.0], [0.0, 0.0, 0.0]))[None])
    assert f["blob_density_0.6"][0] == 0  # Euler number: 1 region - 1 hole


def test_flips_and_rotations_leave_the_statistics_unchanged(encoder, slide_patches):
    x = slide_patches[:8]
    reference = encoder(torch.from_numpy(x)).numpy()
    for moved in [x[:, ::-1], x[:, :, ::-1], np.rot90(x, 1, axes=(1, 2)), np.rot90(x, 3, axes=(1, 2))]:
        out = encoder(torch.from_numpy(np.ascontiguousarray(moved))).numpy()
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)


def test_deterministic_finite_and_independent_of_the_batch(encoder, slide_patches):
    noise = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    x = torch.from_numpy(np.concatenate([slide_patches, noise]))
    whole = encoder(x).numpy()
    assert np.isfinite(whole).all()
    assert np.array_equal(whole, encoder(x).numpy())
    assert np.array_equal(whole[5:12], encoder(x[5:12]).numpy())


def test_autocast_does_not_change_the_features(encoder, slide_patches):
    x = torch.from_numpy(slide_patches[:4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(encoder(x), encoder.model(encoder.preprocess(x)).float())
    assert torch.equal(encoder(x), encoder.model(encoder.preprocess(x)))


def _ridge_predict(train_x, train_y, test_x, alpha=1.0):
    mean, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / sd, (test_x - mean) / sd
    coef = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (train_y - train_y.mean(0)))
    return b @ coef + train_y.mean(0)


def test_features_predict_abundances_of_an_unseen_synthetic_slide(encoder):
    slides = [hd.datasets.synthetic(n_spots=300, seed=seed, counts=False) for seed in (0, 1)]
    x = [encoder(torch.from_numpy(hd.pp.spot_patches(s, size=SIZE, mpp=1.0)[:])).numpy() for s in slides]
    y = [s.tables["table"].obsm["abund"] for s in slides]
    predicted = _ridge_predict(x[0], y[0].to_numpy(), x[1])
    assert hd.metrics.cc_score(y[1].to_numpy(), predicted) > 0.5


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@pytest.mark.data
def test_her2st_tissue_spots_separate_from_glass(encoder, her2st_dir):
    from histodecon._glass import glass_mask
    from histodecon.pp._patches import image_levels

    sdata = hd.datasets.her2st("C2", data_dir=her2st_dir)
    tissue = features(encoder, hd.pp.spot_patches(sdata, size=SIZE, mpp=1.0)[:])
    # Glass: windows of the same 112 um field, away from the spots, that the coarsest level shows to be blank.
    info = sdata.tables["table"].uns["histodecon"]["samples"]["C2"]
    levels = image_levels(sdata.images[info["image_key"]])
    full, coarse = levels[0].data, np.moveaxis(levels[-1].data.compute(), 0, -1)
    factor = full.shape[1] / coarse.shape[0]
    side = round(SIZE * 1.0 / info["mpp"])
    step = int(np.ceil(side / factor))
    blank = glass_mask(coarse)[: coarse.shape[0] // step * step, : coarse.shape[1] // step * step]
    blank = blank.reshape(blank.shape[0] // step, step, -1, step).all(axis=(1, 3))
    starts = np.round(np.argwhere(blank) * step * factor).astype(int)
    starts = starts[(starts + side <= full.shape[1:]).all(axis=1)]
    pick = np.random.default_rng(0).choice(len(starts), size=min(60, len(starts)), replace=False)
    crops = np.stack([np.asarray(full[:, y : y + side, x : x + side]) for y, x in starts[pick]])
    crops = np.ascontiguousarray(np.moveaxis(crops, 1, -1))
    glass = features(encoder, crops)
    assert len(pick) >= 30
    assert all(np.isfinite(values).all() for values in [*tissue.values(), *glass.values()])
    for name in ["tissue_fraction", "od_mean", "h_mean", "h_q90", "gradient_mean_x1", "blob_density_0.6"]:
        assert _auc(tissue[name], glass[name]) > 0.9, name


def test_embedding_is_the_module_on_the_spot_patches(encoder):
    """``hd.tl.embed`` writes the module's output on ``hd.pp.spot_patches`` cut at the entry's patch field."""
    sdata = hd.datasets.synthetic(n_spots=12, seed=3)
    hd.tl.embed(sdata, models=["handcrafted"], device="cpu")
    field_spots = hd.encoders.get("handcrafted").field_spots
    mpp = field_spots * 55 / SIZE  # the synthetic slide has Visium's 55 um spots
    assert sdata.tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]["patch_mpp"] == {"synthetic": mpp}
    patches = hd.pp.spot_patches(sdata, size=SIZE, mpp=mpp)[:]
    expected = encoder(torch.from_numpy(patches)).numpy()
    np.testing.assert_allclose(sdata.tables["table"].obsm["X_handcrafted"], expected, rtol=1e-5, atol=1e-6)
