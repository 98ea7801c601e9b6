"""The public her2st dataset (Andersson et al. 2021): one HER2+ breast cancer section as SpatialData."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Literal

import pandas as pd
import pooch
import requests
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._settings import logger
from histodecon._utils import get_table
from histodecon.io import read_st

#: The authors' repository; files are fetched at the commits where they are stored as plain files.
REPOSITORY = "almaan/her2st"
_COMMITS = {
    "counts": "e75e5c53a994726a8ad251aaf653a02d7932eb6a",
    "proportions": "e75e5c53a994726a8ad251aaf653a02d7932eb6a",
    "spots": "9f2260c6aa8347996955d53f0a5f06ac14c93470",
    "image": "9f2260c6aa8347996955d53f0a5f06ac14c93470",
}
_SECTION = re.compile(r"^[A-H][1-6]$")


def _local_root(data_dir: str | Path | None) -> Path | None:
    """The her2st folder under ``data_dir`` or ``HISTODECON_DATA_DIR`` (the folder itself or its parent)."""
    configured = data_dir if data_dir is not None else os.environ.get(Key.env.data_dir)
    if configured is None:
        return None
    for candidate in (Path(configured), Path(configured) / "her2st"):
        if (candidate / "ST-cnts").is_dir():
            return candidate
    source = "`data_dir`" if data_dir is not None else Key.env.data_dir
    raise FileNotFoundError(
        f"{source} = {str(configured)!r} contains no her2st data (no ST-cnts folder in it or in its her2st/ "
        "subfolder). Point it at the folder holding ST-cnts, ST-spotfiles, ST-imgs and ST-deconv."
    )


def _remote_file(folder: str, commit: str, suffix: str) -> str:
    """The one file ending in ``suffix`` in a folder of the authors' repository (GitHub contents API)."""
    url = f"https://api.github.com/repos/{REPOSITORY}/contents/{folder}?ref={commit}"
    with urllib.request.urlopen(url, timeout=30) as response:
        names = [entry["name"] for entry in json.load(response) if entry["name"].endswith(suffix)]
    if len(names) != 1:
        raise FileNotFoundError(f"Expected one *{suffix} file in {REPOSITORY}/{folder}, found {names}.")
    return names[0]


def _fetch(remote: str, kind: str, local: Path, *, gunzip: bool = False) -> Path:
    """Download ``remote`` (a repository path) to ``local`` unless it is cached there."""
    if local.is_file():
        return local
    url = f"https://raw.githubusercontent.com/{REPOSITORY}/{_COMMITS[kind]}/{remote}"
    processor = pooch.Decompress(method="gzip", name=local.name) if gunzip else None
    name = Path(remote).name if gunzip else local.name
    return Path(pooch.retrieve(url, known_hash=None, fname=name, path=local.parent, processor=processor))


def _download(section: str, proportions: str | None, root: Path) -> Path:
    """Fetch one section into ``root`` in the public layout, returning ``root``."""
    patient = section[0]
    _fetch(f"data/ST-cnts/{section}.tsv.gz", "counts", root / "ST-cnts" / f"{section}.tsv.gz")
    _fetch(f"data/ST-spotfiles/{section}_selection.tsv", "spots", root / "ST-spotfiles" / f"{section}_selection.tsv")
    image_dir = root / "ST-imgs" / patient / section
    if not list(image_dir.glob("*.jpg")):
        name = _remote_file(f"data/ST-imgs/{patient}/{section}", _COMMITS["image"], ".jpg")
        _fetch(f"data/ST-imgs/{patient}/{section}/{name}", "image", image_dir / name)
    if proportions is not None:
        local = root / "ST-deconv" / proportions / f"{section}-proportion.tsv"
        if not local.is_file():
            folder = f"res/ST-deconv/props/{proportions}/{section}"
            name = _remote_file(folder, _COMMITS["proportions"], ".tsv.gz")
            _fetch(f"{folder}/{name}", "proportions", local, gunzip=True)
    return root


def _section_files(root: Path, section: str) -> tuple[Path, Path, Path]:
    patient = section[0]
    folder = root / "ST-imgs" / patient / section
    images = sorted(path for path in folder.glob("*") if path.suffix.lower() in (".jpg", ".jpeg"))
    if len(images) != 1:
        raise FileNotFoundError(
            f"Expected one JPEG in {str(folder)!r}, found {len(images)}. "
            "Keep the her2st layout ST-imgs/{patient}/{section}/<image>.jpg (or .jpeg)."
        )
    return root / "ST-cnts" / f"{section}.tsv.gz", root / "ST-spotfiles" / f"{section}_selection.tsv", images[0]


def _add_proportions(sdata: SpatialData, path: Path) -> SpatialData:
    """Join the stereoscope proportions on spot id into ``obsm['proportions']``; spots without a row are dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"No proportions file {str(path)!r}. Pass `proportions=None` to read without them.")
    table = pd.read_csv(path, sep="\t", index_col=0)
    table.index = table.index.astype(str)
    adata = get_table(sdata)
    keep = adata.obs_names.isin(table.index)
    if not keep.all():
        logger.warning(f"Dropping {(~keep).sum()} spots without a row in {path.name!r}.")
        adata = adata[keep].copy()
        sdata.tables[Key.tables.table] = adata
        region = adata.obs[Key.obs.region].iloc[0]
        sdata.shapes[region] = sdata.shapes[region].loc[adata.obs_names]
    renamed = {name: name.replace("/", "_") for name in table.columns if "/" in name}
    if renamed:
        logger.info(f"Renamed cell types {renamed} of {path.name!r}: zarr cannot store '/' in a column name.")
    adata.obsm[Key.obsm.proportions] = table.loc[adata.obs_names].rename(columns=renamed).astype("float64")
    return sdata


def her2st(
    section: str,
    *,
    data_dir: str | Path | None = None,
    proportions: Literal["major", "minor"] | None = "major",
) -> SpatialData:
    """One section of the her2st HER2-positive breast cancer dataset, with stereoscope proportions.

    Andersson et al., *Nature Communications* 12:6012 (2021): legacy Spatial Transcriptomics
    (100 um spots on a 200 um grid), full-resolution H&E at about 0.73 um/px, and per-spot
    cell-type proportions that the authors estimated with stereoscope.

    The files are read from ``data_dir`` or, when it is not given, the ``HISTODECON_DATA_DIR``
    environment variable; either may point at the her2st folder itself (holding ``ST-cnts``,
    ``ST-spotfiles``, ``ST-imgs``, ``ST-deconv``) or at a folder containing ``her2st/``. With
    neither set, the section is downloaded from the authors' GitHub repository
    (``almaan/her2st``) into the pooch cache and read from there afterwards.

    Parameters
    ----------
    section
        Section name, a patient letter ``A``-``H`` and a number, e.g. ``"C2"``.
    data_dir
        Local folder with the data (see above).
    proportions
        Tier of the stereoscope proportions put in ``obsm['proportions']``: ``"major"``
        (8 cell types) or ``"minor"`` (22); ``None`` reads none. Spots without a proportions
        row are dropped (logged), so that the training target has no gaps. A ``/`` in a cell
        type's name becomes ``_`` (``"CAFs MSC/iCAF-like"`` -> ``"CAFs MSC_iCAF-like"``), so that
        the slide and the models trained on it can be saved.

    Returns
    -------
    :class:`~spatialdata.SpatialData`
        SpatialData as from :func:`histodecon.io.read_st`, sample ``section``, with
        ``obs['patient']`` (the section letter) and ``obsm['proportions']`` (DataFrame, columns =
        cell types).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.datasets.her2st("C2")  # doctest: +SKIP
    >>> sdata.tables["table"].obsm["proportions"].shape  # doctest: +SKIP
    (187, 8)
    """
    if not isinstance(section, str) or not _SECTION.match(section):
        raise ValueError(f"`section` must name a her2st section such as 'C2' (A-H then 1-6), got {section!r}.")
    if proportions not in ("major", "minor", None):
        raise ValueError(f"`proportions` must be 'major', 'minor' or None, got {proportions!r}.")
    root = _local_root(data_dir)
    if root is None:
        try:
            root = _download(section, proportions, Path(pooch.os_cache("histodecon")) / "her2st")
        except (OSError, requests.RequestException) as error:
            raise ConnectionError(
                f"Could not download her2st section {section!r} from github.com/{REPOSITORY} ({error}). "
                f"Download the data yourself and set {Key.env.data_dir} (or pass `data_dir=`) to its folder."
            ) from error
    counts, spots, image = _section_files(root, section)
    sdata = read_st(counts, spots, image, sample=section)
    get_table(sdata).obs[Key.obs.patient] = pd.Categorical([section[0]] * get_table(sdata).n_obs)
    if proportions is not None:
        sdata = _add_proportions(sdata, root / "ST-deconv" / proportions / f"{section}-proportion.tsv")
    return sdata
