"""Reader for 10x Genomics Visium HD (Space Ranger binned outputs), through spatialdata-io."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import spatialdata_io
from spatialdata import SpatialData

from histodecon._constants import Key
from histodecon._utils import check_centres, check_positive, check_positive_int, check_spots_inside, get_table
from histodecon.io._build import build_sdata
from histodecon.io._image import check_file, read_image
from histodecon.io._slide import MPP_SOURCE

BINNED_OUTPUTS, MICROSCOPE_IMAGE, FEATURE_SLICE = "binned_outputs", "microscope_image", "feature_slice.h5"
SCALEFACTORS, HIRES_IMAGE = "scalefactors_json.json", "tissue_hires_image.png"
#: Fields of the per-sample provenance record written here.
BIN_SIZE_UM, FIELD_UM = "bin_size_um", "field_um"


def bin_folder(bin_size: int) -> str:
    """Space Ranger's folder of a bin size: ``square_016um`` for 16 µm."""
    return f"square_{bin_size:03d}um"


def _dataset_id(path: Path) -> str | None:
    """The prefix of ``{prefix}_feature_slice.h5`` (``None`` when unprefixed), which spatialdata-io names files by."""
    found = sorted(path.glob(f"*{FEATURE_SLICE}"))
    if not found:
        raise FileNotFoundError(
            f"No `{FEATURE_SLICE}` in {str(path)!r}; spatialdata-io reads the Visium HD layout from it. "
            "Pass the complete Space Ranger `outs` folder."
        )
    return found[0].name.removesuffix(FEATURE_SLICE).removesuffix("_") or None


def _fullres_path(path: Path, fullres_image: str | Path | None) -> Path | None:
    """The full-resolution image: given (absolute or relative to ``path``), else the one file of ``microscope_image/``."""
    if fullres_image is not None:
        return check_file(path / fullres_image, "Visium HD full-resolution image")  # an absolute path stays itself
    folder = path / MICROSCOPE_IMAGE
    files = sorted(f for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    if len(files) > 1:
        raise ValueError(
            f"Several images in {str(folder)!r}: {[f.name for f in files]}. Pass the H&E as `fullres_image=`."
        )
    return files[0] if files else None


def read_visium_hd(
    path: str | Path,
    *,
    bin_size: int = 16,
    sample: str | None = None,
    fullres_image: str | Path | None = None,
    field_um: float | None = None,
    filtered_counts: bool = True,
) -> SpatialData:
    """Read one bin size of a Visium HD Space Ranger output folder into the histodecon layout.

    Counts and bin positions of ``binned_outputs/square_XXXum/`` are read by
    :func:`spatialdata_io.visium_hd`; every bin becomes a spot, a circle centred on the bin of
    diameter ``field_um`` (default the bin's side: the circle inscribed in the square bin). µm
    per pixel is the bin's ``microns_per_pixel`` scale factor. The image is the full-resolution
    H&E (``fullres_image``, or the one file of ``microscope_image/``; TIFF read lazily, its
    pyramid levels kept), else ``spatial/tissue_hires_image.png`` with the centres and µm per
    pixel scaled by ``tissue_hires_scalef``. The patch field of the encoders is chosen in
    :func:`histodecon.tl.embed` (``patch_size=``, ``mpp=``).

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder (with ``feature_slice.h5`` and ``binned_outputs/``).
    bin_size
        Bin side in µm: a folder ``binned_outputs/square_{bin_size:03d}um`` must exist
        (Space Ranger writes 2, 8 and 16).
    sample
        Sample name; default the prefix of ``{prefix}_feature_slice.h5``, else the folder name.
    fullres_image
        The full-resolution H&E, absolute or relative to ``path``.
    field_um
        Diameter of each spot's circle; default ``bin_size``. A larger field, e.g. 55 µm,
        gives each bin the context of a Visium spot.
    filtered_counts
        Read ``filtered_feature_bc_matrix.h5`` (bins under tissue) rather than the raw one.

    Returns
    -------
    :class:`~spatialdata.SpatialData`
        SpatialData with ``images[f"{sample}_image"]``, ``shapes[f"{sample}_spots"]`` and
        ``tables["table"]`` (counts, ``obs['in_tissue']``, ``obs['array_row']``, ``obs['array_col']``);
        ``uns['histodecon']['samples'][sample]`` records ``bin_size_um`` and ``field_um``.

    Examples
    --------
    >>> import histodecon as hd
    >>> sdata = hd.io.read_visium_hd("outs", bin_size=16, fullres_image="/data/slide.btf")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"The Visium HD folder {str(path)!r} does not exist. Pass its Space Ranger `outs`.")
    bin_size = check_positive_int(bin_size, "bin_size")
    field_um = float(bin_size if field_um is None else field_um)
    check_positive(field_um, "field_um")
    bins = path / BINNED_OUTPUTS
    if not (bins / bin_folder(bin_size)).is_dir():
        available = sorted(p.name for p in bins.glob("square_*um") if p.is_dir()) if bins.is_dir() else []
        raise FileNotFoundError(
            f"No bin size {bin_size} µm: {str(bins / bin_folder(bin_size))!r} does not exist (found {available}). "
            "Pass `bin_size=` with one of those sizes."
        )
    scalefactors_path = check_file(bins / bin_folder(bin_size) / "spatial" / SCALEFACTORS, "bin scale factors")
    scalefactors = json.loads(scalefactors_path.read_text())
    dataset_id = _dataset_id(path)
    sample = sample or dataset_id or path.name
    image_path = _fullres_path(path, fullres_image)

    with warnings.catch_warnings():  # spatialdata-io warns for each optional image it does not find
        warnings.simplefilter("ignore", UserWarning)
        reference = spatialdata_io.visium_hd(
            path,
            dataset_id=dataset_id or sample,
            filtered_counts_file=filtered_counts,
            load_segmentations_only=False,
            bin_size=bin_size,
            bins_as_squares=False,
            fullres_image_file=image_path,
        )
    adata = get_table(reference, bin_folder(bin_size))
    mpp = float(scalefactors["microns_per_pixel"])
    centres = check_centres(adata.obsm[Key.obsm.spatial], adata.obs_names, "Visium HD bin positions")
    if image_path is None:
        candidates = [path / "spatial" / HIRES_IMAGE, scalefactors_path.parent / HIRES_IMAGE]
        image_path = next((p for p in candidates if p.is_file()), None)
        if image_path is None:
            raise FileNotFoundError(
                f"No H&E image in {str(path)!r}: no `{MICROSCOPE_IMAGE}/` folder and no `spatial/{HIRES_IMAGE}`. "
                "Pass the full-resolution image as `fullres_image=`."
            )
        scale = float(scalefactors["tissue_hires_scalef"])
        centres, mpp = centres * scale, mpp / scale
    levels = read_image(image_path)
    check_spots_inside(centres, adata.obs_names, levels[0].shape[2], levels[0].shape[1], image_path.name)

    sdata = build_sdata(
        levels,
        centres,
        sample=sample,
        mpp=mpp,
        spot_diameter_px=field_um / mpp,
        spot_ids=adata.obs_names,
        X=adata.X,
        var_names=adata.var_names,
        obs=adata.obs[[Key.obs.in_tissue, Key.obs.array_row, Key.obs.array_col]].astype(np.int64),
    )
    table = get_table(sdata)
    table.var = adata.var.copy()
    record = table.uns[Key.uns.root][Key.uns.samples][sample]
    record.update({MPP_SOURCE: "visium-hd-scalefactors", BIN_SIZE_UM: float(bin_size), FIELD_UM: field_um})
    return sdata
