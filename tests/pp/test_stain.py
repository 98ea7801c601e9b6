"""hd.pp.stain_reference, squidpy's normalisation of the patches read, and the reference's travels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import squidpy as sq
from anndata import read_h5ad
from scipy.spatial.transform import Rotation
from spatialdata import read_zarr
from spatialdata.models import Image2DModel, Labels2DModel
from spatialdata.transformations import get_transformation

import histodecon as hd
from histodecon._glass import glass_mask
from histodecon.pp._stain import reference_from_record, same_reference, stain_record
from histodecon.tl._estimator._file import model_paths, record_checksum


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hd.settings, "progress", False)


def slide(seed: int = 0, n_spots: int = 40):
    return hd.datasets.synthetic(n_spots=n_spots, seed=seed, sample=f"s{seed}", counts=False)


def image_of(sdata) -> tuple[str, np.ndarray]:
    (key,) = sdata.images
    return key, np.asarray(sdata.images[key].data)


def with_image(sdata, pixels: np.ndarray):
    """``sdata`` with its image replaced by ``pixels`` ``(c, y, x)``, in the same coordinate systems."""
    key, _ = image_of(sdata)
    systems = get_transformation(sdata.images[key], get_all=True)
    sdata.images[key] = Image2DModel.parse(pixels, dims=("c", "y", "x"), transformations=systems)
    return sdata


def restained(pixels: np.ndarray, reference, degrees: float) -> np.ndarray:
    """The image re-stained on purpose: its H and E optical-density vectors rotated by ``degrees`` about the residual."""
    matrix, white = reference.stain_matrix, reference.white_point[:, None]
    density = -np.log((pixels.reshape(3, -1).astype(np.float64) + 1) / (white + 1))
    concentrations = np.linalg.pinv(matrix) @ density
    axis = matrix[:, 2] / np.linalg.norm(matrix[:, 2])
    rotated = Rotation.from_rotvec(np.deg2rad(degrees) * axis).as_matrix() @ matrix
    rgb = (white + 1) * np.exp(-(rotated @ concentrations)) - 1
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(pixels.shape)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_reference_fitted_on_one_slide_leaves_it_as_it_is(method):
    sdata = slide()
    reference = hd.pp.stain_reference(sdata, method=method)
    raw = hd.pp.spot_patches(sdata, size=32)[:]
    normalised = hd.pp.spot_patches(sdata, size=32, stain_reference=reference)[:]
    # mutation: fitting the reference on another slide's pixels moves every colour
    assert np.abs(raw.astype(int) - normalised).mean() < 0.5
    assert reference.method == method


def test_the_pooled_reference_lies_between_the_slides_references():
    slides = [slide(0), with_image(slide(1), restained(image_of(slide(1))[1], hd.pp.stain_reference(slide(1)), 20))]
    own = [hd.pp.stain_reference(s).stain_matrix[:, 0] for s in slides]
    pooled = hd.pp.stain_reference(slides).stain_matrix[:, 0]
    angle = [np.degrees(np.arccos(np.clip(pooled @ v, -1, 1))) for v in own]
    between = np.degrees(np.arccos(np.clip(own[0] @ own[1], -1, 1)))
    # mutation: fitting on the first slide only gives angle [0, between]
    assert all(1 < a < between for a in angle), (angle, between)


def test_a_restained_slide_embeds_closer_to_the_original_after_normalisation():
    original = slide()
    reference = hd.pp.stain_reference(original)
    _, pixels = image_of(original)
    copy = with_image(slide(), restained(pixels, reference, degrees=25))
    hd.tl.embed(original, models=["handcrafted"])
    hd.tl.embed(copy, models=["handcrafted"])
    before = copy.tables["table"].obsm["X_handcrafted"].copy()
    hd.tl.embed(copy, models=["handcrafted"], stain_reference=reference, overwrite=True)
    after = copy.tables["table"].obsm["X_handcrafted"]
    target = original.tables["table"].obsm["X_handcrafted"]
    scale = target.std(axis=0) + 1e-6
    distance_before = np.linalg.norm((before - target) / scale, axis=1).mean()
    distance_after = np.linalg.norm((after - target) / scale, axis=1).mean()
    # mutation: normalised_level returning the level as read leaves distance_after == distance_before
    assert distance_after < 0.5 * distance_before, (distance_before, distance_after)


def test_glass_keeps_its_value():
    sdata = slide()
    reference = hd.pp.stain_reference(
        with_image(slide(1), restained(image_of(slide(1))[1], hd.pp.stain_reference(slide(1)), 20)), method="reinhard"
    )
    raw = hd.pp.spot_patches(sdata, size=64)[:]
    normalised = hd.pp.spot_patches(sdata, size=64, stain_reference=reference)[:]
    glass = glass_mask(raw)
    assert glass.any() and (~glass).any()
    # mutation: dropping the `where(~glass, source)` tints glass with Reinhard's global map
    np.testing.assert_array_equal(normalised[glass], raw[glass])
    assert np.abs(normalised[~glass].astype(int) - raw[~glass]).mean() > 1


def squidpy_normalised(sdata, reference) -> str:
    """squidpy's own workflow on ``sdata``: a tissue mask, then ``normalize_stains``; the new image's key."""
    key, pixels = image_of(sdata)
    tissue = (~glass_mask(np.moveaxis(pixels, 0, -1))).astype(np.uint8)
    systems = get_transformation(sdata.images[key], get_all=True)
    sdata.labels[f"{key}_tissue"] = Labels2DModel.parse(tissue, dims=("y", "x"), transformations=systems)
    sq.experimental.im.normalize_stains(sdata, key, reference)
    return f"{key}_normalized"


def test_squidpys_normalize_stains_output_is_read_by_image_key():
    sdata = slide()
    reference = hd.pp.stain_reference(slide(1))
    key = squidpy_normalised(sdata, reference)
    with pytest.raises(ValueError, match=r"Several images share .*s0_image_normalized.*image_key="):
        hd.tl.embed(sdata)
    assert "X_handcrafted" not in sdata.tables["table"].obsm
    patches = hd.pp.spot_patches(sdata, size=16, mpp=None, image_key=key)
    centre = np.round(sdata.tables["table"].obsm["spatial"][0]).astype(int) - 8
    expected = np.asarray(sdata.images[key].data)[:, centre[1] : centre[1] + 16, centre[0] : centre[0] + 16]
    # mutation: ignoring image_key reads the raw image, which squidpy's normalisation changed
    np.testing.assert_array_equal(patches[0], np.moveaxis(expected, 0, -1))
    assert not np.array_equal(patches[0], hd.pp.spot_patches(sdata, size=16, mpp=None, image_key="s0_image")[0])
    hd.tl.embed(sdata, image_key=key)
    assert sdata.tables["table"].obsm["X_handcrafted"].shape == (40, 51)


def test_from_spatialdata_honours_image_key_among_several():
    sdata = slide()
    key = squidpy_normalised(sdata, hd.pp.stain_reference(slide(1)))
    hd.io.from_spatialdata(sdata, image_key=key)
    hd.tl.embed(sdata, image_key=key)
    assert np.isfinite(sdata.tables["table"].obsm["X_handcrafted"]).all()


def test_the_reference_travels_with_embeddings_and_model(tmp_path):
    slides = [slide(0), slide(1)]
    reference = hd.pp.stain_reference(slides)
    for sdata in slides:
        hd.tl.embed(sdata, stain_reference=reference)
    record = slides[0].tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]["stain_reference"]
    assert record == stain_record(reference) and isinstance(record["stain_matrix"][0][0], float)
    slides[0].write(tmp_path / "slide.zarr")
    slides[0].tables["table"].write_h5ad(tmp_path / "table.h5ad")
    for table in (read_zarr(tmp_path / "slide.zarr").tables["table"], read_h5ad(tmp_path / "table.h5ad")):
        read = table.uns["histodecon"]["embeddings"]["handcrafted"]["stain_reference"]
        assert reference_from_record(read) == reference

    model = hd.tl.fit(slides, max_epochs=2, patience=1)
    assert same_reference(model.provenance["stain_reference"], record)
    model.save(tmp_path / "model")
    loaded = hd.tl.AbundanceRegressor.load(tmp_path / "model")
    assert reference_from_record(loaded.provenance["stain_reference"]) == reference

    new = slide(2)
    hd.tl.embed(new, stain_reference=loaded)  # the model's way
    assert same_reference(new.tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]["stain_reference"], record)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hd.tl.predict(new, loaded)
    assert not [w for w in caught if "stain" in str(w.message) and "Embed the slide again" in str(w.message)]

    raw = slide(2)
    hd.tl.embed(raw)
    # mutation: fit not recording the reference, or predict not comparing, gives no warning
    with pytest.warns(UserWarning, match=r"no stain reference.*stain_reference=model"):
        hd.tl.predict(raw, loaded)


def test_a_model_trained_as_scanned_warns_on_normalised_embeddings():
    slides = [slide(0), slide(1)]
    for sdata in slides:
        hd.tl.embed(sdata)
    model = hd.tl.fit(slides, max_epochs=2, patience=1)
    assert model.provenance["stain_reference"] is None
    new = slide(2)
    hd.tl.embed(new, stain_reference=hd.pp.stain_reference(slides))
    with pytest.warns(UserWarning, match=r"without `stain_reference`"):
        hd.tl.predict(new, model)


def test_training_embeddings_normalised_several_ways_are_refused():
    slides = [slide(0), slide(1)]
    hd.tl.embed(slides[0])
    hd.tl.embed(slides[1], stain_reference=hd.pp.stain_reference(slides))
    with pytest.raises(ValueError, match=r"2 different stain normalisations.*Embed every training slide the same way"):
        hd.tl.fit(slides, max_epochs=2)


def test_a_store_made_with_another_reference_is_refused(tmp_path):
    sdata = slide()
    hd.tl.embed(sdata, store=tmp_path / "store.zarr")
    with pytest.raises(ValueError, match=r"stain reference the patches are normalised to \(store None"):
        hd.tl.embed(
            sdata, store=tmp_path / "store.zarr", stain_reference=hd.pp.stain_reference(slide(1)), overwrite=True
        )


def test_a_corrupted_model_reference_is_refused_when_read(tmp_path):
    sdata = slide()
    hd.tl.embed(sdata, stain_reference=hd.pp.stain_reference(sdata))
    model = hd.tl.fit(sdata, max_epochs=2, patience=1)
    model.save(tmp_path / "model")
    _, path = model_paths(tmp_path / "model")
    record = json.loads(path.read_text())
    record["provenance"]["stain_reference"]["stain_matrix"] = [[1.0, 2.0]]
    record["record_sha256"] = record_checksum(record)
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"provenance.stain_reference.*not a stain reference"):
        hd.tl.AbundanceRegressor.load(tmp_path / "model")


def test_the_plot_draws_the_image_named_by_image_key():
    import matplotlib.pyplot as plt

    sdata = slide()
    key = squidpy_normalised(sdata, hd.pp.stain_reference(slide(1)))
    with pytest.raises(ValueError, match=r"Several images share .*`image_key=`"):
        hd.pl.spatial_abundance(sdata, ["tumour"], keys=["abund"], show=False)
    drawn = {}
    for name in ("s0_image", key):
        axes = hd.pl.spatial_abundance(sdata, ["tumour"], keys=["abund"], image_key=name, show=False)
        drawn[name] = np.asarray(axes[0].images[0].get_array())
        plt.close("all")
    # mutation: the plot ignoring image_key draws the raw image twice
    assert drawn["s0_image"].shape == drawn[key].shape and not np.array_equal(drawn["s0_image"], drawn[key])
