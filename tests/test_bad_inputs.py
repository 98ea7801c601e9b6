"""The bad-input catalogue: every public step refuses wrong input early, with an error that names the
problem (and, where there is one, the fix), and leaves everything the caller passed in unmodified."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
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
from safetensors.torch import save_file
from scipy import sparse
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Scale, get_transformation, set_transformation

import histodecon as hd
from histodecon.pp._patches import image_levels
from histodecon.tl._estimator._file import record_checksum

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
    pd.DataFrame(np.ones((5, 3), int), index=[*ids, "2x1"], columns=["GENE1", "GENE2", "GENE3"]).to_csv(
        folder / "counts_repeated.tsv", sep="\t"
    )
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
    sdata.images["synthetic_image"] = Image2DModel.parse(
        element.data[:1], dims=("c", "y", "x"), transformations=get_transformation(element, get_all=True)
    )


def _rename_cell_type(adata: AnnData) -> None:
    adata.obsm["abund"] = adata.obsm["abund"].rename(columns={"tumour": "cancer"})


def call(function: Callable, *args, **kwargs) -> tuple[Callable, tuple, dict]:
    return function, args, kwargs


def _table_slide(sdata: SpatialData, edit: Callable[[AnnData], None]) -> SpatialData:
    """``sdata`` after editing its table."""
    edit(sdata.tables["table"])
    return sdata


def _second_image(sdata: SpatialData) -> None:
    """A second image in the sample's pixel coordinate system: which one is the H&E is ambiguous."""
    element = sdata.images["synthetic_image"]
    sdata.images["copy"] = Image2DModel.parse(
        element.data, dims=("c", "y", "x"), transformations=get_transformation(element, get_all=True)
    )


def _micrometres(mpp) -> Callable[[SpatialData], None]:
    """The slide with ``mpp`` as its µm per pixel (``None``: none recorded anywhere), on new elements."""

    def edit(sdata: SpatialData) -> None:
        for elements, key in ((sdata.images, "synthetic_image"), (sdata.shapes, "synthetic_spots")):
            element = elements[key].copy(deep=False) if key in sdata.images else elements[key].copy()
            systems = dict(get_transformation(element, get_all=True))
            systems.pop("synthetic_um")
            if mpp is not None:
                systems["synthetic_um"] = Scale([mpp, mpp], axes=("x", "y"))
            set_transformation(element, systems, set_all=True)
            elements[key] = element
        sdata.tables["table"].uns["histodecon"]["samples"]["synthetic"].pop("mpp")

    return edit


def _spot_radius(radius: float) -> Callable[[SpatialData], None]:
    def edit(sdata: SpatialData) -> None:
        sdata.shapes["synthetic_spots"] = sdata.shapes["synthetic_spots"].assign(radius=radius)

    return edit


def _no_cache(table: AnnData) -> AnnData:
    del table.uns["histodecon"]
    return table


def _foreign(k, *, images: int = 1, radius: float = 55.0, annotated: bool = True) -> SpatialData:
    """The kit's spots as another tool writes them: images and circles in "global", a table annotating them.

    With the default ``radius`` the spots have Visium's layout (110 px across, 200 px apart).
    """
    base = k.slide()
    centres = base.tables["table"].obsm["spatial"]
    circles = ShapesModel.parse(
        centres, geometry=0, radius=np.full(N_SPOTS, radius), index=base.tables["table"].obs_names
    )
    table = AnnData(
        obs=pd.DataFrame(
            {"region": pd.Categorical(["spots"] * N_SPOTS), "spot": base.tables["table"].obs_names},
            index=base.tables["table"].obs_names,
        )
    )
    if annotated:
        table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot")
    pixels = base.images["synthetic_image"].data
    named = {"he": pixels, "he_lowres": pixels}
    return SpatialData(
        images={name: Image2DModel.parse(data, dims=("c", "y", "x")) for name, data in list(named.items())[:images]},
        shapes={"spots": circles},
        tables={"table": table},
    )


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
        r"No pseudo-spot .* lies on tissue.*pass one's own `tissue` mask",
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
        lambda k: call(hd.io.read_st, k.st.counts_repeated, k.st.spots, k.st.he),
        ValueError,
        r"'counts_repeated\.tsv' repeats 1 spot id\(s\), e\.g\. \['2x1'\]: every spot needs one row",
        id="read_st-counts-repeat-a-spot-id",
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
        ValueError,
        r"No image shares coordinate system 'synthetic' with the spots 'synthetic_spots'.*"
        r"hd\.io\.from_spatialdata\(sdata, image_key=",
        id="spot_patches-image-element-missing",
    ),
    # ---- sample geometry: one check, one message (issues 14 and 15)
    pytest.param(
        lambda k: call(hd.pp.spot_patches, edited(k.slide(), _second_image)),
        ValueError,
        r"Several images share coordinate system 'synthetic' .*\['synthetic_image', 'copy'\]\. Say which .*`image_key=`",
        id="spot_patches-ambiguous-image",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, edited(k.slide(), lambda s: s.shapes.pop("synthetic_spots"))),
        ValueError,
        r"annotates shapes 'synthetic_spots' for sample 'synthetic', which the SpatialData lacks",
        id="spot_patches-shapes-element-missing",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, _table_slide(k.slide(), _drop("uns", "spatialdata_attrs"))),
        ValueError,
        r"The table annotates no shapes .*TableModel\.parse.*hd\.io\.from_spatialdata",
        id="spot_patches-table-annotates-no-shapes",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, edited(k.slide(), _micrometres(np.inf))),
        ValueError,
        r"µm per pixel \(mpp\) of sample 'synthetic' is inf; .*hd\.io\.from_spatialdata\(sdata, mpp=\.\.\.\)",
        id="spot_patches-infinite-mpp",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, edited(k.slide(), _micrometres(None)), models=["handcrafted"], overwrite=True),
        ValueError,
        r"µm per pixel \(mpp\) of sample 'synthetic' is missing; .*hd\.io\.from_spatialdata\(sdata, mpp=\.\.\.\)",
        id="embed-missing-mpp",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, edited(k.slide(), _micrometres(np.nan))),
        ValueError,
        r"µm per pixel \(mpp\) of sample 'synthetic' is nan; .*from_spatialdata.*`length_scale_px=`",
        id="rbf_graph-nan-mpp",
    ),
    pytest.param(
        lambda k: call(
            hd.gr.rbf_graph, edited(k.table(), lambda t: t.uns["histodecon"]["samples"]["synthetic"].pop("mpp"))
        ),
        ValueError,
        r"µm per pixel \(mpp\) of sample 'synthetic' is missing; .*from_spatialdata",
        id="rbf_graph-table-cache-without-mpp",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, _no_cache(k.table())),
        KeyError,
        r"The table alone does not say the µm per pixel .*Pass the SpatialData",
        id="rbf_graph-table-without-geometry",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, edited(k.slide(), _spot_radius(np.inf))),
        ValueError,
        r"spot diameter in pixels of sample 'synthetic' is inf; .*finite positive",
        id="spot_patches-infinite-spot-size",
    ),
    pytest.param(
        lambda k: call(hd.io.read_slide, k.image, mpp=np.inf),
        ValueError,
        r"`mpp` must be a positive number .* got inf",
        id="read_slide-infinite-mpp",
    ),
    pytest.param(
        lambda k: call(hd.io.from_spatialdata, _foreign(k, images=2)),
        ValueError,
        r"Several images share a coordinate system with the shapes 'spots': \['he', 'he_lowres'\]\. .*`image_key=`",
        id="from_spatialdata-ambiguous-image",
    ),
    pytest.param(
        lambda k: call(hd.io.from_spatialdata, _foreign(k, images=0)),
        ValueError,
        r"No image shares a coordinate system with the shapes 'spots'.*`image_key=`",
        id="from_spatialdata-no-image",
    ),
    pytest.param(
        lambda k: call(hd.io.from_spatialdata, _foreign(k), mpp=np.inf),
        ValueError,
        r"`mpp` must be a positive number .* got inf",
        id="from_spatialdata-infinite-mpp",
    ),
    pytest.param(
        lambda k: call(hd.io.from_spatialdata, _foreign(k, radius=50.0)),
        ValueError,
        r"µm per pixel of sample 'spots' cannot be inferred.*Pass `mpp=` .* or `spot_diameter_um=`",
        id="from_spatialdata-mpp-not-inferable",
    ),
    pytest.param(
        lambda k: call(hd.io.from_spatialdata, _foreign(k, annotated=False), mpp=0.5),
        ValueError,
        r"The table annotates no shapes .*TableModel\.parse",
        id="from_spatialdata-table-annotates-no-shapes",
    ),
    pytest.param(
        lambda k: call(hd.io.from_spatialdata, _foreign(k), mpp=0.5, shapes_key="cells"),
        ValueError,
        r"The table annotates shapes \['spots'\], not 'cells'",
        id="from_spatialdata-unknown-shapes",
    ),
    pytest.param(
        lambda k: call(hd.io.from_spatialdata, k.table()),
        TypeError,
        r"from_spatialdata needs a SpatialData, got AnnData",
        id="from_spatialdata-anndata",
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
        lambda k: call(hd.pp.filter_background, k.slide(), max_glass_fraction=1.5),
        ValueError,
        r"`max_glass_fraction` must be a fraction in \[0, 1\], got 1\.5",
        id="filter_background-glass-fraction-out-of-range",
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
        lambda k: call(hd.tl.predict, k.table(), 42),
        TypeError,
        r"`model` must be an AbundanceRegressor, a saved model's path or a Hub repository id, got int",
        id="predict-model-of-another-type",
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
        r"1 spots have missing or infinite values in `obsm\['abund'\]` \(columns \['tumour'\]\), e\.g\. \['.+'\]\. "
        r"Pass `nan_policy='omit'`",
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
        lambda k: call(hd.gr.moran_r, k.coloc(), key="abund", key_added="again", n_perms=True),
        ValueError,
        r"`n_perms` must be a positive integer or None, got True",
        id="moran_r-bool-permutations",
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
        r"The labels of 'pred_abund' do not match those of 'abund': only in 'abund' \['adipocyte', 'endothelial'\].*put the panel with every label first",
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


# ------------------------------------------------------------------------------------------ issue 15 (helper A3)
# Stores bound to their slide, counts that are positive integers, known devices, every slide checked
# before anything is written, duplicated gene names.
_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without CUDA")


def _scratch() -> Path:
    """A fresh empty folder for a case's stores (created, not inside any input)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="histodecon-bad-"))


def _store_of(slide: SpatialData) -> Path:
    """A store holding the handcrafted embeddings of ``slide`` (its table is not kept)."""
    store = _scratch() / "emb.zarr"
    hd.tl.embed(slide, models=["handcrafted"], store=store, overwrite=True)
    return store


def _inverted_image(sdata: SpatialData) -> SpatialData:
    """``sdata`` with its image's pixels inverted: the same spots, names and coordinates on another image."""
    from spatialdata.transformations import get_transformation

    element = sdata.images["synthetic_image"]
    transformations = get_transformation(element, get_all=True)
    sdata.images["synthetic_image"] = Image2DModel.parse(
        255 - element.data, dims=("c", "y", "x"), transformations=transformations
    )
    return sdata


def _shared_table(k) -> list[SpatialData]:
    """Two slides whose SpatialData objects differ but hold the same table object."""
    first = k.slide()
    second = SpatialData(images=dict(first.images), shapes=dict(first.shapes), tables={"table": first.tables["table"]})
    return [first, second]


def _same_slide_twice(k) -> list[SpatialData]:
    slide = k.slide()
    return [slide, slide]


def _repeat_first_name(attr: str) -> Callable[[AnnData], None]:
    def edit(adata: AnnData) -> None:
        names = list(getattr(adata, attr))
        names[1] = names[0]
        setattr(adata, attr, names)

    return edit


def _slash_cell_type(adata: AnnData) -> None:
    adata.obsm["abund"] = adata.obsm["abund"].rename(columns={"tumour": "tumour/cancer"})


def _slash_label(adata: AnnData) -> None:
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).replace({"tumour": "tumour/cancer"})


def _string_column(adata: AnnData) -> None:
    adata.obsm["abund"] = adata.obsm["abund"].assign(tumour=adata.obsm["abund"]["tumour"].map("{:.3f}".format))


_REPEATED_NAMES = pytest.mark.filterwarnings("ignore:(Observation|Variable) names are not unique")
_POSITIVE = r"`{}` must be a positive integer, got {}; pass e\.g\."
_CUDA = r"CUDA was requested \(device='cuda'\) but torch\.cuda\.is_available\(\) is False; use device='cpu'"
_UNKNOWN_DEVICE = r"Unknown device 'gpu'; use 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
_TWICE = r"same {} is listed twice in the slides \(positions 0 and 1\); each slide is embedded once: drop the repeat"
_SPOT_NAMES = r"spot names \(`obs_names`\) of {} are not unique; repeated: \['{}'\].*obs_names_make_unique"
_GENE_NAMES = r"gene names of {} are not unique; repeated: \['{}'\]\. Sum the counts of each gene"

ISSUE15_CASES = [
    # ---- embed: counts, devices, every slide checked before anything is written
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], batch_size=-1, overwrite=True),
        ValueError,
        _POSITIVE.format("batch_size", "-1"),
        id="embed-batch-size-negative",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], batch_size=2.5, overwrite=True),
        ValueError,
        _POSITIVE.format("batch_size", r"2\.5"),
        id="embed-batch-size-fractional",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], batch_size=True, overwrite=True),
        ValueError,
        _POSITIVE.format("batch_size", "True"),
        id="embed-batch-size-bool",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], batch_size="32", overwrite=True),
        TypeError,
        _POSITIVE.format("batch_size", "'32'"),
        id="embed-batch-size-string",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], num_workers=1.5, overwrite=True),
        ValueError,
        _POSITIVE.format("num_workers", r"1\.5"),
        id="embed-num-workers-fractional",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], device="gpu", overwrite=True),
        ValueError,
        _UNKNOWN_DEVICE,
        id="embed-unknown-device",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], device=0, overwrite=True),
        TypeError,
        r"`device` must be a device name such as 'cpu' or 'cuda', got int",
        id="embed-device-not-a-name",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), models=["handcrafted"], device="cuda", overwrite=True),
        ValueError,
        _CUDA,
        id="embed-cuda-without-gpu",
        marks=_NO_CUDA,
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, _same_slide_twice(k), models=["handcrafted"], overwrite=True),
        ValueError,
        _TWICE.format("slide"),
        id="embed-same-slide-twice",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, _shared_table(k), models=["handcrafted"], overwrite=True),
        ValueError,
        _TWICE.format("table"),
        id="embed-two-slides-one-table",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed,
            _table_slide(k.slide(), _repeat_first_name("obs_names")),
            models=["handcrafted"],
            overwrite=True,
        ),
        ValueError,
        _SPOT_NAMES.format("the slide", "spot00000"),
        id="embed-duplicated-spot-names",
        marks=_REPEATED_NAMES,
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed,
            [k.slide(), _table_slide(k.slide(), _repeat_first_name("obs_names"))],
            models=["handcrafted"],
            overwrite=True,
        ),
        ValueError,
        _SPOT_NAMES.format("slide 1", "spot00000"),
        id="embed-second-slide-duplicated-spot-names",
        marks=_REPEATED_NAMES,
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed,
            [k.slide(), k.slide()],
            models=["handcrafted"],
            store=[_scratch() / "a.zarr"] * 2,
            overwrite=True,
        ),
        ValueError,
        r"`store` gives several slides the same path .*a\.zarr'\]; pass one path per slide",
        id="embed-one-store-path-twice",
    ),
    # ---- embed: a store is bound to its slide
    pytest.param(
        lambda k: call(
            hd.tl.embed,
            hd.datasets.synthetic(n_spots=N_SPOTS, seed=1, counts=False),
            models=["handcrafted"],
            store=_store_of(k.slide()),
        ),
        ValueError,
        r"emb\.zarr' holds 'handcrafted' embeddings of another slide.*what differs: image pixels under 16 spots.*"
        r"Give each slide its own `store=` path, or delete .*emb\.zarr/handcrafted",
        id="embed-store-of-another-slide-same-spot-names",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed,
            _inverted_image(k.slide()),
            models=["handcrafted"],
            store=_store_of(k.slide()),
            overwrite=True,
        ),
        ValueError,
        r"another slide.*what differs: image pixels under 16 spots \(store '\w{12}', now '\w{12}'\)\. Give each slide",
        id="embed-store-of-the-same-spots-on-another-image",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed, k.slide(), models=["handcrafted"], store=_store_of(k.slide()), patch_size=64, overwrite=True
        ),
        ValueError,
        r"what differs: image pixels under 16 spots .*; patch_size \(store \d+, now 64\)",
        id="embed-store-of-another-patch-size",
    ),
    # ---- embed_many
    pytest.param(
        lambda k: call(hd.tl.embed_many, _same_slide_twice(k), ["handcrafted"], stores=_scratch(), overwrite=True),
        ValueError,
        _TWICE.format("slide"),
        id="embed_many-same-slide-twice",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed_many,
            [_table_slide(k.slide(), _repeat_first_name("obs_names"))],
            ["handcrafted"],
            stores=_scratch(),
            overwrite=True,
        ),
        ValueError,
        _SPOT_NAMES.format("the slide", "spot00000"),
        id="embed_many-duplicated-spot-names",
        marks=_REPEATED_NAMES,
    ),
    pytest.param(
        lambda k: call(hd.tl.embed_many, [k.slide(), k.slide()], ["handcrafted"], stores=_scratch(), overwrite=True),
        ValueError,
        r"same samples, spots and pixels under them \(\['synthetic-\w{12}-\w{8}'\]\), so they would share a store",
        id="embed_many-two-copies-of-one-slide",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed_many, [k.slide()], ["handcrafted"], stores=_scratch(), device="gpu", overwrite=True),
        ValueError,
        _UNKNOWN_DEVICE,
        id="embed_many-unknown-device",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.embed_many, [k.slide()], ["handcrafted"], stores=_scratch(), batch_size=0.5, overwrite=True
        ),
        ValueError,
        _POSITIVE.format("batch_size", r"0\.5"),
        id="embed_many-batch-size-fractional",
    ),
    # ---- predict: batch_size only bounds memory, and must be a count
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), k.model, batch_size=-1),
        ValueError,
        _POSITIVE.format("batch_size", "-1"),
        id="predict-batch-size-negative",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), k.model, batch_size=0),
        ValueError,
        _POSITIVE.format("batch_size", "0"),
        id="predict-batch-size-zero",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), k.model, batch_size=100.0),
        ValueError,
        _POSITIVE.format("batch_size", r"100\.0"),
        id="predict-batch-size-float",
    ),
    pytest.param(
        lambda k: call(k.model.predict, np.asarray(k.table().obsm["X_handcrafted"]), batch_size=0),
        ValueError,
        _POSITIVE.format("batch_size", "0"),
        id="regressor_predict-batch-size-zero",
    ),
    # ---- fit: counts among the hyperparameters, devices, numeric targets
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=["handcrafted"], hidden=(8,), max_epochs=0.5),
        ValueError,
        _POSITIVE.format("max_epochs", r"0\.5"),
        id="fit-fractional-epochs",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=["handcrafted"], hidden=(8,), batch_size=0),
        ValueError,
        _POSITIVE.format("batch_size", "0"),
        id="fit-batch-size-zero",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=["handcrafted"], hidden=(8,), batch_size=2.5),
        ValueError,
        _POSITIVE.format("batch_size", r"2\.5"),
        id="fit-batch-size-fractional",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=["handcrafted"], hidden=(8,), patience=True),
        ValueError,
        _POSITIVE.format("patience", "True"),
        id="fit-patience-bool",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=["handcrafted"], hidden=(8,), max_epochs=2, device="gpu"),
        ValueError,
        _UNKNOWN_DEVICE,
        id="fit-unknown-device",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, k.table(), features=["handcrafted"], hidden=(8,), max_epochs=2, device="cuda"),
        ValueError,
        _CUDA,
        id="fit-cuda-without-gpu",
        marks=_NO_CUDA,
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, edited(k.table(), _string_column), features=["handcrafted"], hidden=(8,)),
        TypeError,
        r"`obsm\['abund'\]` has non-numeric columns \['tumour'\]; pass a spots x cell types matrix of numbers",
        id="fit-string-column-in-target",
    ),
    pytest.param(
        lambda k: call(hd.tl.cross_validate, [k.table(), k.table()], features=["handcrafted"], max_epochs=1.5),
        ValueError,
        _POSITIVE.format("max_epochs", r"1\.5"),
        id="cross_validate-fractional-epochs",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, edited(k.table(), _slash_cell_type), features=["handcrafted"], hidden=(8,)),
        ValueError,
        r"Cell types of `obsm\['abund'\]` of slide .* \['tumour/cancer'\] contain '/'.*Rename them",
        id="fit-slash-in-cell-type",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.deconvolve, k.counts(), edited(copy.deepcopy(k.reference), _slash_label), labels_key="cell_type"
        ),
        ValueError,
        r"Cell types of `obs\['cell_type'\]` of the reference \['tumour/cancer'\] contain '/'.*Rename them",
        id="deconvolve-slash-in-cell-type",
    ),
    # ---- deconvolve: duplicated genes, counts, priors, devices
    pytest.param(
        lambda k: call(
            hd.tl.deconvolve, edited(k.counts(), _repeat_first_name("var_names")), k.reference, labels_key="cell_type"
        ),
        ValueError,
        _GENE_NAMES.format("slide synthetic", r"\w+"),
        id="deconvolve-duplicated-gene-names",
        marks=_REPEATED_NAMES,
    ),
    pytest.param(
        lambda k: call(
            hd.tl.deconvolve,
            k.counts(),
            edited(copy.deepcopy(k.reference), _repeat_first_name("var_names")),
            labels_key="cell_type",
        ),
        ValueError,
        _GENE_NAMES.format("the reference", r"\w+"),
        id="deconvolve-reference-duplicated-gene-names",
        marks=_REPEATED_NAMES,
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), k.reference, labels_key="cell_type", max_epochs=0),
        ValueError,
        _POSITIVE.format("max_epochs", "0"),
        id="deconvolve-zero-epochs",
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), k.reference, labels_key="cell_type", num_samples=10.5),
        ValueError,
        _POSITIVE.format("num_samples", r"10\.5"),
        id="deconvolve-fractional-posterior-samples",
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), k.reference, labels_key="cell_type", n_cells_per_location=-5),
        ValueError,
        r"`n_cells_per_location` must be a positive number \(a cell2location prior\), got -5",
        id="deconvolve-negative-cells-per-spot",
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), k.reference, labels_key="cell_type", device="gpu"),
        ValueError,
        _UNKNOWN_DEVICE,
        id="deconvolve-unknown-device",
    ),
    pytest.param(
        lambda k: call(hd.tl.deconvolve, k.counts(), k.reference, labels_key="cell_type", device="cuda"),
        ValueError,
        _CUDA,
        id="deconvolve-cuda-without-gpu",
        marks=_NO_CUDA,
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), ISSUE15_CASES)
def test_issue15_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match):
    test_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match)


# ------------------------------------------------------------------------------------------ issue 15 item 5, issue 17
# Model files bounded (helper M5): forged JSONs (their checksum recomputed, as anyone can) are refused
# before any tensor is allocated, naming the file and the field; damaged or wrong-format weights files
# name the file and the expected format; models by Hub repository id, offline.
_FORGED = r"{}: field `{}` {}.*The file was not written by `AbundanceRegressor\.save`.*use the original files"
_WEIGHTS = r"{} {}.*expected a safetensors file or a PyTorch zip checkpoint saved with torch\.save"


def _model_folder() -> Path:
    """A fresh folder for a case's files (created, not inside any input)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="histodecon-model-"))


def _forged_model(k, edit: Callable[[dict], None]) -> Path:
    """The JSON of ``k.model`` saved afresh, after ``edit`` and with its checksum recomputed."""
    json_path = _model_folder() / "model.json"
    k.model.save(json_path)
    record = json.loads(json_path.read_text())
    edit(record)
    record["record_sha256"] = record_checksum(record)
    json_path.write_text(json.dumps(record))
    return json_path


def _widths(widths) -> Callable[[dict], None]:
    def edit(record: dict) -> None:
        record["architecture"]["hidden"] = record["hyperparameters"]["hidden"] = widths

    return edit


def _setting(section: str | None, key: str, value: Any) -> Callable[[dict], None]:
    return lambda record: (record[section] if section else record).__setitem__(key, value)


def _truncated_tensors(k) -> Path:
    json_path = _model_folder() / "model.json"
    k.model.save(json_path)
    tensors = json_path.with_suffix(".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-40])
    return json_path


def _weights_file(name: str, write: Callable[[Path], None]) -> Path:
    path = _model_folder() / name
    write(path)
    return path


def _half(save: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return write


def _embed_with(k, path: Path) -> tuple[Callable, tuple, dict]:
    """``hd.tl.embed`` with ``path`` as UNI's weights: the weights are read before the slide is touched."""
    return call(hd.tl.embed, k.slide(), models=["uni"], weights={"uni": path})


def _uni_state() -> dict:
    return {"weight": torch.zeros(64, 64)}


MODEL_FILE_CASES = [
    # ---- AbundanceRegressor.load: the JSON schema, exact types and bounds
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _widths([1_000_000] * 7))),
        ValueError,
        _FORGED.format(
            ".*model.json", r"architecture\.hidden\[0\]", r"must be an integer in \[1, 65536\], got 1000000"
        ),
        id="load-model-huge-widths",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _widths([8] * 65))),
        ValueError,
        _FORGED.format(".*model.json", r"architecture\.hidden", r"must have 1 to 64 entries, got 65"),
        id="load-model-too-many-layers",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _widths([-8]))),
        ValueError,
        _FORGED.format(".*model.json", r"architecture\.hidden\[0\]", r"must be an integer in \[1, 65536\], got -8"),
        id="load-model-negative-width",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _setting("architecture", "n_features", "51"))),
        ValueError,
        _FORGED.format(".*model.json", r"architecture\.n_features", r"must be an integer, got '51' \(string\)"),
        id="load-model-number-as-string",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _setting(None, "best_epoch", True))),
        ValueError,
        _FORGED.format(".*model.json", r"best_epoch", r"must be an integer, got True \(boolean\)"),
        id="load-model-boolean-as-integer",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _setting("hyperparameters", "lr", "1e-3"))),
        ValueError,
        _FORGED.format(".*model.json", r"hyperparameters\.lr", r"must be a number, got '1e-3' \(string\)"),
        id="load-model-hyperparameter-as-string",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, lambda r: r.pop("features"))),
        ValueError,
        _FORGED.format(".*model.json", r"features", r"is missing"),
        id="load-model-missing-field",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _setting(None, "code", "os.system"))),
        ValueError,
        _FORGED.format(".*model.json", r"code", r"is not part of the format"),
        id="load-model-extra-field",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _setting(None, "version", 99))),
        ValueError,
        r"model\.json has format version 99; this histodecon reads versions \[1, 2, 3, 4\]\. Load it with the .* release",
        id="load-model-unknown-version",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _forged_model(k, _widths([8192, 8192]))),
        ValueError,
        r"model\.safetensors does not hold the tensors of the recorded architecture .*'hidden': \[8192, 8192\]",
        id="load-model-header-disagrees-with-json",
    ),
    pytest.param(
        lambda k: call(hd.tl.AbundanceRegressor.load, _truncated_tensors(k)),
        ValueError,
        r"model\.safetensors is \d+ bytes, but its header describes .* modified or truncated after saving\. Use an intact",
        id="load-model-truncated-tensors",
    ),
    # ---- models by path or Hub repository id
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), "my-lab/not-cached"),
        FileNotFoundError,
        r"No saved model at 'my-lab/not-cached'.*not in the cache while offline.*hf download my-lab/not-cached",
        id="predict-repo-id-not-cached-offline",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), _model_folder() / "absent"),
        FileNotFoundError,
        r"absent\.json not found; a saved model is a \.safetensors file and a \.json file of the same name",
        id="predict-model-path-missing",
    ),
    pytest.param(
        lambda k: call(k.model.push_to_hub, "not a repo id", token="hf_x"),
        ValueError,
        r"'not a repo id' is not a Hugging Face repository id; pass `'<owner>/<name>'`",
        id="push_to_hub-not-a-repo-id",
    ),
    # ---- embed: weights files damaged or in another format (nothing unpickled)
    pytest.param(
        lambda k: _embed_with(k, _weights_file("pytorch_model.bin", lambda p: p.write_bytes(b""))),
        ValueError,
        _WEIGHTS.format("pytorch_model.bin", r"is empty \(0 bytes\)"),
        id="embed-weights-empty-file",
    ),
    pytest.param(
        lambda k: _embed_with(k, _weights_file("uni.safetensors", _half(lambda p: save_file(_uni_state(), p)))),
        ValueError,
        _WEIGHTS.format("uni.safetensors", r"is a truncated or corrupt safetensors file"),
        id="embed-weights-truncated-safetensors",
    ),
    pytest.param(
        lambda k: _embed_with(k, _weights_file("pytorch_model.bin", _half(lambda p: torch.save(_uni_state(), p)))),
        ValueError,
        _WEIGHTS.format("pytorch_model.bin", r"starts like a PyTorch zip checkpoint but is truncated or corrupt"),
        id="embed-weights-truncated-zip",
    ),
    pytest.param(
        lambda k: _embed_with(k, _weights_file("uni.safetensors", lambda p: p.write_bytes(pickle.dumps(_uni_state())))),
        ValueError,
        _WEIGHTS.format("uni.safetensors", r"is a pickle \(torch\.save's legacy format, or a pickled file renamed\)"),
        id="embed-weights-pickle-renamed-safetensors",
    ),
    pytest.param(
        lambda k: _embed_with(k, _weights_file("pytorch_model.bin", lambda p: p.write_bytes(b"<html>login</html>"))),
        ValueError,
        _WEIGHTS.format("pytorch_model.bin", r"is in an unknown format"),
        id="embed-weights-random-bytes",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), MODEL_FILE_CASES)
def test_model_file_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match):
    test_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match)


# ------------------------------------------------------------------------------------- command line
COMMAND_LINE_CASES = [
    pytest.param(["--version", "demo"], r"--version takes no other arguments", id="version-with-a-command"),
    pytest.param(["demo", "--version"], r"unrecognized arguments: --version", id="version-after-a-command"),
    pytest.param(["--version", "--quick"], r"unrecognized arguments: --quick", id="version-with-an-option"),
    pytest.param(["frobnicate"], r"invalid choice: 'frobnicate'", id="unknown-command"),
    pytest.param([], r"a command is required \(demo\), or --version", id="no-command"),
]


@pytest.mark.parametrize(("argv", "match"), COMMAND_LINE_CASES)
def test_command_line_prints_the_usage_and_exits_non_zero(argv, match, capsys, tmp_path, monkeypatch):
    """``python -m histodecon`` answers what it does not understand with its usage, exit status 2, nothing run."""
    import re

    from histodecon.__main__ import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^2$"):
        main(argv)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: python -m histodecon [-h] [--version] command ...")
    assert re.search(match, captured.err)
    assert not any(tmp_path.iterdir())  # no demo output written


# ------------------------------------------------------------------------------- issue 26: hints that work
def _proportions_only(adata: AnnData) -> None:
    """her2st's layout: the truth in ``obsm['proportions']``, no ``obsm['abund']``."""
    adata.obsm["proportions"] = adata.obsm.pop("abund")


def _abundances_table_twice(k) -> SpatialData:
    sdata = k.slide()
    hd.get.abundances(sdata, "abund", table_key_added="abund")
    return sdata


HINT_CASES = [
    pytest.param(
        lambda k: call(hd.tl.predict, [k.slide()], k.model),
        TypeError,
        r"`hd.tl.predict` takes one slide, got a list of 1; predict several with `hd.tl.predict_many\(slides, model\)`",
        id="predict-a-list-points-to-predict_many",
    ),
    pytest.param(
        lambda k: call(hd.tl.fit, edited(k.table(), _proportions_only), features="handcrafted"),
        KeyError,
        r"no `obsm\['abund'\]` to train on.*pass `target=`.*obsm keys are \[.*'proportions'.*\]",
        id="fit-without-abund-lists-the-obsm-keys",
    ),
    pytest.param(
        lambda k: call(hd.get.abundances, _abundances_table_twice(k), "abund", table_key_added="abund"),
        KeyError,
        r"`sdata.tables\['abund'\]` already exists\. Pass `overwrite=True` to replace it, or `table_key_added=`",
        id="abundances-table-twice-names-table_key_added",
    ),
    pytest.param(
        lambda k: call(
            hd.gr.moran_r, edited(k.coloc(), _drop("obsp", "rbf_connectivities")), key="abund", key_added="again"
        ),
        KeyError,
        r"No `obsp\['rbf_connectivities'\]` in the table; its obsp keys are \['rbf_distances'\]",
        id="moran_r-missing-graph-lists-the-obsp-keys",
    ),
    pytest.param(
        lambda k: call(hd.gr.rbf_graph, edited(k.table(), _drop("obsm", "spatial"))),
        KeyError,
        r"no `obsm\['spatial'\]` spot coordinates \(its obsm keys are \['abund', 'X_handcrafted'\]\)",
        id="rbf_graph-without-coordinates-lists-the-obsm-keys",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), HINT_CASES)
def test_hint_names_what_exists_and_nothing_passed_in_changes(kit, make, error, match):
    test_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match)


# ---- tissue masks (hd.pp.detect_tissue, the `tissue` / `tissue_key` of read_slide and filter_background)
def _with_tissue_labels(sdata: SpatialData) -> SpatialData:
    """``sdata`` with its own tissue mask already stored as ``labels['synthetic_tissue']``."""
    hd.pp.detect_tissue(sdata, mask=np.ones((144, 140), bool))
    return sdata


TISSUE_CASES = [
    pytest.param(
        lambda k: call(hd.pp.detect_tissue, k.slide(), mask=np.ones((100, 300), bool)),
        ValueError,
        r"The 100 x 300 tissue mask does not have the shape of image 'synthetic_image' \(1440 x 1400",
        id="detect_tissue-mask-of-another-shape",
    ),
    pytest.param(
        lambda k: call(hd.pp.detect_tissue, k.slide(), mask=np.ones((144, 140), np.float32)),
        ValueError,
        r"2-D boolean or integer array \(0 glass, >0 tissue\), got shape \(144, 140\) of dtype float32",
        id="detect_tissue-float-mask",
    ),
    pytest.param(
        lambda k: call(hd.pp.detect_tissue, k.slide(), mask=np.ones((144, 140, 3), bool)),
        ValueError,
        r"2-D boolean or integer array .* got shape \(144, 140, 3\)",
        id="detect_tissue-rgb-mask",
    ),
    pytest.param(
        lambda k: call(hd.pp.detect_tissue, k.slide(), mask=[[True, False]]),
        TypeError,
        r"A tissue mask must be a 2-D numpy array, got list",
        id="detect_tissue-mask-not-an-array",
    ),
    pytest.param(
        lambda k: call(hd.pp.detect_tissue, _with_tissue_labels(k.slide())),
        KeyError,
        r"`sdata\.labels\['synthetic_tissue'\]` already exists\. Pass `overwrite=True` to replace it",
        id="detect_tissue-labels-exist",
    ),
    pytest.param(
        lambda k: call(hd.pp.filter_background, k.slide(), tissue_key="synthetic_image_tissue"),
        KeyError,
        r"No labels element 'synthetic_image_tissue' to use as tissue mask; the labels are \[\]",
        id="filter_background-missing-tissue-key",
    ),
    pytest.param(
        lambda k: call(hd.io.read_slide, k.image, mpp=0.5, tissue=np.ones((10, 30), bool)),
        ValueError,
        r"The 10 x 30 tissue mask does not have the shape of image 'slide' \(1440 x 1400",
        id="read_slide-tissue-mask-of-another-shape",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), TISSUE_CASES)
def test_bad_tissue_mask_is_refused_and_nothing_passed_in_changes(kit, make, error, match):
    test_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match)


# ------------------------------------------------------------------------------------------ issue 23: intervals
def _older_format_model(k) -> Path:
    """``k.model`` saved as model file version 3: no calibration for intervals."""

    def edit(record: dict) -> None:
        del record["calibration"]
        record["version"] = 3

    return _forged_model(k, edit)


def _with_obsm(key: str) -> Callable[[AnnData], None]:
    def edit(adata: AnnData) -> None:
        adata.obsm[key] = adata.obsm["abund"].copy()

    return edit


_INTERVAL = (
    r"`interval` must be a coverage level strictly between 0 and 1 \(e\.g\. 0\.8\), or None for no interval; got {}"
)
INTERVAL_CASES = [
    *(
        pytest.param(
            lambda k, v=value: call(hd.tl.predict, k.table(), k.model, interval=v),
            ValueError,
            _INTERVAL.format(shown),
            id=f"predict-interval-{name}",
        )
        for value, shown, name in (
            (0.0, "0.0", "zero"),
            (1.0, "1.0", "one"),
            (1.5, "1.5", "above-one"),
            (-0.2, "-0.2", "negative"),
            (True, "True", "bool"),
            ("0.8", "'0.8'", "string"),
        )
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), _model_folder() / "absent", interval=2),
        ValueError,
        _INTERVAL.format("2"),
        id="predict-interval-checked-before-the-model-is-loaded",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, k.table(), _older_format_model(k), interval=0.8),
        ValueError,
        r"no calibration for prediction intervals.*version 3 or older.*Fit it again with `hd\.tl\.fit`",
        id="predict-interval-older-model-format",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict, edited(k.table(), _with_obsm("pred_abund_lower")), k.model, interval=0.8),
        KeyError,
        r"`adata\.obsm\['pred_abund_lower'\]` already exists\. Pass `overwrite=True`",
        id="predict-interval-over-existing-bound",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict_many, [k.table()], k.model, interval=0),
        ValueError,
        _INTERVAL.format("0"),
        id="predict_many-interval-zero",
    ),
    pytest.param(
        lambda k: call(hd.tl.predict_many, [k.table()], _older_format_model(k), interval=0.5),
        ValueError,
        r"no calibration for prediction intervals",
        id="predict_many-interval-older-model-format",
    ),
    pytest.param(
        lambda k: call(
            hd.tl.AbundanceRegressor.load,
            _forged_model(k, lambda r: r["calibration"]["residuals"][0].__setitem__(0, float("nan"))),
        ),
        ValueError,
        _FORGED.format(".*model.json", r"calibration\.residuals\[0\]", r"must hold \d+ finite residuals >= 0"),
        id="load-model-calibration-nan",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), INTERVAL_CASES)
def test_interval_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match):
    test_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match)


# ------------------------------------------------------------------------------------------ issue 24 (stain)
# Stain references through squidpy and the choice of image: unknown methods, references of the wrong
# type, an image_key that does not exist or is not RGB uint8, slides whose stain squidpy cannot fit.
def _channels_swapped(sdata: SpatialData) -> SpatialData:
    """``sdata`` with green and red swapped: tissue whose stain vectors lie far from H&E's (squidpy's fit fails)."""
    element = sdata.images["synthetic_image"]
    sdata.images["synthetic_image"] = Image2DModel.parse(
        element.data[[1, 0, 2]], dims=("c", "y", "x"), transformations=get_transformation(element, get_all=True)
    )
    return sdata


def _grey_beside(sdata: SpatialData) -> SpatialData:
    """``sdata`` with a one-channel image ``grey`` in the spots' coordinate systems, beside the H&E."""
    element = sdata.images["synthetic_image"]
    sdata.images["grey"] = Image2DModel.parse(
        element.data[:1], dims=("c", "y", "x"), transformations=get_transformation(element, get_all=True)
    )
    return sdata


def _float_beside(sdata: SpatialData) -> SpatialData:
    """``sdata`` with a float RGB image ``float`` in the spots' coordinate systems, beside the H&E."""
    element = sdata.images["synthetic_image"]
    sdata.images["float"] = Image2DModel.parse(
        element.data.astype(np.float32) / 255,
        dims=("c", "y", "x"),
        transformations=get_transformation(element, get_all=True),
    )
    return sdata


def _a_reference(k):
    return hd.pp.stain_reference(k.slide())


STAIN_CASES = [
    pytest.param(
        lambda k: call(hd.pp.stain_reference, k.slide(), method="hematoxylin"),
        ValueError,
        r"Unknown stain method 'hematoxylin'; squidpy's methods are \['macenko', 'vahadane', 'reinhard'\]",
        id="stain_reference-unknown-method",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), stain_reference="macenko"),
        TypeError,
        r"`stain_reference` must be a stain reference from `hd.pp.stain_reference` .* got str",
        id="embed-reference-of-the-wrong-type",
    ),
    pytest.param(
        lambda k: call(hd.pp.spot_patches, k.slide(), stain_reference=np.eye(3)),
        TypeError,
        r"`stain_reference` must be a stain reference .* got ndarray",
        id="spot_patches-reference-of-the-wrong-type",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), stain_reference={"method": "macenko", "stain_matrix": [[1.0]]}),
        ValueError,
        r"not a valid macenko reference: .*white_point",
        id="embed-broken-reference-record",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, k.slide(), image_key="he_normalized", overwrite=True),
        KeyError,
        r"No image 'he_normalized' in the SpatialData; its images are \['synthetic_image'\]",
        id="embed-image-key-missing",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, _grey_beside(k.slide()), image_key="grey", overwrite=True),
        ValueError,
        r"Image 'grey' has 1 channels; patches need RGB",
        id="embed-image-key-not-rgb",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, _float_beside(k.slide()), image_key="float", overwrite=True),
        ValueError,
        r"Image 'float' has dtype float32; patches need uint8 RGB",
        id="embed-image-key-not-uint8",
    ),
    pytest.param(
        lambda k: call(hd.pp.stain_reference, _grey_beside(k.slide()), image_key="grey"),
        ValueError,
        r"The image 'grey' is 1 channels of uint8; stain estimation needs an RGB uint8 H&E image",
        id="stain_reference-image-key-not-rgb",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, _grey_beside(k.slide()), overwrite=True),
        ValueError,
        r"Several images share coordinate system 'synthetic' .*\['synthetic_image', 'grey'\]\. .*`image_key=`",
        id="embed-several-images-without-image-key",
    ),
    pytest.param(
        lambda k: call(hd.pp.stain_reference, _channels_swapped(k.slide())),
        ValueError,
        r"squidpy's macenko stain estimation failed on samples \['synthetic'\]: eosin stain vector deviates .*"
        r"use `method='reinhard'`",
        id="stain_reference-fit-fails",
    ),
    pytest.param(
        lambda k: call(hd.tl.embed, _channels_swapped(k.slide()), stain_reference=_a_reference(k), overwrite=True),
        ValueError,
        r"squidpy could not estimate the stain of sample 'synthetic' \(image 'synthetic_image'\) to normalise it: "
        r".*embed this slide without `stain_reference=`",
        id="embed-source-fit-fails",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), STAIN_CASES)
def test_bad_stain_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match):
    test_bad_input_is_refused_and_nothing_passed_in_changes(kit, make, error, match)
