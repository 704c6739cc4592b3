"""The training-step benchmark (benchmarks/train_step.py) runs end to end on a tiny model and writes a sound JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "train_step.py"
METHODS = ["full", "lora", "ia3"]
SIDES = ("t5peft", "transformers+peft")


@pytest.fixture(scope="module")
def bench_module():
    name = "t5peft_benchmark_train_step"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def test_tiny_run_writes_every_method_with_sound_numbers(bench_module, shared_dir, tmp_path, capsys):
    output = tmp_path / "bench.json"
    argv = ["--tiny", "--repeats", "1", "--warmup", "0", "--methods", ",".join(METHODS), "--device", "cpu"]
    argv += ["--batch-size", "4", "--source-length", "32", "--shared", str(shared_dir), "--output", str(output)]
    assert bench_module.main(argv) == 0

    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["settings"]["methods"] == METHODS
    assert report["settings"]["model"]["d_model"] == 64
    assert report["starting_point"]["ok"], report["starting_point"]
    assert report["environment"]["device"] == "cpu"
    assert list(report["results"]) == METHODS
    for method in METHODS:
        result = report["results"][method]
        assert result["status"] == "ok", result
        for side in SIDES:
            stats = result[side]
            assert len(stats["ms"]) == 1
            assert all(math.isfinite(ms) and ms > 0 for ms in stats["ms"]), (method, side, stats)
            assert stats["median_ms"] > 0 and stats["min_ms"] > 0
        params = result["trainable_params"]
        assert params["t5peft"] == params["transformers+peft"] > 0, (method, params)
        expected = result["t5peft"]["median_ms"] / result["transformers+peft"]["median_ms"]
        assert math.isclose(result["ratio"], expected, rel_tol=1e-12)
        assert f"| {method} |" in report["table"]
    assert (
        report["results"]["full"]["trainable_params"]["t5peft"]
        > report["results"]["lora"]["trainable_params"]["t5peft"]
    )
    printed = capsys.readouterr().out
    assert report["table"] in printed


def test_unknown_method_is_refused(bench_module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_module.main(["--methods", "full,adapter"])
    assert exit_info.value.code == 2
    assert "adapter" in capsys.readouterr().err
