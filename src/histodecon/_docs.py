"""Shared parameter documentation, substituted into docstrings with :func:`inject_docs`."""

from __future__ import annotations

from ._constants import Key

_PARAMS = {
    "data": "data\n    A :class:`~spatialdata.SpatialData` (its table ``table_key`` is used) or an\n    :class:`~anndata.AnnData`.",
    "table_key": f"table_key\n    Name of the table in a SpatialData (default ``{Key.tables.table!r}``); ignored for an AnnData.",
    "copy": "copy\n    Return a modified copy instead of writing in place.",
    "overwrite": "overwrite\n    Replace an existing result under the same key; otherwise an existing key raises\n    :class:`KeyError`.",
    "key_added": "key_added\n    Key under which the result is written.",
    "device": "device\n    Torch device; ``None`` uses :attr:`histodecon.settings.device`.",
    "image_key": (
        "image_key\n    The image to read where several share the spots' coordinate system (e.g. squidpy's\n"
        "    ``normalize_stains`` output beside the raw H&E); several without it are an error listing them."
    ),
    "stain_reference": (
        "stain_reference\n    Normalise the patches to this stain reference with squidpy's transform, lazily (only the\n"
        "    image chunks under the patches read): one from :func:`histodecon.pp.stain_reference`, its\n"
        "    record, or a fitted model, to embed the way its training slides were. ``None``: as scanned."
    ),
}


def inject_docs(func):
    """Replace ``{{name}}`` placeholders in a docstring with the shared parameter docs.

    Placeholders sit at the parameter indentation of a numpydoc docstring (4 spaces).
    """
    doc = func.__doc__
    for name, text in _PARAMS.items():
        doc = doc.replace("{{" + name + "}}", text.replace("\n", "\n    "))
    func.__doc__ = doc
    return func
