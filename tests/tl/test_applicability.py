"""Applicability: predict judges every sample against the model's training slides (resolution, stain, features)."""

import copy
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from anndata import AnnData
from spatialdata.models import Image2DModel
from spatialdata.transformations import get_transformation

import histodecon as hd
from histodecon._constants import Key
from histodecon.tl._embedding._slide_record import stain_vectors
from histodecon.tl._estimator._applicability import (
    APPLICABILITY,
    FLOORS,
    MARGIN,
    ApplicabilityWarning,
    judge,
    training_record,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"hidden": (16, 16), "max_epochs": 3, "batch_size": 64}


def rotated_stain(image: np.ndarray, degrees: float) -> np.ndarray:
    """``image`` (c, y, x) uint8 re-stained: its optical densities rotated by ``degrees`` about the grey axis."""
    axis = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    rotation = (np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross).astype(np.float32)
    out = np.empty_like(image)
    for start in range(0, image.shape[1], 512):  # row blocks: bounded memory on whole sections
        rows = slice(start, start + 512)
        density = -np.log(np.maximum(image[:, rows].astype(np.float32), 1.0) / 255.0)
        density = np.clip(np.einsum("ij,jyx->iyx", rotation, density), 0.0, None)
        out[:, rows] = np.clip(np.round(255.0 * np.exp(-density)), 0, 255).astype(np.uint8)
    return out


def restained(sdata: sd.SpatialData, degrees: float) -> sd.SpatialData:
    """A copy of a single-image synthetic slide whose image is re-stained (same spots, same table)."""
    (key,) = sdata.images
    element = sdata.images[key]
    image = Image2DModel.parse(
        rotated_stain(np.asarray(element.data), degrees),
        dims=("c", "y", "x"),
        transformations=get_transformation(element, get_all=True),
    )
    return sd.SpatialData(
        images={key: image}, shapes=dict(sdata.shapes), tables={"table": sdata.tables["table"].copy()}
    )


@pytest.fixture(scope="module")
def trained():
    """A model of three synthetic slides (handcrafted embeddings) and a fourth slide like them, embedded."""
    slides = [hd.datasets.synthetic(n_spots=80, seed=seed, sample=f"s{seed}", counts=False) for seed in range(4)]
    for slide in slides:
        hd.tl.embed(slide)
    return hd.tl.fit(slides[:3], **SMALL), slides[3]


def predicted(slide, model, **kwargs) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hd.tl.predict(slide, model, overwrite=True, **kwargs)
    fired = [w for w in caught if issubclass(w.category, ApplicabilityWarning)]
    return slide.tables["table"].uns[Key.uns.root][Key.uns.applicability], fired


def test_a_slide_like_the_training_ones_stays_quiet(trained):
    # Mutation: fit recording the statistics of the per-slide standardised inputs (ranges 0, unit 1) while
    # predict judges the raw embeddings fires here.
    model, slide = trained
    record, fired = predicted(slide, model)
    verdict = record["s3"]
    assert verdict["ok"] and verdict["reasons"] == [] and verdict["not_judged"] == [] and not fired
    for name in ("stain_angle_deg", "feature_mean_shift", "feature_sd_shift"):
        assert 0 <= verdict[name] <= verdict[f"{name}_threshold"]
    assert verdict["detail_mpp"] == pytest.approx(1.1) and verdict["native_mpp"] == pytest.approx(0.5)


def test_thresholds_come_from_the_training_slides_by_leave_one_out(trained):
    # Mutation: thresholds from the figures of all slides against all (0 for every training slide) fails.
    model, _ = trained
    record = model.provenance[APPLICABILITY]
    assert record["samples"] == ["s0", "s1", "s2"]
    for name in ("stain_angle_deg", "feature_mean_shift", "feature_sd_shift"):
        loso = max(figures[name] for figures in record["loso"].values())
        assert loso > 0
        assert record["thresholds"][name] == pytest.approx(max(FLOORS[name], MARGIN * loso))
    assert record["thresholds"]["detail"] == FLOORS["detail"]  # all three at the same µm/px


def test_a_coarser_scan_fires_naming_the_resolution(trained):
    # Mutation: comparing the patch µm/px instead of max(native, patch) stays quiet (both read at 1.1 µm/px).
    model, _ = trained
    coarse = hd.datasets.synthetic(n_spots=80, seed=3, sample="coarse", counts=False, mpp=3.5)
    hd.tl.embed(coarse)
    record, fired = predicted(coarse, model)
    verdict = record["coarse"]
    assert not verdict["ok"] and verdict["detail_mpp"] == pytest.approx(3.5)
    assert verdict["detail_mpp_threshold"] == pytest.approx(1.1 * FLOORS["detail"])
    assert any("native resolution (3.50 µm/px)" in reason for reason in verdict["reasons"])
    assert len(fired) == 1 and "'coarse'" in str(fired[0].message) and "resolution" in str(fired[0].message)


def test_a_restained_slide_fires_naming_the_stain(trained):
    # Mutation: no stain figure (features only) fails: the features reason alone does not name the stain.
    model, slide = trained
    other = restained(slide, 45)
    hd.tl.embed(other, overwrite=True)
    record, fired = predicted(other, model)
    verdict = record["s3"]
    assert not verdict["ok"]
    assert verdict["stain_angle_deg"] > verdict["stain_angle_deg_threshold"]
    assert any(reason.startswith("Its stain differs") for reason in verdict["reasons"])
    assert len(fired) == 1


def test_the_stain_estimate_follows_a_known_rotation():
    # squidpy's Macenko fit on a mosaic of patches recovers the H vector; rotating the densities moves it.
    # Mutation: returning squidpy's reference (Ruifrok) vectors without a fit gives an angle of 0.
    slide = hd.datasets.synthetic(n_spots=40, seed=1, counts=False)
    image = np.asarray(slide.images["synthetic_image"].data)[:, :400, :400]
    patches = np.moveaxis(image, 0, -1)[None]
    base = stain_vectors(patches)
    turned = stain_vectors(np.moveaxis(rotated_stain(image, 30), 0, -1)[None])
    angle = np.degrees(np.arccos(np.clip(np.dot(base["hematoxylin"], turned["hematoxylin"]), -1, 1)))
    assert 5 < angle < 40
    assert np.linalg.norm(base["hematoxylin"]) == pytest.approx(1, abs=1e-4)
    assert stain_vectors(np.full((2, 16, 16, 3), 255, np.uint8)) == {"hematoxylin": None, "eosin": None}


def test_feature_statistics_outside_the_training_range_fire_without_image_records():
    # Mutation: standardising the features before the statistics (what the network sees) hides the shift.
    rng = np.random.default_rng(0)

    def table(sample, shift=0.0):
        x = rng.normal(size=(200, 8)).astype(np.float32) + rng.normal(scale=0.2, size=8).astype(np.float32) + shift
        return AnnData(
            obs=pd.DataFrame({Key.obs.sample: sample}, index=[f"{sample}{i}" for i in range(200)]), obsm={"X_a": x}
        )

    record = training_record([table("t0"), table("t1"), table("t2")], ["a"], [8])
    assert record["thresholds"]["stain_angle_deg"] is None and record["detail_mpp"] == {}
    quiet = judge(table("new"), {APPLICABILITY: record}, ["a"], [8])["new"]
    shifted = judge(table("far", shift=2.0), {APPLICABILITY: record}, ["a"], [8])["far"]
    assert quiet["ok"] and shifted["feature_mean_shift"] > 1.0 and not shifted["ok"]
    assert quiet["not_judged"] == [
        "resolution: no embedding record of the sample's µm/px (embed with hd.tl.embed)",
        "stain: no stain vectors recorded for the sample or the training slides",
    ]
    spread = judge(table("wide"), {APPLICABILITY: record}, ["a"], [8])
    assert spread["wide"]["feature_sd_shift"] < record["thresholds"]["feature_sd_shift"]


def test_a_model_without_the_record_judges_nothing_and_stays_quiet(trained):
    # Mutation: reading provenance["applicability"] unconditionally raises a KeyError here.
    model, slide = trained
    old = copy.deepcopy(model)
    del old.provenance[APPLICABILITY]  # as a model saved before the record existed
    record, fired = predicted(slide, old)
    assert record["s3"]["ok"] and record["s3"]["reasons"] == [] and not fired
    assert "refit" in record["s3"]["not_judged"][0]


def test_a_damaged_record_is_refused_with_the_fix(trained):
    # Mutation: no check of the record raises a KeyError instead, without the fix.
    model, slide = trained
    damaged = {APPLICABILITY: {"samples": ["s0"]}}
    with pytest.raises(ValueError, match="edited or damaged.*Refit the model"):
        judge(slide.tables["table"], damaged, model.feature_keys, model.feature_dims)


def test_the_record_survives_zarr_h5ad_and_a_saved_model(trained, tmp_path):
    # Mutation: storing the reasons as a set breaks the h5ad write.
    model, slide = trained
    model.save(tmp_path / "model")
    loaded = hd.tl.AbundanceRegressor.load(tmp_path / "model")
    assert loaded.provenance[APPLICABILITY] == model.provenance[APPLICABILITY]
    other = restained(slide, 45)
    hd.tl.embed(other, overwrite=True)
    record, _ = predicted(other, loaded)
    other.write(tmp_path / "slide.zarr")
    other.tables["table"].write_h5ad(tmp_path / "table.h5ad")
    for table in (sd.read_zarr(tmp_path / "slide.zarr").tables["table"], ad.read_h5ad(tmp_path / "table.h5ad")):
        back = table.uns[Key.uns.root][Key.uns.applicability]["s3"]
        assert bool(back["ok"]) is False and list(back["reasons"]) == record["s3"]["reasons"]
        assert float(back["stain_angle_deg"]) == record["s3"]["stain_angle_deg"]


def test_predict_many_writes_the_same_record_and_warns_once(trained):
    # Mutation: dropping the client-side judgement leaves predict_many's tables without the record.
    model, slide = trained
    other = restained(slide, 45)
    hd.tl.embed(other, overwrite=True)
    expected, _ = predicted(other, model)
    expected = {k: dict(v) for k, v in expected.items()}
    del other.tables["table"].uns[Key.uns.root][Key.uns.applicability]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hd.tl.predict_many([other], model, overwrite=True)
    assert other.tables["table"].uns[Key.uns.root][Key.uns.applicability] == expected
    assert len([w for w in caught if issubclass(w.category, ApplicabilityWarning)]) == 1


@pytest.fixture(scope="module")
def her2st_tables(her2st_dir):
    """The three her2st sections' tables with handcrafted embeddings and image records, by section."""
    slides = {s: hd.datasets.her2st(s, data_dir=her2st_dir.parent, proportions=None) for s in ("B4", "C2", "C3")}
    for slide in slides.values():
        hd.tl.embed(slide)
    return slides


def her2st_verdict(tables: dict, section: str, training: list[str]) -> dict:
    table = tables[section].tables["table"]
    record = training_record([tables[s].tables["table"] for s in training], ["handcrafted"], [51])
    return judge(table, {APPLICABILITY: record}, ["handcrafted"], [51])[str(table.obs[Key.obs.sample].iloc[0])]


@pytest.mark.data
@pytest.mark.slow
def test_her2st_sections_stay_quiet(her2st_tables):
    # Each section against a model of all three, and the serial sections C2 / C3 against a model of the
    # other two (B4 against a C2 + C3 model is another patient than both: see docs/trust.md).
    # Mutation: thresholds without margin and floors (the largest leave-one-out figure itself) fire on C2's
    # stain (4.7 degrees against 3.3 of B4 vs C3).
    for section in ("B4", "C2", "C3"):
        verdict = her2st_verdict(her2st_tables, section, ["B4", "C2", "C3"])
        assert verdict["ok"] and verdict["not_judged"] == [], verdict
    for section, training in (("C2", ["B4", "C3"]), ("C3", ["B4", "C2"])):
        verdict = her2st_verdict(her2st_tables, section, training)
        assert verdict["ok"], verdict


@pytest.mark.data
@pytest.mark.slow
def test_her2st_section_made_foreign_fires(her2st_tables):
    # C2 scanned at about 3.7 µm/px (every fifth pixel, recorded so) and C2 re-stained, against a B4 + C3 model.
    # Mutation: the resolution check on patch µm/px only stays quiet on the coarse copy (both read at 2 µm/px).
    from histodecon.io._build import build_sdata

    c2 = her2st_tables["C2"]
    table = c2.tables["table"]
    info = table.uns[Key.uns.root][Key.uns.samples]["C2"]
    image = np.asarray(c2.images["C2_image"]["scale0"]["image"].data)
    step = 5
    coarse = image[:, ::step, ::step]
    copies = {
        "C2_coarse": build_sdata(
            coarse,
            np.asarray(table.obsm["spatial"]) / step,
            sample="C2_coarse",
            mpp=info["mpp"] * step,
            spot_diameter_px=info["spot_diameter_px"] / step,
            spot_ids=list(table.obs_names),
            obs=table.obs[["in_tissue"]].copy(),
        ),
        "C2_stain45": build_sdata(
            rotated_stain(image, 45),
            np.asarray(table.obsm["spatial"]),
            sample="C2_stain45",
            mpp=info["mpp"],
            spot_diameter_px=info["spot_diameter_px"],
            spot_ids=list(table.obs_names),
            obs=table.obs[["in_tissue"]].copy(),
        ),
    }
    for slide in copies.values():
        hd.tl.embed(slide)
    tables = her2st_tables | copies
    coarse_verdict = her2st_verdict(tables, "C2_coarse", ["B4", "C3"])
    assert not coarse_verdict["ok"] and coarse_verdict["detail_mpp"] > coarse_verdict["detail_mpp_threshold"]
    stain_verdict = her2st_verdict(tables, "C2_stain45", ["B4", "C3"])
    assert not stain_verdict["ok"] and stain_verdict["stain_angle_deg"] > stain_verdict["stain_angle_deg_threshold"]
