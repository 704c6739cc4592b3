"""Hugging Face Hub access, in one place, with errors that say what to do when offline."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import T5PeftError

Downloader = Callable[..., str]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class HubUnavailableError(T5PeftError, OSError):
    """The Hub could not be reached (offline, blocked, unknown repository...)."""


def looks_like_hub_id(
    name: str | os.PathLike, *, owner_required: bool = False, file_suffixes: tuple[str, ...] = (".json", ".bin")
) -> bool:
    """True for ``owner/name`` (or, unless ``owner_required``, a legacy bare name such as ``t5-small``) that is
    not a local path; a name ending in one of ``file_suffixes`` is a missing file, not a Hub id."""
    text = str(name)
    match = _HUB_ID.match(text)
    return (
        match is not None
        and (match.group(1) is not None or not owner_required)
        and not text.lower().endswith(file_suffixes)
        and not Path(text).exists()
    )


def download_snapshot(
    repo_id: str,
    allow_patterns: Sequence[str],
    *,
    repo_type: str = "model",
    what_instead: str,
    downloader: Downloader | None = None,
) -> Path:
    """Download the files matching ``allow_patterns`` into the Hub cache and return the snapshot folder.

    ``downloader`` replaces ``huggingface_hub.snapshot_download`` (tests inject a fake one). Any failure to
    reach the Hub becomes a :class:`HubUnavailableError` that names ``what_instead``.
    """
    if downloader is None:
        from huggingface_hub import snapshot_download as downloader
    try:
        folder = downloader(repo_id=repo_id, repo_type=repo_type, allow_patterns=list(allow_patterns))
    except Exception as err:  # network errors come in many types (httpx, OSError, huggingface_hub's own)
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line: Hub errors span several
        raise HubUnavailableError(
            f"could not download {', '.join(allow_patterns)} of {repo_type} {repo_id!r} from the Hugging Face Hub "
            f"({reason}); if this machine is offline, pass {what_instead} instead"
        ) from err
    return Path(folder)


# --------------------------------------------------------------------------------------------------
# Uploading (t5peft push)

HUB_EXTRA_HINT = "pip install 't5peft[hub]'"


class HubUploadError(T5PeftError, OSError):
    """An upload that cannot be made: no token, a refused or failed request, a bad repository id."""


def hub_token() -> str:
    """The token ``huggingface_hub`` finds (``HF_TOKEN``, or the one ``hf auth login`` stored); it is passed to the
    API in memory and never written anywhere by t5peft."""
    token = _hub_module().get_token()
    if not token:
        raise HubUploadError(
            "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (`huggingface-cli login`)"
        )
    return token


def check_repo_id(repo_id: str) -> None:
    if not looks_like_hub_id(repo_id, owner_required=True, file_suffixes=()):
        raise HubUploadError(f"{repo_id!r} is not a Hub repository id (owner/name)")


def _hub_module():
    try:
        import huggingface_hub
    except ImportError as err:
        raise HubUploadError(f"uploading needs huggingface_hub ({err}); install it with {HUB_EXTRA_HINT}") from None
    return huggingface_hub


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def upload_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload with t5peft push",
    api: object | None = None,
) -> str:
    """Create ``repo_id`` (kept if it exists) and upload every file of ``folder`` to it, on ``revision`` (a branch,
    created if missing; None: main). ``api`` replaces ``huggingface_hub.HfApi`` (tests inject one); without it
    the token is looked up first. Returns the repository's URL; any failure is a one-line :class:`HubUploadError`."""
    check_repo_id(repo_id)
    if api is None:
        api = _hub_module().HfApi(token=hub_token())
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, commit_message=commit_message)
    except Exception as err:  # HTTP errors, network errors, refused tokens: many types
        raise HubUploadError(f"could not upload to {repo_id} ({_first_line(err)})") from err
    return str(url)
