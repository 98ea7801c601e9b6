"""HEST-1k sample folders (st/<id>.h5ad, wsis/<id>.tif, metadata/<id>.json), generated in HEST's layout."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import tifffile

import histodecon as hd
from histodecon._utils import sample_info

SAMPLE = "TENX00"


def _write_hest(root, meta, *, resolution=None):
    """A 1200 x 1000 px slide with coloured squares under 12 spots 200 px apart, in HEST's folder layout."""
    rng = np.random.default_rng(11)
    image = np.full((1000, 1200, 3), 240, np.uint8)
    cols, rows = np.meshgrid(np.arange(4), np.arange(3))
    centres = np.column_stack([250 + 200 * cols.ravel(), 300 + 200 * rows.ravel()]).astype(float)
    for x, y in centres.astype(int):
        image[y - 50 : y + 50, x - 50 : x + 50] = rng.integers(20, 200, 3)
    counts = rng.poisson(2.0, (12, 5)).astype(np.float32)
    obs = pd.DataFrame(
        {"in_tissue": 1, "array_row": rows.ravel(), "array_col": 2 * cols.ravel()},
        index=[f"{c}x{r}" for c, r in zip(2 * cols.ravel(), rows.ravel(), strict=True)],
    )
    adata = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(5)]))
    adata.obsm["spatial"] = centres
    for folder in ("st", "wsis", "metadata"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(root / "st" / f"{SAMPLE}.h5ad")
    with tifffile.TiffWriter(root / "wsis" / f"{SAMPLE}.tif") as tif:
        tif.write(image, tile=(256, 256), subifds=1, photometric="rgb", **(resolution or {}))
        tif.write(image[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
    (root / "metadata" / f"{SAMPLE}.json").write_text(json.dumps(meta))
    return image, adata


VISIUM_META = {
    "pixel_size_um_estimated": 0.5,
    "pixel_size_um_embedded": 0.4,
    "spot_diameter": 55.0,
    "inter_spot_dist": 100.0,
}


def test_hest_sample(tmp_path):
    image, adata = _write_hest(tmp_path, VISIUM_META)
    sdata = hd.io.read_hest(tmp_path, SAMPLE)
    table = sdata.tables["table"]
    info = sample_info(table)
    assert (info["mpp"], info["mpp_source"], info["spot_diameter_px"]) == (0.5, "hest-estimated", 110.0)
    assert (info["spot_diameter_um"], info["spot_spacing_um"]) == (55.0, 100.0)
    assert list(table.obs_names) == list(adata.obs_names) and list(table.var_names) == list(adata.var_names)
    np.testing.assert_array_equal(table.X.toarray() if hasattr(table.X, "toarray") else table.X, adata.X)
    np.testing.assert_array_equal(table.obsm["spatial"], adata.obsm["spatial"])
    assert table.obs["array_col"].tolist() == adata.obs["array_col"].tolist() and table.obs["in_tissue"].all()
    assert len(sdata.images[f"{SAMPLE}_image"]) == 2  # the stored pyramid levels
    patches = hd.pp.spot_patches(sdata, size=100)
    x, y = adata.obsm["spatial"][7].astype(int)
    np.testing.assert_array_equal(patches[7], image[y - 50 : y + 50, x - 50 : x + 50])


def test_hest_mpp_fallbacks_and_errors(tmp_path):
    _write_hest(tmp_path / "a", {**VISIUM_META, "pixel_size_um_estimated": None})
    assert sample_info(hd.io.read_hest(tmp_path / "a", SAMPLE).tables["table"])["mpp_source"] == "hest-embedded"
    no_mpp = {"spot_diameter": 55.0, "pixel_size_um_estimated": float("nan")}
    _write_hest(tmp_path / "b", no_mpp, resolution={"resolution": (2e4, 2e4), "resolutionunit": "CENTIMETER"})
    info = sample_info(hd.io.read_hest(tmp_path / "b", SAMPLE).tables["table"])
    assert (info["mpp"], info["mpp_source"]) == (pytest.approx(0.5), "tiff-resolution")
    assert "spot_spacing_um" not in info
    _write_hest(tmp_path / "c", no_mpp)
    with pytest.raises(ValueError, match="no µm per pixel.*Pass `mpp=`"):
        hd.io.read_hest(tmp_path / "c", SAMPLE)
    assert sample_info(hd.io.read_hest(tmp_path / "c", SAMPLE, mpp=0.5).tables["table"])["mpp_source"] == "argument"
    _write_hest(tmp_path / "d", {"pixel_size_um_estimated": 0.5})
    with pytest.raises(ValueError, match="spot_diameter_um="):
        hd.io.read_hest(tmp_path / "d", SAMPLE)
    assert (
        sample_info(hd.io.read_hest(tmp_path / "d", SAMPLE, spot_diameter_um=55).tables["table"])["spot_diameter_px"]
        == 110
    )
    with pytest.raises(FileNotFoundError, match="HEST sample 'OTHER'"):
        hd.io.read_hest(tmp_path / "a", "OTHER")
