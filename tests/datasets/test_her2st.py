import gzip
import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pooch
import pytest
import spatialdata as sd
from PIL import Image

import histodecon as hd


def _mini_her2st(root):
    """Section H3 in the public her2st layout; spot 1x1 has no proportions row."""
    rng = np.random.default_rng(0)
    (root / "ST-cnts").mkdir(parents=True)
    (root / "ST-spotfiles").mkdir()
    (root / "ST-imgs" / "H" / "H3").mkdir(parents=True)
    (root / "ST-deconv" / "minor").mkdir(parents=True)
    spots = pd.DataFrame({"x": [1, 2, 3, 1, 2, 3], "y": [1, 1, 1, 2, 2, 2]})
    spots["pixel_x"], spots["pixel_y"] = 100.0 * spots["x"], 100.0 * spots["y"]
    spots["selected"] = 1
    spots.to_csv(root / "ST-spotfiles" / "H3_selection.tsv", sep="\t", index=False)
    ids = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    with gzip.open(root / "ST-cnts" / "H3.tsv.gz", "wt") as handle:
        pd.DataFrame(rng.poisson(3, (6, 4)), index=ids, columns=list("ABCD")).to_csv(handle, sep="\t")
    Image.fromarray(rng.integers(0, 256, (320, 420, 3), dtype=np.uint8)).save(root / "ST-imgs/H/H3/slide.jpg")
    props = pd.DataFrame(rng.dirichlet(np.ones(3), 5), index=ids[1:], columns=["T", "B", "Epi"])
    props.to_csv(root / "ST-deconv" / "minor" / "H3-proportion.tsv", sep="\t")
    return props


def test_local_folder_in_the_public_layout(tmp_path, monkeypatch):
    props = _mini_her2st(tmp_path / "her2st")
    sdata = hd.datasets.her2st("H3", data_dir=tmp_path, proportions="minor")
    table = sdata.tables["table"]
    # spot 1x1 has no proportions row: dropped from the table and the shapes
    assert list(table.obs_names) == list(props.index)
    assert list(sdata.shapes["H3_spots"].index) == list(props.index)
    pd.testing.assert_frame_equal(table.obsm["proportions"], props, check_names=False)
    assert table.obs["patient"].unique().tolist() == ["H"]
    assert table.uns["histodecon"]["samples"]["H3"]["mpp"] == pytest.approx(2.0)
    # the her2st folder itself, through the environment variable, without proportions
    monkeypatch.setenv("HISTODECON_DATA_DIR", str(tmp_path / "her2st"))
    plain = hd.datasets.her2st("H3", proportions=None)
    assert plain.tables["table"].n_obs == 6 and "proportions" not in plain.tables["table"].obsm


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="section"):
        hd.datasets.her2st("Z9", data_dir=tmp_path)
    with pytest.raises(ValueError, match="proportions"):
        hd.datasets.her2st("C2", data_dir=tmp_path, proportions="subset")
    with pytest.raises(FileNotFoundError, match="ST-cnts"):
        hd.datasets.her2st("C2", data_dir=tmp_path)
    _mini_her2st(tmp_path / "her2st")
    with pytest.raises(FileNotFoundError, match="proportions"):
        hd.datasets.her2st("H3", data_dir=tmp_path, proportions="major")


@pytest.mark.data
def test_c2_reads_with_its_geometry_and_proportions(her2st_dir):
    sdata = hd.datasets.her2st("C2", data_dir=her2st_dir)
    table = sdata.tables["table"]
    assert table.n_obs == 187 and table.n_vars > 15000
    info = table.uns["histodecon"]["samples"]["C2"]
    assert info["mpp"] == pytest.approx(0.73, abs=0.01)
    assert info["spot_diameter_px"] == pytest.approx(136, abs=2)
    proportions = table.obsm["proportions"]
    assert proportions.shape == (187, 8) and "Epithelial" in proportions.columns
    np.testing.assert_allclose(proportions.sum(axis=1), 1.0, atol=1e-3)
    assert table.obs["patient"].unique().tolist() == ["C"]

    (jpeg,) = (her2st_dir / "ST-imgs" / "C" / "C2").glob("*.jpg")
    Image.MAX_IMAGE_PIXELS = None
    pixels = np.asarray(Image.open(jpeg))
    spots = pd.read_csv(her2st_dir / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
    patches = hd.pp.spot_patches(sdata, size=224)
    for k in (0, 93, 186):
        x, y = spots.loc[table.obs_names[k], ["pixel_x", "pixel_y"]]
        x0, y0 = int(np.floor(x - 112 + 0.5)), int(np.floor(y - 112 + 0.5))
        np.testing.assert_array_equal(patches[k], pixels[y0 : y0 + 224, x0 : x0 + 224])


def test_upper_case_jpeg_suffix_is_found(tmp_path):
    _mini_her2st(tmp_path / "her2st")
    folder = tmp_path / "her2st" / "ST-imgs" / "H" / "H3"
    (folder / "slide.jpg").rename(folder / "slide.JPG")
    assert hd.datasets.her2st("H3", data_dir=tmp_path, proportions=None).tables["table"].n_obs == 6


def test_slashed_cell_type_names_are_renamed_so_the_slide_saves(tmp_path):
    props = _mini_her2st(tmp_path / "her2st").rename(columns={"T": "CAFs MSC/iCAF-like"})
    props.to_csv(tmp_path / "her2st" / "ST-deconv" / "minor" / "H3-proportion.tsv", sep="\t")
    sdata = hd.datasets.her2st("H3", data_dir=tmp_path, proportions="minor")
    expected = props.rename(columns={"CAFs MSC/iCAF-like": "CAFs MSC_iCAF-like"})
    pd.testing.assert_frame_equal(sdata.tables["table"].obsm["proportions"], expected, check_names=False)
    sdata.write(tmp_path / "h3.zarr")
    back = sd.read_zarr(tmp_path / "h3.zarr").tables["table"].obsm["proportions"]
    pd.testing.assert_frame_equal(back, expected, check_names=False)


@pytest.mark.data
def test_b4_keeps_spots_with_counts(her2st_dir):
    table = hd.datasets.her2st("B4", data_dir=her2st_dir.parent, proportions="minor").tables["table"]
    assert table.n_obs == 283 and table.obsm["proportions"].shape == (283, 22)


def _fake_github(monkeypatch, repo_root):
    """Serve raw files and folder listings of the authors' repository from ``repo_root``."""

    def retrieve(url, known_hash, fname, path, processor=None):
        remote = url.split("/her2st/", 1)[1].split("/", 1)[1]  # drop the commit
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_root / remote, target)
        return processor(str(target), "download", None) if processor else str(target)

    def urlopen(url, timeout):
        folder = url.split("/contents/", 1)[1].split("?", 1)[0]
        return io.BytesIO(json.dumps([{"name": p.name} for p in (repo_root / folder).iterdir()]).encode())

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_download_fills_the_cache_in_the_public_layout(tmp_path, monkeypatch):
    local = tmp_path / "local"
    props = _mini_her2st(local)
    repo = tmp_path / "repo"  # the GitHub layout: data/..., res/ST-deconv/props/{tier}/{S}/W.<stamp>.tsv.gz
    (repo / "data").mkdir(parents=True)
    for folder in ("ST-cnts", "ST-spotfiles", "ST-imgs"):
        shutil.copytree(local / folder, repo / "data" / folder)
    (repo / "res/ST-deconv/props/minor/H3").mkdir(parents=True)
    with gzip.open(repo / "res/ST-deconv/props/minor/H3/W.2020-03-05.tsv.gz", "wt") as handle:
        props.to_csv(handle, sep="\t")
    _fake_github(monkeypatch, repo)
    monkeypatch.delenv("HISTODECON_DATA_DIR", raising=False)
    monkeypatch.setattr(pooch, "os_cache", lambda name: tmp_path / "cache")
    sdata = hd.datasets.her2st("H3", proportions="minor")
    pd.testing.assert_frame_equal(sdata.tables["table"].obsm["proportions"], props, check_names=False)
    assert (tmp_path / "cache/her2st/ST-deconv/minor/H3-proportion.tsv").is_file()
    assert (tmp_path / "cache/her2st/ST-imgs/H/H3/slide.jpg").is_file()


def test_offline_without_local_data_says_where_to_point(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv("HISTODECON_DATA_DIR", raising=False)
    monkeypatch.setattr(pooch, "os_cache", lambda name: tmp_path / "cache")
    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(ConnectionError, match="HISTODECON_DATA_DIR"):
        hd.datasets.her2st("C2")
