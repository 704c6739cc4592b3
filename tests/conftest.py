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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker takes its share of the cores. torch would give every worker all of them: on
    this 2-core machine, 2 workers x 2 threads ran the suite in 16 minutes against 7 for one process."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # also for the t5peft processes that tests start
        torch.set_num_threads(threads)


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A tiny random T5 checkpoint (``helpers.TINY_T5``, t5peft's initialisation, seed 0), written once per session."""
    from helpers import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def method_base_dir(tiny_base_dir, tmp_path_factory):
    """``method -> checkpoint``: the tiny T5 a method's cases run on (``tiny_base_dir`` unless its contract
    overrides the architecture; those are written once per session)."""
    from helpers import save_tiny_base
    from method_cases import CONTRACTS

    made: dict[str, Path] = {}

    def base_dir(method: str) -> Path:
        overrides = CONTRACTS[method].base
        if not overrides:
            return tiny_base_dir
        if method not in made:
            made[method] = save_tiny_base(tmp_path_factory.mktemp(f"tiny-base-{method}"), **overrides)
        return made[method]

    return base_dir


@pytest.fixture(scope="session")
def hf_base_dir(tmp_path_factory) -> Path:
    """A tiny random transformers T5 checkpoint (``oracles.hf_config``, seed 3), written once per session."""
    from oracles import save_hf_base

    return save_hf_base(tmp_path_factory.mktemp("hf-base"), seed=3)


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


# ---------------------------------------------------------------------------------------------------
# Real-data fixtures shared by the model, tokenizer and training tests.


@pytest.fixture(scope="session")
def t5_small_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "t5-small"


@pytest.fixture(scope="session")
def imdb_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "imdb"


@pytest.fixture(scope="session")
def tokenizer(t5_small_dir: Path):
    from t5peft import load_tokenizer

    return load_tokenizer(t5_small_dir)


@pytest.fixture(scope="session")
def imdb_test_texts(imdb_dir: Path) -> list[str]:
    """All 25,000 test reviews, in file order (read once per session)."""
    import pyarrow.parquet as pq

    table = pq.read_table(imdb_dir / "plain_text" / "test-00000-of-00001.parquet", columns=["text"])
    return table.column("text").to_pylist()
