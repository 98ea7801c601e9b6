"""Reader for 10x Genomics Visium (Space Ranger output), through spatialdata-io."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import spatialdata_io
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._utils import check_centres, check_positive, check_spot_spacing, check_spots_inside, get_table
from histodecon.io._build import build_sdata
from histodecon.io._image import read_image

#: Visium spots are 55 um across.
VISIUM_SPOT_UM = 55.0


def _library_id(counts_path: Path, counts_file: str) -> str | None:
    """Library id from the counts file name prefix (``{lib}_filtered_...``) or, for an h5, its attributes."""
    prefix = counts_path.name.removesuffix(counts_file).removesuffix("_")
    if prefix or counts_path.suffix != ".h5":
        return prefix or None
    with h5py.File(counts_path, "r") as f:
        ids = f.attrs.get("library_ids")
    if ids is None or len(ids) == 0:
        return None
    return ids[0].decode() if isinstance(ids[0], bytes) else str(ids[0])


def read_visium(
    path: str | Path,
    *,
    fullres_image: str | Path | None = None,
    sample: str | None = None,
    counts_file: str = "filtered_feature_bc_matrix.h5",
    spot_diameter_um: float = VISIUM_SPOT_UM,
) -> SpatialData:
    """Read a Space Ranger output folder into the histodecon layout.

    Counts and spot positions are read by :func:`spatialdata_io.visium`; the image is the
    full-resolution H&E that was given to Space Ranger when ``fullres_image`` is passed
    (TIFF read lazily), else the ``spatial/tissue_hires_image.png`` that Space Ranger writes,
    with the spot centres scaled by ``tissue_hires_scalef``. The micrometres per pixel follow
    from the 55 um spot diameter: ``mpp = 55 / spot_diameter_fullres`` on the full-resolution
    image, divided by ``tissue_hires_scalef`` on the hires one.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (with the counts file and ``spatial/``).
    fullres_image
        The full-resolution image, absolute or relative to ``path``.
    sample
        Sample name; default: the library id (counts file name prefix or the h5's
        ``library_ids`` attribute, as scanpy uses it), else the folder name.
    counts_file
        Counts file in ``path``; ``filtered_feature_bc_matrix.h5`` keeps the spots under tissue.
    spot_diameter_um
        Physical spot diameter, 55 um for Visium.

    Returns
    -------
    :class:`~spatialdata.SpatialData`
        SpatialData with ``images[f"{sample}_image"]``, ``shapes[f"{sample}_spots"]`` and
        ``tables["table"]`` (counts, ``obs['array_row']``, ``obs['array_col']``, gene ids in ``var``).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.io.read_visium("outs", fullres_image="/data/slide.tif")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"The Space Ranger folder {str(path)!r} does not exist. Pass its `outs` folder.")
    check_positive(spot_diameter_um, "spot_diameter_um")
    counts_candidates = sorted(path.glob(f"*{counts_file}"))
    if not counts_candidates:
        raise FileNotFoundError(f"No counts file {counts_file!r} in {str(path)!r}. Pass `counts_file=`.")
    scalefactors_path = path / "spatial" / "scalefactors_json.json"
    if not scalefactors_path.is_file():
        raise FileNotFoundError(f"No {str(scalefactors_path)!r}. Pass the complete Space Ranger `outs` folder.")
    scalefactors = json.loads(scalefactors_path.read_text())
    sample = sample or _library_id(counts_candidates[0], counts_file) or path.name

    reference = spatialdata_io.visium(path, dataset_id=sample, counts_file=counts_file)
    adata = get_table(reference)
    spot_px = float(scalefactors["spot_diameter_fullres"])
    centres = check_centres(adata.obsm[Key.obsm.spatial], adata.obs_names, "Space Ranger spot positions")
    if fullres_image is None:
        image_path = path / "spatial" / "tissue_hires_image.png"
        scale = float(scalefactors["tissue_hires_scalef"])
        centres, spot_px = centres * scale, spot_px * scale
    else:
        image_path = Path(fullres_image) if Path(fullres_image).is_absolute() else path / fullres_image
    levels = read_image(image_path)
    check_spots_inside(centres, adata.obs_names, levels[0].shape[2], levels[0].shape[1], image_path.name)
    mpp = spot_diameter_um / spot_px
    check_spot_spacing(centres, mpp, f"sample {sample!r}")

    sdata = build_sdata(
        levels,
        centres,
        sample=sample,
        mpp=mpp,
        spot_diameter_px=spot_px,
        spot_ids=adata.obs_names,
        X=adata.X,
        var_names=adata.var_names,
        obs=adata.obs[[Key.obs.in_tissue, Key.obs.array_row, Key.obs.array_col]],
    )
    get_table(sdata).var = adata.var.copy()
    return sdata
