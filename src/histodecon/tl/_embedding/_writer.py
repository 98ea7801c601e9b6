"""Where embeddings go in a table: the one writer of :func:`histodecon.tl.embed` and :func:`histodecon.tl.embed_many`."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from histodecon._constants import Key
from histodecon._utils import check_overwrite, provenance, write_result


def check_embedding_absent(table: AnnData, name: str, *, overwrite: bool) -> None:
    """Refuse, before anything is computed, to replace model ``name``'s embeddings unless ``overwrite``."""
    check_overwrite(table.obsm, Key.obsm.embedding(name), "adata.obsm", overwrite, can_rename=False)


def write_embedding(table: AnnData, name: str, embedding: np.ndarray, record: dict, *, overwrite: bool) -> None:
    """Write model ``name``'s embeddings to ``obsm[Key.obsm.embedding(name)]`` and ``record`` to the provenance.

    The record goes to ``uns[Key.uns.root][Key.uns.embeddings]`` under the key's name (``"uni"``, or
    ``"timm_hf-hub_org_model"`` for ``"timm:hf-hub:org/model"``: names that zarr and h5ad can write), and
    records the mapping: ``name`` (the encoder) and ``obsm_key``.
    """
    key = Key.obsm.embedding(name)
    write_result(table, "obsm", key, embedding, overwrite=overwrite)
    record = record | {"name": name, "obsm_key": key}
    provenance(table).setdefault(Key.uns.embeddings, {})[key.removeprefix(Key.obsm.embedding_prefix)] = record
