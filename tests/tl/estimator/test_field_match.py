"""fit records the patch field of its training embeddings; predict warns on slides embedded over another."""

import dataclasses
import warnings

import anndata as ad
import numpy as np
import pytest

import histodecon as hd

FIELD_WARNING = "patches of another size than the model was trained on"


@pytest.fixture(scope="module")
def model_and_slides():
    """A model trained on two synthetic slides at the default field: 112 px at 1.1 um/px, 123.2 um."""
    slides = [hd.datasets.synthetic(n_spots=60, seed=seed, sample=f"s{seed}") for seed in range(3)]
    for sdata in slides:
        hd.tl.embed(sdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a two-epoch model may look collapsed: not what is tested here
        model = hd.tl.fit(slides[:2], target="abund", max_epochs=2)
    return model, slides


def _field_warnings(model, sdata, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hd.tl.predict(sdata, model, overwrite=True, **kwargs)
    return [str(w.message) for w in caught if FIELD_WARNING in str(w.message)]


def test_fit_records_the_training_field(model_and_slides):
    model, _ = model_and_slides
    assert model.provenance["patch_field_um"] == {"handcrafted": [pytest.approx(123.2), pytest.approx(123.2)]}


def test_same_field_predicts_quietly(model_and_slides):
    model, slides = model_and_slides
    assert _field_warnings(model, slides[2]) == []


def test_another_field_warns_with_the_fix_and_the_fix_silences_it(model_and_slides, tmp_path):
    model, _ = model_and_slides
    sdata = hd.datasets.synthetic(n_spots=40, seed=5, sample="wide")
    hd.tl.embed(sdata, mpp=2.0)  # 224 um patches
    (message,) = _field_warnings(model, sdata)
    assert "'wide' (224 µm)" in message and "(123 µm)" in message
    # trained on the encoder's default field, which covers it on this slide too: the call is the default one
    # (mutation: the old patch_size/mpp suggestion built from the slide's own patch size fails here)
    assert "`hd.tl.embed(sdata, ['handcrafted'], overwrite=True)` (the encoder's default field)" in message

    model.save(tmp_path / "model")  # the record survives saving
    assert len(_field_warnings(hd.tl.AbundanceRegressor.load(tmp_path / "model"), sdata)) == 1

    hd.tl.embed(sdata, ["handcrafted"], overwrite=True)
    assert _field_warnings(model, sdata) == []


def test_where_the_default_field_differs_the_fix_names_the_training_field(model_and_slides):
    """ST-sized spots: the spot-relative default gives 224 um; the fix reads 123 um at the encoder's 112 px."""
    model, _ = model_and_slides
    sdata = hd.datasets.synthetic(n_spots=40, seed=6, sample="st", spot_diameter_um=100.0)
    hd.tl.embed(sdata)  # the default field: 2.24 spot diameters, 224 um
    (message,) = _field_warnings(model, sdata)
    assert "'st' (224 µm)" in message
    assert "`hd.tl.embed(sdata, ['handcrafted'], patch_size=112, mpp=1.1, overwrite=True)`" in message
    hd.tl.embed(sdata, ["handcrafted"], patch_size=112, mpp=1.1, overwrite=True)
    assert _field_warnings(model, sdata) == []


def test_embeddings_without_a_record_are_not_judged(model_and_slides):
    model, slides = model_and_slides
    table = slides[2].tables["table"]
    bare = ad.AnnData(obs=table.obs[["sample"]].copy(), obsm={"X_handcrafted": np.asarray(table.obsm["X_handcrafted"])})
    assert _field_warnings(model, bare) == []


def test_encoder_names_with_colons_are_matched_through_their_record(monkeypatch):
    from histodecon.encoders import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    hd.encoders.register(dataclasses.replace(hd.encoders.get("handcrafted"), name="lab:handcrafted"))
    slides = [hd.datasets.synthetic(n_spots=40, seed=seed, sample=f"s{seed}") for seed in range(2)]
    wide = hd.datasets.synthetic(n_spots=40, seed=5, sample="wide")
    for sdata in slides:
        hd.tl.embed(sdata, ["lab:handcrafted"])
    hd.tl.embed(wide, ["lab:handcrafted"], mpp=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hd.tl.fit(slides, features=["lab:handcrafted"], target="abund", max_epochs=2)
    assert model.provenance["patch_field_um"] == {"lab_handcrafted": [pytest.approx(123.2), pytest.approx(123.2)]}
    (message,) = _field_warnings(model, wide)
    assert "`hd.tl.embed(sdata, ['lab:handcrafted'], overwrite=True)` (the encoder's default field)" in message


def test_predict_many_warns_here_for_a_model_object_and_a_saved_one(model_and_slides, tmp_path):
    model, _ = model_and_slides
    wide = hd.datasets.synthetic(n_spots=40, seed=5, sample="wide")
    hd.tl.embed(wide, mpp=2.0)
    model.save(tmp_path / "model")
    for given in (model, tmp_path / "model"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hd.tl.predict_many([wide], given, overwrite=True)
        assert sum(FIELD_WARNING in str(w.message) for w in caught) == 1


def test_only_the_samples_a_table_holds_are_judged(model_and_slides):
    model, slides = model_and_slides
    wide = hd.datasets.synthetic(n_spots=40, seed=5, sample="wide")
    hd.tl.embed(wide, mpp=2.0)
    both = ad.concat([slides[2].tables["table"], wide.tables["table"]], uns_merge="first", index_unique="-")
    assert set(both.uns["histodecon"]["embeddings"]["handcrafted"]["patch_mpp"]) == {"s2", "wide"}
    assert _field_warnings(model, both[both.obs["sample"] == "s2"].copy()) == []
    (message,) = _field_warnings(model, both[both.obs["sample"] == "wide"].copy())
    assert "'wide' (224 µm)" in message and "'s2'" not in message
