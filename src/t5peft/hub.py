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
