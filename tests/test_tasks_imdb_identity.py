"""IMDb, the default task, is bit-identical to before issue 18 (tasks as data): the same seed gives the same trained
weights (SHA-256 of the saved files) and the same metrics as main at e0ebdb7, recorded in
``tests/data/imdb_tiny_baseline.json`` with the same settings (IMDB_TINY) on one thread. The weights are compared
by their tensors (SHA-256 of name, dtype, shape and bytes): the bytes of a safetensors file are not reproducible,
its metadata is written in a varying order.

The recording is of this machine's CPU build of torch 2.13.0 on one thread; float results can differ on another
processor or thread count, so the test runs on one thread and is skipped (saying why) where torch differs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t5peft.train.loop import train
from tiny_runs import tiny_run_config

BASELINE = json.loads((Path(__file__).parent / "data" / "imdb_tiny_baseline.json").read_text())
IMDB_TINY = dict(
    train_size=32,
    test_size=32,
    validation_size=16,
    epochs=1,
    batch_size=8,
    max_source_length=32,
    logs_per_two_epochs=4,
    lr=3e-3,
)


def tensors_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(path).items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not torch.__version__.startswith("2.13.0"), reason="recorded with torch 2.13.0")
@pytest.mark.parametrize("method", ["full", "lora"])
def test_imdb_default_run_is_bit_identical_to_before_tasks(method, imdb_dir, t5_small_dir, tmp_path, one_thread):
    cfg = tiny_run_config(imdb_dir, t5_small_dir, tmp_path / method, method=method, **IMDB_TINY)
    results = train(cfg)
    final = Path(cfg.output) / "final"
    weights = {path.name: tensors_digest(path) for path in sorted(final.glob("*.safetensors"))}
    recorded = BASELINE["runs"][method]
    assert weights == recorded["weights"]
    for split in ("test", "validation"):
        measured = {key: results[split][key] for key in ("n", "accuracy", "loss", "confusion", "per_class")}
        assert measured == recorded[split]  # exact: the same computation, not a close one
