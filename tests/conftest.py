"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _shared_path() -> Path:
    """``$T5PEFT_SHARED`` (relative values are taken from the repo root), default ``<repo>/../shared``."""
    configured = Path(os.environ.get("T5PEFT_SHARED", "../shared")).expanduser()
    return configured if configured.is_absolute() else (REPO_ROOT / configured).resolve()


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared folder (real data, tokenizer); a missing folder fails under CI=true."""
    path = _shared_path()
    if not path.is_dir():
        message = f"shared folder not found at {path}; set T5PEFT_SHARED to its location"
        if _on_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path
