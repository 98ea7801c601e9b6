"""Saved regressors on the Hugging Face Hub: load one by repository id, push one to a repository.

A model repository holds what :meth:`~histodecon.tl.AbundanceRegressor.save` writes into a
folder: ``model.safetensors``, ``model.json`` and the model card ``README.md``. Only these
three files are downloaded (never a pickle or code), into the Hugging Face cache; a cached
model loads without network access, and with ``HF_HUB_OFFLINE=1`` the Hub is never asked.
The files then go through the same checks as a local model (schema, bounds, header,
checksums).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from histodecon._settings import logger

from ._file import FOLDER_CARD, FOLDER_STEM, model_paths

#: The files of a model repository; nothing else is downloaded.
REPO_FILES = (f"{FOLDER_STEM}.json", f"{FOLDER_STEM}.safetensors", FOLDER_CARD)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_repo_id(model: Any) -> bool:
    """Whether ``model`` is a string shaped like a Hub repository id, ``"<owner>/<name>"``."""
    if not isinstance(model, str) or not _REPO_ID.fullmatch(model) or model.endswith((".json", ".safetensors")):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def locate_model(model: str | os.PathLike) -> Path:
    """The local path of a saved model: ``model`` when it exists here, else a Hub repository's cached snapshot.

    A path that exists locally always wins over a repository of the same name. A string that
    is not found locally and is not shaped like a repository id is returned as it is, so that
    reading it reports the missing files.
    """
    path = Path(model).expanduser()
    if path.is_dir() or any(p.exists() for p in model_paths(path)) or not is_repo_id(model):
        return path
    return download_model(str(model))


def download_model(repo_id: str) -> Path:
    """The folder of ``repo_id``'s model files in the Hugging Face cache, downloaded when not cached and online.

    Raises
    ------
    FileNotFoundError
        When the model is neither a local path nor cached, and the Hub cannot provide it.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def complete(folder: str) -> bool:
        return all(p.is_file() for p in model_paths(folder))

    try:
        folder = snapshot_download(repo_id, allow_patterns=list(REPO_FILES), local_files_only=True)
        if complete(folder):
            return Path(folder)
    except (LocalEntryNotFoundError, OSError):
        pass
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    problem = "offline (HF_HUB_OFFLINE is set)" if offline else "the Hub could not provide it"
    if not offline:
        try:
            folder = snapshot_download(repo_id, allow_patterns=list(REPO_FILES))
            if complete(folder):
                logger.info(f"Downloaded model {repo_id} to {folder}")
                return Path(folder)
            problem = f"the repository has no {REPO_FILES[0]} and {REPO_FILES[1]}"
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
            problem = f"the Hub could not provide it ({type(error).__name__}: {error})"
    raise FileNotFoundError(
        f"No saved model at {repo_id!r}: no such local file or folder, and the Hugging Face repository "
        f"{repo_id!r} is not in the cache while {problem}. Check the path; or, for a repository, check its "
        f"name, log in with `hf auth login` if it is private or gated, and load once while online "
        f"(or `hf download {repo_id} {' '.join(REPO_FILES)}`)."
    )


def push_model(model: Any, repo_id: str, *, private: bool, token: str | None, commit_message: str) -> str:
    """Save ``model`` into a temporary folder and upload it to ``repo_id``; the repository's URL.

    The repository is created when it does not exist (``private`` sets its visibility then).
    """
    from huggingface_hub import HfApi, get_token

    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face repository id; pass `'<owner>/<name>'`.")
    model.check_fitted()
    token = token or get_token()
    if token is None:
        raise RuntimeError(
            "Not logged in to the Hugging Face Hub: log in with `hf auth login` (or set HF_TOKEN), or pass `token=`."
        )
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    logger.info(f"Pushed the model to {url}")
    return str(url)
