"""Whole-slide images: µm per pixel from the file's metadata, stored pyramid levels, OpenSlide formats."""

import numpy as np
import pytest
import tifffile
from PIL import Image
from spatialdata.transformations import get_transformation

import histodecon as hd
from histodecon._utils import sample_info
from histodecon.io._image import read_openslide
from histodecon.io._wsi import openslide_mpp

APERIO_DESCRIPTION = (
    "Aperio Image Library v12.0.15 \r\n1300x900 [0,0 1300x900] (256x256) RAW/RGB|AppMag = 40"
    "|StripeWidth = 1000|MPP = 0.2520|Left = 25.69|Top = 23.44"
)


def _tissue_image():
    """900 x 1300 px of glass with a textured pink rectangle of tissue at rows 200-700, columns 300-1100."""
    rng = np.random.default_rng(5)
    image = np.full((900, 1300, 3), 243, np.uint8)
    image[200:700, 300:1100] = (np.array([205, 130, 185]) + rng.integers(-25, 25, (500, 800, 3))).astype(np.uint8)
    return image


@pytest.fixture(scope="module")
def image():
    return _tissue_image()


@pytest.fixture(scope="module")
def aperio_svs(tmp_path_factory, image):
    """An Aperio-style SVS: tiled baseline with the Aperio description, strip thumbnail, tiled 4x level."""
    path = tmp_path_factory.mktemp("svs") / "slide.svs"
    options = {"photometric": "rgb", "metadata": None}  # no tifffile description before Aperio's
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), description=APERIO_DESCRIPTION, compression="zlib", **options)
        tif.write(image[::8, ::8], description="Aperio Image Library v12.0.15 \r\nthumbnail", **options)
        tif.write(image[::4, ::4], tile=(128, 128), compression="zlib", **options)
    return path


def _pyramid(path, image, **resolution):
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), subifds=1, photometric="rgb", **resolution)
        tif.write(image[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")


def test_aperio_svs_mpp_and_stored_levels(aperio_svs, image):
    sdata = hd.io.read_slide(aperio_svs, spot_diameter_um=20)
    info = sample_info(sdata.tables["table"])
    assert (info["mpp"], info["mpp_source"]) == (0.252, "aperio")
    assert info["spot_diameter_px"] == pytest.approx(20 / 0.252)
    tree = sdata.images["slide_image"]
    assert [tree[f"scale{i}"]["image"].shape for i in range(2)] == [(3, 900, 1300), (3, 225, 325)]
    np.testing.assert_array_equal(tree["scale1"]["image"].values, np.moveaxis(image[::4, ::4], -1, 0))
    scale = get_transformation(tree["scale1"]["image"], to_coordinate_system=info["coordinate_system"])
    np.testing.assert_allclose(scale.to_affine_matrix(("x", "y"), ("x", "y"))[[0, 1], [0, 1]], [4.0, 4.0])
    x, y = sdata.tables["table"].obsm["spatial"].T
    assert x.min() >= 300 - 40 and x.max() <= 1100 + 40 and y.min() >= 200 - 40 and y.max() <= 700 + 40


def test_openslide_reads_the_svs_lazily_with_its_mpp(aperio_svs, image):
    levels = read_openslide(aperio_svs)
    assert [level.shape for level in levels] == [(3, 900, 1300), (3, 225, 325)]
    assert levels[0].chunks[1] == (900,) and levels[0].chunks[2] == (1024, 276)
    np.testing.assert_array_equal(
        levels[0][:, 150:750, 1000:1200].compute(), np.moveaxis(image[150:750, 1000:1200], -1, 0)
    )
    np.testing.assert_array_equal(levels[1].compute(), np.moveaxis(image[::4, ::4], -1, 0))
    assert openslide_mpp(aperio_svs) == (0.252, "openslide")


@pytest.mark.parametrize(
    ("resolution", "expected"),
    [
        ({"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}, 0.5),
        ({"resolution": (25_400 / 0.25, 25_400 / 0.25), "resolutionunit": "INCH"}, 0.25),
    ],
    ids=["cm", "inch"],
)
def test_pyramidal_tiff_resolution_tags(tmp_path, image, resolution, expected):
    _pyramid(tmp_path / "generic.tif", image, **resolution)
    sdata = hd.io.read_slide(tmp_path / "generic.tif", spot_diameter_um=20)
    info = sample_info(sdata.tables["table"])
    assert info["mpp"] == pytest.approx(expected, rel=1e-6) and info["mpp_source"] == "tiff-resolution"
    assert len(sdata.images["generic_image"]) == 2


@pytest.mark.parametrize(("size", "unit", "expected"), [(0.4, "µm", 0.4), (400.0, "nm", 0.4)])
def test_ome_xml_physical_size(tmp_path, image, size, unit, expected):
    metadata = {
        "axes": "YXS",
        "PhysicalSizeX": size,
        "PhysicalSizeXUnit": unit,
        "PhysicalSizeY": size,
        "PhysicalSizeYUnit": unit,
    }
    tifffile.imwrite(tmp_path / "s.ome.tif", image, photometric="rgb", tile=(256, 256), metadata=metadata)
    info = sample_info(hd.io.read_slide(tmp_path / "s.ome.tif", spot_diameter_um=20).tables["table"])
    assert info["mpp"] == pytest.approx(expected) and info["mpp_source"] == "ome-xml"


def test_argument_wins_over_metadata(aperio_svs):
    info = sample_info(hd.io.read_slide(aperio_svs, mpp=0.3, spot_diameter_um=20).tables["table"])
    assert (info["mpp"], info["mpp_source"]) == (0.3, "argument")


def test_missing_metadata_raises_the_clear_error(tmp_path, image):
    tifffile.imwrite(tmp_path / "bare.tif", image, photometric="rgb")  # resolution unit "none"
    tifffile.imwrite(tmp_path / "screen.tif", image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    Image.fromarray(image).save(tmp_path / "bare.png")
    for name in ("bare.tif", "screen.tif", "bare.png"):
        with pytest.raises(ValueError, match=r"records no µm per pixel.*Pass `mpp=`"):
            hd.io.read_slide(tmp_path / name)
    with pytest.raises(ValueError, match="array carries no µm per pixel: pass `mpp=`"):
        hd.io.read_slide(image)


def test_image_and_wsi_modules_do_not_import_each_other():
    """Pixels (``_image``) come before metadata (``_wsi``): one direction, function-level imports included."""
    import ast
    from pathlib import Path

    import histodecon.io

    folder = Path(histodecon.io.__file__).parent

    def imported(name: str) -> set[str]:
        tree = ast.parse((folder / f"{name}.py").read_text())
        from_imports = {
            f"histodecon.io.{node.module or ''}" if node.level else node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        return from_imports | {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }

    assert "histodecon.io._image" in imported("_wsi")
    assert not {module for module in imported("_image") if module.startswith("histodecon.io")}
