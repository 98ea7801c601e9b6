"""Every key histodecon reads or writes, in one place (as squidpy's ``Key``).

Functions take these as parameter defaults (``key_added=Key.obsm.pred_abund``); a key is
renamed here and nowhere else.
"""

from __future__ import annotations

import re


class Key:
    """Names of the table's ``obs`` / ``obsm`` / ``obsp`` / ``uns`` entries, tables and environment variables."""

    class tables:
        """SpatialData tables."""

        table = "table"

    class obs:
        """Per-spot columns."""

        sample = "sample"
        in_tissue = "in_tissue"
        tissue_fraction = "tissue_fraction"
        #: SpatialData's ``region_key`` / ``instance_key``: the shapes element and the spot of each row.
        region = "region"
        spot_id = "spot_id"
        #: Grid position of a spot (Visium's convention).
        array_row = "array_row"
        array_col = "array_col"
        #: Patient of a section (:func:`histodecon.datasets.her2st`).
        patient = "patient"

    class obsm:
        """Per-spot matrices."""

        spatial = "spatial"
        abund = "abund"
        pred_abund = "pred_abund"
        #: The published stereoscope proportions of :func:`histodecon.datasets.her2st`.
        proportions = "proportions"
        embedding_prefix = "X_"

        @staticmethod
        def embedding(name: str) -> str:
            """``obsm`` key of the embeddings of encoder ``name``, a name that spatialdata and zarr accept.

            Characters other than letters, digits, ``_``, ``-`` and ``.`` become ``_``
            (``"timm:hf-hub:org/model"`` -> ``"X_timm_hf-hub_org_model"``); ``"uni"`` stays ``"X_uni"``.
            """
            return f"{Key.obsm.embedding_prefix}{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"

        @staticmethod
        def interval_bounds(key_added: str) -> tuple[str, str]:
            """``obsm`` keys of the lower and upper bounds of the prediction ``key_added`` (``predict(interval=)``)."""
            return f"{key_added}_lower", f"{key_added}_upper"

    class obsp:
        """Spot-by-spot graphs of :func:`histodecon.gr.rbf_graph`."""

        #: Its default ``key_added``, the prefix of its ``obsp`` and ``uns`` keys.
        rbf = "rbf"
        #: ``obsp`` keys of the default graph's weights (read by :func:`histodecon.gr.moran_r`) and distances.
        connectivities = f"{rbf}_connectivities"
        distances = f"{rbf}_distances"

        @staticmethod
        def graph(key_added: str) -> tuple[str, str]:
            """``obsp`` keys of the weights and distances of a graph written with ``key_added``."""
            return f"{key_added}_connectivities", f"{key_added}_distances"

    class uns:
        """Unstructured results and histodecon's provenance record ``uns[Key.uns.root]``."""

        root = "histodecon"
        #: scanpy / squidpy's per-library images and scale factors (``uns[spatial][library_id]``).
        spatial = "spatial"
        samples = "samples"
        embeddings = "embeddings"
        predictions = "predictions"
        #: Per sample: whether the slide lies within the reach of the model that predicted it (``hd.tl.predict``).
        applicability = "applicability"
        deconvolve = "deconvolve"
        synthetic = "synthetic"
        moran_suffix = "_moranR"
        #: ``uns`` key of the default graph's keys and parameters.
        rbf_neighbors = "rbf_neighbors"

        @staticmethod
        def graph(key_added: str) -> str:
            """``uns`` key of the keys and parameters of a graph written with ``key_added``."""
            return f"{key_added}_neighbors"

        @staticmethod
        def moran(key: str) -> str:
            """``uns`` key of :func:`histodecon.gr.moran_r` on ``obsm[key]``."""
            return f"{key}{Key.uns.moran_suffix}"

    class labels:
        """SpatialData labels elements."""

        tissue_suffix = "_tissue"

        @staticmethod
        def tissue(sample: str) -> str:
            """Labels element of ``sample``'s tissue mask (0 glass, >0 tissue), written by :func:`histodecon.pp.detect_tissue`."""
            return f"{sample}{Key.labels.tissue_suffix}"

    class cs:
        """Coordinate systems of a sample: its full-resolution pixels, and micrometres (``Scale(mpp)`` from pixels)."""

        micrometres_suffix = "_um"

        @staticmethod
        def pixels(sample: str) -> str:
            """Coordinate system of ``sample``'s image and spots in full-resolution pixels (``Identity``)."""
            return str(sample)

        @staticmethod
        def micrometres(sample: str) -> str:
            """Coordinate system of ``sample`` in micrometres, reached from pixels by ``Scale([mpp, mpp])``."""
            return f"{sample}{Key.cs.micrometres_suffix}"

    class env:
        """Environment variables histodecon reads."""

        data_dir = "HISTODECON_DATA_DIR"
        weights_dir = "HISTODECON_WEIGHTS_DIR"
