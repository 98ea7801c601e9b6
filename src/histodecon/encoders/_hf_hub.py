"""``timm:hf-hub:<repo id>``: a timm model described by a Hugging Face Hub repository's ``config.json``.

timm publishes models as a repository holding ``config.json`` (the architecture, its keyword
arguments and the preprocessing) next to ``model.safetensors``. The entry is built from that
``config.json`` without network access when it is found locally, in the same order as the
weights: ``$HISTODECON_WEIGHTS_DIR/timm:hf-hub:<repo id>/config.json``, the Hugging Face cache,
then the Hub (unless ``HF_HUB_OFFLINE`` is set). The weights then go through the same safe
loader as every encoder's (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from functools import lru_cache, partial
from pathlib import Path

from histodecon._constants import Key

from ._registry import Encoder, register_scheme
from ._vit import TIMM_WEIGHTS_FILE, timm_encoder
from ._weights import _from_hub

#: The file of a timm Hub repository that names the architecture and its preprocessing.
CONFIG_FILE = "config.json"
#: The weights files a timm Hub repository may hold, in order of preference (safetensors first).
WEIGHTS_FILES = (TIMM_WEIGHTS_FILE, "pytorch_model.bin")
#: Name scheme of these entries, and the prefix of their registry names.
SCHEME = "timm:hf-hub"
PREFIX = f"{SCHEME}:"


def locate_hub_config(repo_id: str) -> Path:
    """``config.json`` of ``repo_id``: from the weights folder, the Hugging Face cache, else the Hub.

    Raises
    ------
    FileNotFoundError
        Naming where to put the file when it is found nowhere (e.g. offline and not cached).
    """
    folder = os.environ.get(Key.env.weights_dir)
    if folder:
        path = Path(folder).expanduser() / f"{PREFIX}{repo_id}" / CONFIG_FILE
        if path.is_file():
            return path
    path = _from_hub(repo_id, CONFIG_FILE)
    if path is not None:
        return path
    target = Path(folder or f"${Key.env.weights_dir}").expanduser() / f"{PREFIX}{repo_id}"
    raise FileNotFoundError(
        f"No {CONFIG_FILE} found for '{PREFIX}{repo_id}': it is neither in {target}/ nor in the Hugging Face "
        f"cache, and the Hub could not be reached. Put `{CONFIG_FILE}` and `{TIMM_WEIGHTS_FILE}` from "
        f"https://huggingface.co/{repo_id} in {target}/ (${Key.env.weights_dir} sets the folder), or download "
        f"them once with `hf download {repo_id} {CONFIG_FILE} {TIMM_WEIGHTS_FILE}` while online."
    )


@lru_cache
def hf_hub_entry(repo_id: str) -> Encoder:
    """The entry ``timm:hf-hub:<repo_id>``, built from the repository's ``config.json`` with timm.

    The architecture and its keyword arguments (``model_args``) come from ``config.json``, the
    classifier is removed (``num_classes=0``), preprocessing (input size, mean, std, resize
    mode) comes from its ``pretrained_cfg``, and the embedding length from a forward pass on
    the meta device.

    Parameters
    ----------
    repo_id
        A Hugging Face Hub repository in timm's layout, e.g. ``"timm/vit_small_patch16_224.augreg_in21k"``.

    Examples
    --------
    >>> import histodecon as hd
    >>> hd.encoders.get("timm:hf-hub:timm/resnet18.a1_in1k").dim  # doctest: +SKIP
    512
    """
    import timm
    from timm.models._hub import load_model_config_from_path

    config_path = locate_hub_config(repo_id)
    pretrained_cfg, architecture, model_args = load_model_config_from_path(config_path.parent)
    if not timm.is_model(architecture):
        raise KeyError(
            f"{config_path} names the architecture {architecture!r}, which timm {timm.__version__} does not "
            "know. Upgrade timm, or check that the repository is in timm's format."
        )
    return timm_encoder(
        f"{PREFIX}{repo_id}",
        partial(timm.create_model, architecture, pretrained=False, **(model_args | {"num_classes": 0})),
        config=pretrained_cfg,
        repo_id=repo_id,
        weights_file=weights_file(config_path),
        description=f"timm model {architecture!r} from https://huggingface.co/{repo_id}, without its classifier.",
    )


def weights_file(config_path: Path) -> str:
    """The weights file beside ``config.json``: ``model.safetensors``, else ``pytorch_model.bin`` (older repositories).

    Where neither is there yet (the config came alone), the safetensors file is asked for.
    """
    return next((name for name in WEIGHTS_FILES if (config_path.parent / name).is_file()), TIMM_WEIGHTS_FILE)


register_scheme(SCHEME, hf_hub_entry, description="any timm model on the Hugging Face Hub", placeholder="repo id")
