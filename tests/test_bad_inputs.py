"""The bad-input catalogue: every public step refuses wrong input early, with an error that names the
problem (and, where there is one, the fix), and leaves everything the caller passed in unmodified."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from PIL import Image
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel

import histodecon as hd
from histodecon.pp._patches import image_levels

N_SPOTS = 30
EMBEDDING_DIM = 51  # the width of the weights-free "handcrafted" encoder's embeddings


# ------------------------------------------------------------------------------------------ snapshots
def snapshot(value: Any) -> Any:
    """A deep, independent record of ``value`` that :func:`assert_unchanged` compares with it later.

    Tables are copied whole (obs, var, X, obsm, obsp, layers, uns); images are recorded by
    identity and dask graph name (they are large and must not be replaced or rewritten);
    files by their bytes.
    """
    if isinstance(value, AnnData):
        return value.copy()
    if isinstance(value, SpatialData):
        return {
            "tables": {name: table.copy() for name, table in value.tables.items()},
            "images": {name: (element, _data_names(element)) for name, element in value.images.items()},
            "shapes": {name: shapes.copy() for name, shapes in value.shapes.items()},
            "attrs": copy.deepcopy(dict(value.attrs)),
        }
    if isinstance(value, hd.tl.AbundanceRegressor):
        if value.network is None:
            return ("unfitted", copy.deepcopy(value.hyperparameters))
        return {name: tensor.detach().clone() for name, tensor in value.network.state_dict().items()}
    if isinstance(value, Path) and value.is_file():
        return hashlib.sha256(value.read_bytes()).hexdigest()
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(item) for item in value)
    return copy.deepcopy(value)


def _data_names(element) -> list[str]:
    """The dask graph names of every level of an image element: they change if its pixels are rewritten."""
    return [level.data.name for level in image_levels(element)]


def assert_unchanged(before: Any, value: Any, where: str = "input") -> None:
    """Fail, naming the place, when ``value`` differs from its :func:`snapshot` ``before``."""
    if isinstance(value, AnnData):
        for attr in ("obs", "var"):
            pd.testing.assert_frame_equal(getattr(before, attr), getattr(value, attr), obj=f"{where}.{attr}")
        assert_unchanged(before.X, value.X, f"{where}.X")
        for attr in ("obsm", "obsp", "varm", "varp", "layers", "uns"):
            assert_unchanged(dict(getattr(before, attr)), dict(getattr(value, attr)), f"{where}.{attr}")
    elif isinstance(value, SpatialData):
        assert_unchanged(before["tables"], dict(value.tables), f"{where}.tables")
        assert before["images"].keys() == value.images.keys(), f"{where}: images were added or removed"
        for name, (element, names) in before["images"].items():
            assert value.images[name] is element, f"{where}: image {name!r} was replaced"
            assert _data_names(element) == names, f"{where}: the pixels of image {name!r} were rewritten"
        assert_unchanged(before["shapes"], dict(value.shapes), f"{where}.shapes")
        assert_unchanged(before["attrs"], dict(value.attrs), f"{where}.attrs")
    elif isinstance(value, hd.tl.AbundanceRegressor):
        assert_unchanged(before, snapshot(value), f"{where} (model)")
    elif isinstance(value, Path) and value.is_file():
        assert hashlib.sha256(value.read_bytes()).hexdigest() == before, f"{where}: file {value} changed"
    elif isinstance(value, dict):
        assert before.keys() == value.keys(), f"{where}: keys {sorted(before)} became {sorted(value)}"
        for key, item in value.items():
            assert_unchanged(before[key], item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        assert len(before) == len(value), f"{where}: length changed"
        for i, (old, item) in enumerate(zip(before, value, strict=True)):
            assert_unchanged(old, item, f"{where}[{i}]")
    elif isinstance(value, pd.DataFrame | pd.Series):
        assert type(before) is type(value), f"{where}: type changed"
        testing = pd.testing.assert_frame_equal if isinstance(value, pd.DataFrame) else pd.testing.assert_series_equal
        testing(before, value, obj=where)
    elif isinstance(value, torch.Tensor):
        assert value.equal(before), f"{where}: tensor changed"
    elif sparse.issparse(value) or isinstance(value, np.ndarray):
        assert sparse.issparse(before) == sparse.issparse(value), f"{where}: storage changed"
        old, new = (m.toarray() if sparse.issparse(m) else m for m in (before, value))
        np.testing.assert_array_equal(old, new, err_msg=where, strict=True)
    else:
        assert before == value, f"{where}: {before!r} became {value!r}"


def test_snapshot_sees_a_change_deep_inside_a_slide(kit):
    slide = kit.slide()
    before = snapshot(slide)
    assert_unchanged(before, slide)
    slide.tables["table"].uns["histodecon"]["samples"]["synthetic"]["mpp"] = 2.0
    with pytest.raises(AssertionError, match="mpp"):
        assert_unchanged(before, slide)
    edited = kit.slide()
    before = snapshot(edited)
    edited.tables["table"].obsm["abund"].iloc[0, 0] += 1
    with pytest.raises(AssertionError, match="tumour"):
        assert_unchanged(before, edited)


# ------------------------------------------------------------------------------------------ inputs
@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> SimpleNamespace:
    """Small inputs built once; each case gets its own copies from the ``slide()``, ``table()``, ... makers."""
    rng = np.random.default_rng(0)
    base = hd.datasets.synthetic(n_spots=N_SPOTS, seed=0, counts=False)
    table = base.tables["table"]
    table.obsm["X_handcrafted"] = rng.normal(size=(N_SPOTS, EMBEDDING_DIM)).astype(np.float32)
    counts = hd.datasets.synthetic(n_spots=N_SPOTS, seed=0, counts=True).tables["table"]
    del counts.obsm["abund"]
    model = hd.tl.fit(table, features=["handcrafted"], hidden=(8,), max_epochs=2)

    coloc = table.copy()
    coloc.obsm["pred_abund"] = coloc.obsm["abund"].iloc[:, :3].copy()
    hd.gr.rbf_graph(coloc, length_scale_um=150)
    hd.gr.moran_r(coloc, key="abund")
    hd.gr.moran_r(coloc, key="pred_abund")

    image_hwc = np.ascontiguousarray(np.moveaxis(np.asarray(base.images["synthetic_image"].data), 0, -1))
    visium = AnnData(
        X=rng.poisson(2.0, (N_SPOTS, 3)).astype(np.float32),
        obs=pd.DataFrame(index=table.obs_names.copy()),
        var=pd.DataFrame(index=["EPCAM", "KRT8", "PTPRC"]),
    )
    visium.obsm["spatial"] = table.obsm["spatial"].copy()
    visium.uns["spatial"] = {
        "lib": {
            "images": {"hires": image_hwc},
            "scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 110.0},
        }
    }

    def slide() -> SpatialData:
        """A copy of the slide whose table can be edited; the image is shared (reading never writes it)."""
        return SpatialData(images=dict(base.images), shapes=dict(base.shapes), tables={"table": copy.deepcopy(table)})

    return SimpleNamespace(
        slide=slide,
        table=lambda: copy.deepcopy(table),
        counts=lambda: copy.deepcopy(counts),
        coloc=lambda: copy.deepcopy(coloc),
        visium=lambda: copy.deepcopy(visium),
        reference=hd.datasets.synthetic_reference(n_cells_per_type=20),
        model=model,
        image=image_hwc,
        st=_st_section(tmp_path_factory.mktemp("st")),
    )


def _st_section(folder: Path) -> SimpleNamespace:
    """A 2 x 2 legacy-ST section on a 400 x 400 px image; plus a spot file whose pixel centres are 4x too large."""
    Image.fromarray(np.full((400, 400, 3), (200, 120, 170), np.uint8)).save(folder / "he.png")
    ids = ["1x1", "2x1", "1x2", "2x2"]
    pd.DataFrame(np.ones((4, 3), int), index=ids, columns=["GENE1", "GENE2", "GENE3"]).to_csv(
        folder / "counts.tsv", sep="\t"
    )
    spots = pd.DataFrame(
        {
            "x": [1, 2, 1, 2],
            "y": [1, 1, 2, 2],
            "pixel_x": [100.0, 300.0, 100.0, 300.0],
            "pixel_y": [100.0, 100.0, 300.0, 300.0],
            "selected": 1,
        }
    )
    spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
    spots.assign(pixel_x=spots.pixel_x * 4, pixel_y=spots.pixel_y * 4).to_csv(
        folder / "spots_x4.tsv", sep="\t", index=False
    )
    spots.rename(columns={"pixel_x": "px", "pixel_y": "py"}).to_csv(folder / "spots_columns.tsv", sep="\t", index=False)
    return SimpleNamespace(**{p.stem: p for p in folder.iterdir()})


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No case may reach the Hugging Face Hub or find weights outside the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HISTODECON_WEIGHTS_DIR", str(tmp_path))


# ------------------------------------------------------------------------------------------ edits
def edited(value, edit: Callable[[Any], None]):
    """``value`` after ``edit(value)``: a case's bad input, made from a good one."""
    edit(value)
    return value


def _set_obsm(key: str, make: Callable[[np.ndarray], Any]) -> Callable[[AnnData], None]:
    def edit(adata: AnnData) -> None:
        adata.obsm[key] = make(np.asarray(adata.obsm[key]))

    return edit


def _set_value(key: str, index: tuple, value: float) -> Callable[[AnnData], None]:
    def edit(adata: AnnData) -> None:
        frame = adata.obsm[key]
        if isinstance(frame, pd.DataFrame):
            frame.iloc[index] = value
        else:
            frame[index] = value

    return edit


def _drop(attr: str, key: str) -> Callable[[Any], None]:
    return lambda adata: getattr(adata, attr).pop(key)


def _grayscale_image(sdata: SpatialData) -> None:
    element = sdata.images["synthetic_image"]
    sdata.images["synthetic_image"] = Image2DModel.parse(element.data[:1], dims=("c", "y", "x"))


def _rename_cell_type(adata: AnnData) -> None:
    adata.obsm["abund"] = adata.obsm["abund"].rename(columns={"tumour": "cancer"})


def call(function: Callable, *args, **kwargs) -> tuple[Callable, tuple, dict]:
    return function, args, kwargs


def _table_slide(sdata: SpatialData, edit: Callable[[AnnData], None]) -> SpatialData:
    """``sdata`` after editing its table."""
    edit(sdata.tables["table"])
    return sdata


def _embedding_slides(k, edit) -> list[AnnData]:
    """Two training slides, the second edited."""
    return [k.table(), edited(k.table(), edit)]


# ------------------------------------------------------------------------------------------ catalogue
CASES = [
    # ---- io: reading slides
    pytest.param(
        lambda k: call(hd.io.read_slide, k.image[..., 0].copy(), mpp=0.5),
        ValueError,
        r"grayscale .* must be RGB",
        id="read_slide-grayscale-image",
    ),
    pytest.param(
        lambda k: call(hd.io.read_slide, k.image, mpp=-0.5),
        ValueError,
        r"`mpp` must be a positive number .* got -0\.5",
        id="read_slide-negative-mpp",
    ),
    pytest.param(
        lambda k: call(hd.io.read_slide, k.image[:50, :50].copy(), mpp=0.5),
        ValueError,
        r"50 x 50 px image is smaller than one 55 um grid step",
        id="read_slide-image-smaller-than-a-spot",
    ),
    pytest.param(
        lambda k: call(hd.io.read_slide, np.full((400, 400, 3), 250, np.uint8), mpp=0.5),
        ValueError,
        r"No pseudo-spot .* lies on tissue.*raise `glass_threshold`",
        id="read_slide-empty-glass-slide",
    ),
    pytest.param(
        lambda k: call(hd.io.read_slide, k.image[:300, :300] / 255.0, mpp=0.5),
        ValueError,
        r"dtype float64; histodecon reads 8-bit RGB.*\* 255\)\.round\(\)",
        id="read_slide-float-image",
    ),
    pytest.param(
        lambda k: call(hd.io.read_slide, [[[200, 120, 170]]], mpp=0.5),
        TypeError,
        r"`image` must be a file path or a \(y, x, 3\) uint8 array, got list",
        id="read_slide-wrong-type",
    ),
    pytest.param(
        lambda k: call(hd.io.read_st, k.st.he.parent / "missing.tsv", k.st.spots, k.st.he),
        FileNotFoundError,
        r"counts file .*missing\.tsv' does not exist",
        id="read_st-missing-file",
    ),
    pytest.param(
        lambda k: call(hd.io.read_st, k.st.counts, k.st.spots_x4, k.st.he),
        ValueError,
        r"spot centres .* lie outside the 400 x 400 px image 'he\.png'\. Pass the image",
        id="read_st-coordinates-of-another-scale",
    ),
    pytest.param(
        lambda k: call(hd.io.read_st, k.st.counts, k.st.spots_columns, k.st.he),
        ValueError,
        r"has columns .*expected the her2st layout",
        id="read_st-spot-file-without-pixel-columns",
    ),
    pytest.param(
        lambda k: call(hd.io.from_anndata, k.slide()),
        TypeError,
        r"from_anndata needs an AnnData, got SpatialData",
        id="from_anndata-wrong-type",
    ),
    pytest.param(
        lambda k: call(hd.io.from_anndata, edited(k.visium(), _drop("uns", "spatial"))),
        KeyError,
        r"lacks `uns\['spatial'\]`.*scanpy\.read_visium",
        id="from_anndata-without-uns-spatial",
    ),
    pytest.param(
        lambda k: call(hd.io.from_anndata, edited(k.visium(), lambda a: setattr(a, "obs_names", ["s"] * N_SPOTS))),
        ValueError,
        r"Spot ids must be unique; duplicated: \['s'\].*obs_names_make_unique",
        id="from_anndata-duplicated-spot-ids",
        marks=pytest.mark.filterwarnings("ignore:Observation names are not unique"),
    ),
    pytest.param(
        lambda k: call(hd.io.from_anndata, edited(k.visium(), _set_obsm("spatial", lambda xy: xy / 1400))),
        ValueError,
        r"median 0\.0\d+ um apart .* not full-resolution pixels",
        id="from_anndata-coordinates-scaled-to-unit-square",
    ),
    pytest.param(
        lambda k: call(hd.io.from_anndata, edited(k.visium(), _set_value("spatial", (2, 0), np.nan))),
        ValueError,
        r"1 spots \(e\.g\. \['spot00002'\]\) have no position",
        id="from_anndata-nan-coordinates",
    ),
    pytest.param(
        lambda k: call(hd.io.from_anndata, edited(k.visium(), _set_obsm("spatial", lambda xy: xy * 4))),
        ValueError,
        r"lie outside the 1400 x 1440 px image 'lib hires'",
        id="from_anndata-coordinates-outside-image",
    ),
    # ---- pp: patches and background
    pytest.param(
        lambda k: call(hd.pp.spot_patches, k.table()),
        TypeError,
        r"needs a SpatialData .* got AnnData",
        id="spot_patches-table-without-image",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, k.slide(), size=0),
        ValueError,
        r"`size` must be a positive integer number of pixels, got 0",
        id="spot_patches-size-zero",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, k.slide(), size=224.0),
        ValueError,
        r"`size` must be a positive integer",
        id="spot_patches-size-not-integer",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, k.slide(), mpp=-0.5),
        ValueError,
        r"`mpp` must be a positive number of micrometres per pixel",
        id="spot_patches-negative-mpp",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, k.slide(), size=224, mpp=8.0),
        ValueError,
        r"cover 3584 full-resolution px, more than the whole 1400 x 1440 px image .*Check `size` and `mpp`",
        id="spot_patches-image-smaller-than-a-patch",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, k.slide(), table_key="spots"),
        KeyError,
        r"no table 'spots'; its tables are \['table'\]\. Pass `table_key=`",
        id="spot_patches-unknown-table",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, edited(k.slide(), lambda s: s.images.pop("synthetic_image"))),
        KeyError,
        r"refers to image 'synthetic_image', which the SpatialData lacks",
        id="spot_patches-image-element-missing",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, _table_slide(k.slide(), _drop("uns", "histodecon"))),
        KeyError,
        r"No sample 'synthetic' in `uns\['histodecon'\]\['samples'\]`.*Read the slide with `hd\.io`",
        id="spot_patches-no-slide-geometry",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, _table_slide(k.slide(), _set_value("spatial", (4, 1), np.inf))),
        ValueError,
        r"\['spot00004'\]\) have no position: NaN or infinite `obsm\['spatial'\]`",
        id="spot_patches-infinite-centre",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, _table_slide(k.slide(), _set_obsm("spatial", lambda xy: xy + 5000))),
        ValueError,
        r"30 spot centres .* lie outside the 1400 x 1440 px image 'synthetic_image'",
        id="spot_patches-centres-outside-image",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, _table_slide(k.slide(), _set_obsm("spatial", lambda xy: xy / 1e4))),
        ValueError,
        r"spots of sample 'synthetic' are a median .* um apart.*array indices\? scaled to \[0, 1\]\?",
        id="spot_patches-all-spots-within-one-pixel",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, edited(k.slide(), _grayscale_image)),
        ValueError,
        r"has 1 channels; patches need RGB",
        id="spot_patches-grayscale-image-element",
    ),
    pytest.param(
        lambda k: call(hd.pp.filter_background, k.slide(), glass_threshold=300),
        ValueError,
        r"`glass_threshold` must be an intensity in \[0, 255\), got 300",
        id="filter_background-threshold-out-of-range",
    ),
    pytest.param(
        lambda k: call(
            hd.pp.filter_background, _table_slide(k.slide(), lambda a: a.obs.__setitem__("tissue_fraction", 1.0))
        ),
        KeyError,
        r"`adata\.obs\['tissue_fraction'\]` already exists\. Pass `overwrite=True` to replace it\.\W$",
        id="filter_background-result-exists",
    ),
    # ---- tl.embed
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["resnet50"]),
        KeyError,
        r"Unknown encoder 'resnet50'\. Available: .*'handcrafted'",
        id="embed-unknown-encoder",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.table(), models=["handcrafted"]),
        TypeError,
        r"needs the SpatialData holding the slide image, not an AnnData.*hd\.io\.from_anndata",
        id="embed-anndata-without-image",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["uni"], weights={"uni": k.st.he.parent / "uni.bin"}),
        FileNotFoundError,
        r"Weights file .*uni\.bin for encoder 'uni' does not exist",
        id="embed-weights-file-missing",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], weights={"uni": "uni.bin"}),
        ValueError,
        r"`weights` names \['uni'\], which are not in `models` \['handcrafted'\]",
        id="embed-weights-for-another-model",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], batch_size=0),
        ValueError,
        r"`batch_size` must be a positive integer, got 0",
        id="embed-batch-size-zero",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, [k.slide(), k.slide()], models=["handcrafted"], store=["one.zarr"]),
        ValueError,
        r"`store` has 1 paths for 2 slides; pass one path per slide",
        id="embed-one-store-for-two-slides",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"]),
        KeyError,
        r"`adata\.obsm\['X_handcrafted'\]` already exists\. Pass `overwrite=True`",
        id="embed-embedding-exists",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed,
            _table_slide(k.slide(), _set_value("spatial", (0, 0), np.nan)),
            models=["handcrafted"],
            overwrite=True,
        ),
        ValueError,
        r"\['spot00000'\]\) have no position",
        id="embed-nan-spot-centre",
    ),
    # ---- tl.deconvolve (refused before cell2location is imported)
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), "reference.h5ad"),
        TypeError,
        r"`reference` must be a labelled single-cell AnnData or a genes x cell types signature DataFrame",
        id="deconvolve-reference-wrong-type",
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.table(), k.reference, labels_key="cell_type", key_added="c2l"),
        ValueError,
        r"Slide synthetic has no genes in `X`: deconvolution needs the spots' raw counts",
        id="deconvolve-slide-without-counts",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.deconvolve,
            edited(k.counts(), lambda a: setattr(a, "X", np.log1p(a.X))),
            k.reference,
            labels_key="cell_type",
        ),
        ValueError,
        r"does not hold raw counts .*pass `layer=`",
        id="deconvolve-log-normalised-counts",
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), k.reference),
        ValueError,
        r"A reference AnnData needs `labels_key=`",
        id="deconvolve-reference-without-labels-key",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.deconvolve,
            k.counts(),
            pd.DataFrame(np.ones((3, 2)), index=["ENSG1", "ENSG2", "ENSG3"], columns=["a", "b"]),
        ),
        ValueError,
        r"share no gene names.*symbols vs Ensembl ids",
        id="deconvolve-no-shared-genes",
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), pd.DataFrame(-np.ones((3, 2)), index=["EPCAM", "KRT8", "KRT18"])),
        ValueError,
        r"Signatures must be finite, non-negative",
        id="deconvolve-negative-signatures",
    ),
    # ---- tl.fit
    pytest.param(
        lambda k: call(
            hd.tl.fit, edited(k.table(), _set_value("X_handcrafted", (3, 2), np.nan)), features="handcrafted"
        ),
        ValueError,
        r"Features \['X_handcrafted'\] of slide synthetic has NaN or infinite values in 1 in-tissue spots",
        id="fit-nan-embedding",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.fit, edited(k.table(), _set_value("X_handcrafted", (4, 0), np.inf)), features="handcrafted"
        ),
        ValueError,
        r"NaN or infinite values in 1 in-tissue spots\. Drop those spots",
        id="fit-inf-embedding",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=["handcrafted", "uni"]),
        KeyError,
        r"no `obsm\['X_uni'\]` .*hd\.tl\.embed\(sdata, models=\['uni'\]\)",
        id="fit-embedding-missing",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, _embedding_slides(k, _rename_cell_type), features="handcrafted"),
        ValueError,
        r"other cell types than the first slide: missing \['tumour'\], extra \['cancer'\]",
        id="fit-cell-types-differ-between-slides",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.fit, _embedding_slides(k, _set_obsm("X_handcrafted", lambda x: x[:, :20])), features="handcrafted"
        ),
        ValueError,
        r"has 20 dims but the model expects 51: it was embedded with another model",
        id="fit-feature-dims-differ-between-slides",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, edited(k.table(), _set_value("abund", (0, 1), -2.0)), features="handcrafted"),
        ValueError,
        r"`obsm\['abund'\]` of slide .* has negative values; abundances must be >= 0",
        id="fit-negative-abundance",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features="handcrafted", learning_rate=3),
        TypeError,
        r"Unknown hyperparameters \['learning_rate'\]; valid: .*'lr'",
        id="fit-unknown-hyperparameter",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table()[:0].copy(), features="handcrafted"),
        ValueError,
        r"No in-tissue spots to train on",
        id="fit-empty-slide",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=[]),
        TypeError,
        r"`features` must be an encoder name or a non-empty list",
        id="fit-no-features",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, {"slide": k.table()}, features="handcrafted"),
        TypeError,
        r"`slides` must be a SpatialData, an AnnData or a non-empty list of them, got dict",
        id="fit-wrong-type",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features="handcrafted", target="cell2location"),
        KeyError,
        r"no `obsm\['cell2location'\]` to train on.*pass `target=`",
        id="fit-target-missing",
    ),
    # ---- tl.predict
    pytest.param(
        lambda k: call(hd.tl.predict, edited(k.table(), _set_obsm("X_handcrafted", lambda x: x[:, :20])), k.model),
        ValueError,
        r"has 20 dims but the model expects 51.*overwrite=True",
        id="predict-feature-dim-mismatch",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table()[:0].copy(), k.model),
        ValueError,
        r"The table has no spots to predict",
        id="predict-empty-table",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, edited(k.table(), _drop("obsm", "X_handcrafted")), k.model),
        KeyError,
        r"no `obsm\['X_handcrafted'\]` \(embeddings of 'handcrafted'\)",
        id="predict-embedding-missing",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), "model.safetensors"),
        TypeError,
        r"`model` must be an AbundanceRegressor, got str.*AbundanceRegressor\.load",
        id="predict-model-path-instead-of-model",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), hd.tl.AbundanceRegressor()),
        RuntimeError,
        r"not fitted: call `fit` or `AbundanceRegressor\.load` first",
        id="predict-unfitted-model",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), k.model, key_added="abund"),
        KeyError,
        r"`adata\.obsm\['abund'\]` already exists",
        id="predict-over-existing-result",
    ),
    pytest.param(
        lambda k: call(
            hd.metrics.cc_score, k.table().obsm["abund"], edited(k.table(), _rename_cell_type).obsm["abund"]
        ),
        ValueError,
        r"different cell types: only in y_true \['tumour'\], only in y_pred \['cancer'\]",
        id="cc_score-cell-types-differ-between-model-and-target",
    ),
    # ---- gr
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, k.table(), length_scale_um=0),
        ValueError,
        r"`length_scale_um` must be a positive number .* got 0",
        id="rbf_graph-length-scale-zero",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, k.table(), length_scale_um="150"),
        ValueError,
        r"`length_scale_um` must be a positive number .* got '150'",
        id="rbf_graph-length-scale-string",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, k.table(), length_scale_px=-20.0),
        ValueError,
        r"`length_scale_px` must be a positive number",
        id="rbf_graph-negative-length-scale-px",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, k.table(), cutoff=1.0),
        ValueError,
        r"`cutoff` must lie strictly between 0 and 1",
        id="rbf_graph-cutoff-one",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, edited(k.table(), _drop("obsm", "spatial"))),
        KeyError,
        r"no `obsm\['spatial'\]` spot coordinates",
        id="rbf_graph-no-coordinates",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, edited(k.table(), _drop("uns", "histodecon"))),
        KeyError,
        r"needs each sample's um/px.*`length_scale_px=`",
        id="rbf_graph-no-um-per-px",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, k.table()[:0].copy()),
        ValueError,
        r"The table has no spots",
        id="rbf_graph-empty-table",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, edited(k.table(), _set_value("spatial", (5, 0), np.nan))),
        ValueError,
        r"\['spot00005'\]\) have no position",
        id="rbf_graph-nan-coordinates",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, edited(k.table(), _set_obsm("spatial", lambda xy: xy[:, :1]))),
        ValueError,
        r"must be spots x 2 \(x, y\) pixel positions, got shape \(30, 1\)",
        id="rbf_graph-one-coordinate-column",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, edited(k.table(), _set_obsm("spatial", lambda xy: xy / 1e4))),
        ValueError,
        r"median .* um apart .*not full-resolution pixels",
        id="rbf_graph-all-spots-within-one-pixel",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, k.table().obsm["abund"]),
        TypeError,
        r"Expected a SpatialData or AnnData, got DataFrame",
        id="rbf_graph-wrong-type",
    ),
    pytest.param(
        lambda k: call(hd.gr.moran_r, k.coloc(), key="abundance"),
        KeyError,
        r"No `obsm\['abundance'\]` .*Pass `key=`",
        id="moran_r-unknown-key",
    ),
    pytest.param(
        lambda k: call(
            hd.gr.moran_r, edited(k.coloc(), _set_value("abund", (0, 0), np.nan)), key="abund", key_added="again"
        ),
        ValueError,
        r"missing or infinite values in \['tumour'\]",
        id="moran_r-nan-abundance",
    ),
    pytest.param(
        lambda k: call(hd.gr.moran_r, k.table(), key="abund"),
        KeyError,
        r"No `obsp\['rbf_connectivities'\]` .*hd\.gr\.rbf_graph\(data\)",
        id="moran_r-graph-missing",
    ),
    pytest.param(
        lambda k: call(hd.gr.moran_r, k.coloc(), key="abund", key_added="again", n_perms=0),
        ValueError,
        r"`n_perms` must be a positive integer or None, got 0",
        id="moran_r-zero-permutations",
    ),
    pytest.param(
        lambda k: call(hd.gr.moran_r, k.coloc(), key="abund", key_added="again", sample="B1"),
        KeyError,
        r"No sample 'B1' in `obs\['sample'\]`; known samples: \['synthetic'\]",
        id="moran_r-unknown-sample",
    ),
    pytest.param(
        lambda k: call(
            hd.gr.moran_r,
            edited(k.coloc(), lambda a: a.obsm.__setitem__("label", pd.DataFrame({"type": "tumour"}, a.obs_names))),
            key="label",
        ),
        TypeError,
        r"non-numeric columns \['type'\]",
        id="moran_r-labels-instead-of-abundances",
    ),
    pytest.param(
        lambda k: call(hd.gr.moran_r, k.coloc(), key="abund"),
        KeyError,
        r"`adata\.uns\['abund_moranR'\]` already exists",
        id="moran_r-result-exists",
    ),
    # ---- pl and the colocalisation metric
    pytest.param(
        lambda k: call(hd.pl.colocalization, k.table()),
        KeyError,
        r"No Moran's R result for 'abund'.*hd\.gr\.moran_r\(data, key='abund'\)",
        id="pl_colocalization-no-result",
    ),
    pytest.param(
        lambda k: call(hd.pl.colocalization, k.coloc(), titles=["truth"]),
        ValueError,
        r"Got 1 titles for 2 keys",
        id="pl_colocalization-titles-mismatch",
    ),
    pytest.param(
        lambda k: call(hd.pl.colocalization, k.coloc()),
        ValueError,
        r"other cell types than that of 'abund': only in 'abund' \['adipocyte', 'endothelial'\]",
        id="pl_colocalization-cell-types-differ",
    ),
    pytest.param(
        lambda k: call(hd.pl.colocalization, k.coloc(), keys=["abund"], method="ward"),
        ValueError,
        r"Unknown linkage `method='ward'`; use one of \['average'",
        id="pl_colocalization-euclidean-only-linkage",
    ),
    pytest.param(
        lambda k: call(hd.pl.colocalization, k.coloc(), keys=[]),
        ValueError,
        r"Give at least one key",
        id="pl_colocalization-no-keys",
    ),
    pytest.param(
        lambda k: call(hd.pl.spatial_abundance, k.table(), "tumour"),
        TypeError,
        r"draws on the H&E image and needs a SpatialData, got AnnData",
        id="pl_spatial_abundance-table-without-image",
    ),
    pytest.param(
        lambda k: call(hd.pl.spatial_abundance, k.slide(), "neuron", keys=["abund"]),
        KeyError,
        r"`obsm\['abund'\]` has no cell types \['neuron'\]",
        id="pl_spatial_abundance-unknown-cell-type",
    ),
    pytest.param(
        lambda k: call(hd.pl.spatial_abundance, k.slide(), "tumour"),
        KeyError,
        r"No `obsm\['pred_abund'\]` in the table",
        id="pl_spatial_abundance-prediction-missing",
    ),
    pytest.param(
        lambda k: call(hd.pl.scores, pd.DataFrame({"configuration": ["uni"], "cc": [0.4]})),
        KeyError,
        r"`cv_results` lacks columns \['sample', 'l1'\]",
        id="pl_scores-columns-missing",
    ),
    pytest.param(
        lambda k: call(hd.pl.scores, pd.DataFrame(columns=["configuration", "sample", "cc", "l1"])),
        ValueError,
        r"`cv_results` has no rows",
        id="pl_scores-empty-results",
    ),
    pytest.param(
        lambda k: call(
            hd.pl.scores,
            pd.DataFrame({"configuration": ["uni"], "sample": ["A1"], "cc": [0.4], "l1": [0.8]}),
            save=k.st.he.parent / "missing" / "scores.png",
        ),
        FileNotFoundError,
        r"folder .*missing does not exist",
        id="pl_scores-save-to-missing-folder",
    ),
    pytest.param(
        lambda k: call(hd.metrics.colocalization_similarity, k.coloc().uns["abund_moranR"], np.eye(5)),
        TypeError,
        r"`R_pred` must be a cell types x cell types DataFrame",
        id="colocalization_similarity-array-instead-of-frame",
    ),
    pytest.param(
        lambda k: call(
            hd.metrics.colocalization_similarity, k.coloc().uns["abund_moranR"], k.coloc().uns["pred_abund_moranR"]
        ),
        ValueError,
        r"different cell types: only in R_true \['adipocyte', 'endothelial'\]",
        id="colocalization_similarity-cell-types-differ",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), CASES)
def test_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match):
    function, args, kwargs = make(kit)
    before = snapshot((args, kwargs))
    with pytest.raises(error, match=match):
        function(*args, **kwargs)
    assert_unchanged(before, (args, kwargs))
