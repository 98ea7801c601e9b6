"""Every key histodecon reads or writes, in one place (as squidpy's ``Key``).

Functions take these as parameter defaults (``key_added=Key.obsm.pred_abund``); a key is
renamed here and nowhere else.
"""

from __future__ import annotations


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

    class obsm:
        """Per-spot matrices."""

        spatial = "spatial"
        abund = "abund"
        pred_abund = "pred_abund"
        embedding_prefix = "X_"

        @staticmethod
        def embedding(name: str) -> str:
            """``obsm`` key of the embeddings of encoder ``name``."""
            return f"{Key.obsm.embedding_prefix}{name}"

    class obsp:
        """Spot-by-spot graphs of :func:`histodecon.gr.rbf_graph`."""

        connectivities = "rbf_connectivities"
        distances = "rbf_distances"

    class uns:
        """Unstructured results and histodecon's provenance record ``uns[Key.uns.root]``."""

        root = "histodecon"
        samples = "samples"
        embeddings = "embeddings"
        rbf_neighbors = "rbf_neighbors"
        moran_suffix = "_moranR"

        @staticmethod
        def moran(key: str) -> str:
            """``uns`` key of :func:`histodecon.gr.moran_r` on ``obsm[key]``."""
            return f"{key}{Key.uns.moran_suffix}"

    class env:
        """Environment variables histodecon reads."""

        data_dir = "HISTODECON_DATA_DIR"
        weights_dir = "HISTODECON_WEIGHTS_DIR"
