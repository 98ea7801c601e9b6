"""Reader for one sample of HEST-1k: its spots' counts, whole-slide image and metadata."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._utils import check_centres, check_positive, check_spots_inside, get_table
from histodecon.io._build import build_sdata
from histodecon.io._image import check_file, read_image
from histodecon.io._slide import MPP_SOURCE
from histodecon.io._wsi import file_mpp

#: Metadata fields holding µm per pixel, in the order used: HEST's own estimate, then the scanner's.
HEST_MPP_FIELDS = {"pixel_size_um_estimated": "hest-estimated", "pixel_size_um_embedded": "hest-embedded"}
#: Spot geometry fields of the metadata, in µm, copied to the provenance record.
SPOT_DIAMETER_FIELD, SPOT_SPACING_FIELD = "spot_diameter", "inter_spot_dist"


def _number(value) -> float | None:
    """A finite positive float, or ``None`` for HEST's missing values (null, NaN, "")."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def read_hest(
    path: str | Path,
    sample_id: str,
    *,
    mpp: float | None = None,
    spot_diameter_um: float | None = None,
) -> SpatialData:
    """Read one sample of a HEST-1k download into the histodecon layout.

    HEST-1k keeps each sample under its id in three folders of the download: ``st/<id>.h5ad``
    (counts, spot centres in ``obsm['spatial']`` in pixels of the full-resolution image),
    ``wsis/<id>.tif`` (the pyramidal whole-slide image, read lazily, its levels kept) and
    ``metadata/<id>.json``. µm per pixel is ``pixel_size_um_estimated`` of the metadata, else
    ``pixel_size_um_embedded``, else the image's own metadata; the spot diameter is the
    metadata's ``spot_diameter`` (µm). Both, their sources and ``inter_spot_dist`` go to
    ``uns['histodecon']['samples'][sample_id]``.

    Parameters
    ----------
    path
        The HEST-1k folder holding ``st/``, ``wsis/`` and ``metadata/``.
    sample_id
        HEST sample id, e.g. ``"TENX95"``; also the sample name.
    mpp
        Micrometres per pixel of the image; overrides the metadata.
    spot_diameter_um
        Spot diameter; overrides the metadata's ``spot_diameter`` (needed where it is missing).

    Returns
    -------
    :class:`~spatialdata.SpatialData`
        SpatialData with ``images[f"{sample_id}_image"]``, ``shapes[f"{sample_id}_spots"]`` and
        ``tables["table"]`` (counts and the h5ad's ``obs`` columns).

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.io.read_hest("hest_data", "TENX95")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"The HEST-1k folder {str(path)!r} does not exist. Pass the folder holding `st/`.")
    st_path = check_file(path / "st" / f"{sample_id}.h5ad", f"HEST sample {sample_id!r} counts")
    image_path = check_file(path / "wsis" / f"{sample_id}.tif", f"HEST sample {sample_id!r} whole-slide image")
    meta_path = check_file(path / "metadata" / f"{sample_id}.json", f"HEST sample {sample_id!r} metadata")
    meta = json.loads(meta_path.read_text())

    if mpp is not None:
        check_positive(mpp, "mpp")
        mpp_source = "argument"
    else:
        found = next(((_number(meta.get(k)), s) for k, s in HEST_MPP_FIELDS.items() if _number(meta.get(k))), None)
        mpp, mpp_source = found or file_mpp(image_path) or (None, None)
        if mpp is None:
            raise ValueError(
                f"HEST sample {sample_id!r} has no µm per pixel ({' or '.join(HEST_MPP_FIELDS)} in its metadata, "
                "or in the image's metadata). Pass `mpp=`."
            )
    if spot_diameter_um is None:
        spot_diameter_um = _number(meta.get(SPOT_DIAMETER_FIELD))
        if spot_diameter_um is None:
            raise ValueError(
                f"HEST sample {sample_id!r} has no `{SPOT_DIAMETER_FIELD}` in its metadata. "
                "Pass `spot_diameter_um=` (55 for Visium, 100 for ST)."
            )
    check_positive(spot_diameter_um, "spot_diameter_um")

    adata = ad.read_h5ad(st_path)
    if Key.obsm.spatial not in adata.obsm:
        raise KeyError(
            f"{st_path.name} has no `obsm[{Key.obsm.spatial!r}]` spot centres (its obsm keys are {list(adata.obsm)}); "
            "it is not a HEST st file."
        )
    centres = check_centres(np.asarray(adata.obsm[Key.obsm.spatial], float), adata.obs_names, "HEST spot centres")
    levels = read_image(image_path)
    check_spots_inside(centres, adata.obs_names, levels[0].shape[2], levels[0].shape[1], image_path.name)
    sdata = build_sdata(
        levels,
        centres,
        sample=sample_id,
        mpp=mpp,
        spot_diameter_px=spot_diameter_um / mpp,
        spot_ids=adata.obs_names,
        X=adata.X,
        var_names=adata.var_names,
        obs=adata.obs,
    )
    table = get_table(sdata)
    table.var = adata.var.copy()
    record = table.uns[Key.uns.root][Key.uns.samples][sample_id]
    record.update({MPP_SOURCE: mpp_source, "spot_diameter_um": float(spot_diameter_um)})
    if (spacing := _number(meta.get(SPOT_SPACING_FIELD))) is not None:
        record["spot_spacing_um"] = spacing
    return sdata
