"""``t5peft compare`` on configs/smoke.toml against the real data: schema, every method, figure, resumability."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import train_steps
from t5peft import T5Config, T5ForConditionalGeneration, apply_method
from t5peft.experiments.compare import run_compare
from t5peft.experiments.config import ExperimentError, load_experiment, parse_experiment
from t5peft.experiments.layout import FIGURE_FILE, MEMORY_FIGURE_FILE, RESULTS_FILE, TABLE_FILE, run_dir
from t5peft.experiments.report import render_report
from t5peft.experiments.results import SCHEMA_FILE
from t5peft.methods import get_method_class, method_names

jsonschema = pytest.importorskip("jsonschema")
REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke.toml"


@pytest.fixture
def in_repo(monkeypatch, shared_dir):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("T5PEFT_SHARED", str(shared_dir))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow  # 156 s: all 13 methods through compare (-m slow)
def test_smoke_compare_end_to_end_and_resume(in_repo, tmp_path):
    experiment = load_experiment(SMOKE)
    methods = [m.name for m in experiment.methods]
    assert methods == method_names()  # every registered method
    output = tmp_path / "smoke"

    # Interrupt: kill the comparison once its second run has finished.
    command = [
        sys.executable,
        "-m",
        "t5peft.cli",
        "compare",
        "--config",
        str(SMOKE),
        "--output",
        str(output),
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = run_dir(output, methods[1], 0) / "results.json"
    try:
        deadline = time.time() + 600
        while not second.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    finished = {m: (run_dir(output, m, 0) / "results.json") for m in methods}
    done_before = {m: p.stat().st_mtime_ns for m, p in finished.items() if p.exists()}
    assert methods[0] in done_before and methods[1] in done_before
    assert len(done_before) < len(methods), "the comparison finished before it could be interrupted"

    # Re-run: only the remaining runs are run; finished ones keep their files untouched.
    run_compare(SMOKE, output, progress=False)
    for method, mtime in done_before.items():
        assert finished[method].stat().st_mtime_ns == mtime, f"{method} was run again"
    assert all(p.exists() for p in finished.values())

    results = json.loads((output / RESULTS_FILE).read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert set(results["summary"]) == set(methods)
    assert results["weights"] == "random-init"
    for run in results["runs"]:
        numbers = [
            run["test_accuracy"],
            run["validation_accuracy"],
            run["test_loss"],
            run["training"]["seconds"],
            run["training"]["examples_per_s"],
            run["training"]["tokens_per_s"],
            run["evaluation_seconds"],
            run["memory"]["peak_cpu_rss_bytes"],
            run["parameters"]["trainable_percent"],
        ]
        assert all(_finite(v) for v in numbers), run["method"]
        assert all(_finite(p["train_loss"]) and _finite(p["val_accuracy"]) for p in run["curve"])
        assert run["test_n"] == 64 and run["adapter_file_bytes"] > 0
    adalora = next(r for r in results["runs"] if r["method"] == "adalora")
    assert adalora["method_report"]["final_ranks"]
    assert results["summary"]["full"]["fewer_parameters_than_full"] == 1
    assert results["summary"]["lora"]["fewer_parameters_than_full"] > 1

    from PIL import Image

    for png in (output / FIGURE_FILE, output / MEMORY_FIGURE_FILE):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            image.verify()
            assert image.size[0] > 800
    table = (output / TABLE_FILE).read_text()
    assert all(f"| {m} |" in table for m in methods) and "random-init" in table

    # `t5peft report` re-renders both from the JSON alone.
    elsewhere = tmp_path / "report"
    paths = render_report(output / RESULTS_FILE, elsewhere)
    assert {p.name for p in paths} == {FIGURE_FILE, MEMORY_FIGURE_FILE, TABLE_FILE}
    assert (elsewhere / TABLE_FILE).read_text() == table


def test_seed_config_is_the_setup_of_record(in_repo):
    experiment = load_experiment(REPO / "configs" / "seed.toml")
    assert experiment.seeds == [0, 1, 2]
    assert len(experiment.methods) == 8
    cfg = experiment.run_config(experiment.methods[0], 0, Path("x"))
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.max_source_length, cfg.learning_rate) == (
        "google-t5/t5-small",
        3,
        16,
        128,
        3e-4,
    )
    assert cfg.test_size is None and cfg.train_size is None and cfg.validation_size == 1000
    rates = {m.name: experiment.run_config(m, 0, Path("x")).learning_rate for m in experiment.methods}
    assert rates["prompt"] == 0.3 and rates["lora"] == 1e-3


def test_all_methods_config_covers_every_method(in_repo):
    experiment = load_experiment(REPO / "configs" / "all-methods.toml")
    assert [m.name for m in experiment.methods] == [*method_names(), "lora@nf4"] and experiment.seeds == [0, 1, 2]
    seed = load_experiment(REPO / "configs" / "seed.toml")
    plan = experiment.run_config(experiment.methods[0], 0, Path("x"))
    assert plan == seed.run_config(seed.methods[0], 0, Path("x"))  # the setup of record
    for method in experiment.methods:
        cfg = experiment.run_config(method, 0, Path("x"))
        assert cfg.learning_rate == get_method_class(method.method).default_lr, method.name
    by_name = {m.name: m for m in experiment.methods}
    lora, qlora = (experiment.run_config(by_name[n], 0, Path("x")) for n in ("lora", "lora@nf4"))
    assert qlora.quantize == "nf4" and dataclasses.replace(qlora, quantize="none") == lora  # QLoRA: only the base


def test_seed_notebook_config_is_what_the_notebook_ran(in_repo):
    experiment = load_experiment(REPO / "configs" / "seed-notebook.toml")
    assert [m.name for m in experiment.methods] == ["full", "lora", "adalora", "prompt", "ptuning"]
    for method in experiment.methods:
        cfg = experiment.run_config(method, 0, Path("x"))
        assert (cfg.max_source_length, cfg.train_size, cfg.test_size, cfg.learning_rate) == (256, 10_000, 1_000, 3e-4)
    adalora = next(m for m in experiment.methods if m.name == "adalora")
    config = get_method_class("adalora").config_class.from_options(dict(adalora.options), "adalora")
    assert config.init_r == config.target_r  # the budget never shrinks: no rank update
    # and allocation then prunes nothing: every triplet of every layer is kept through a whole schedule
    tiny = T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    model = apply_method(T5ForConditionalGeneration(tiny), "adalora", **config.to_dict())
    generator = torch.Generator().manual_seed(0)
    batch = dict(
        input_ids=torch.randint(2, 100, (2, 6), generator=generator),
        attention_mask=torch.ones(2, 6, dtype=torch.long),
        labels=torch.randint(2, 100, (2, 2), generator=generator),
    )
    train_steps(model, lambda step: batch, 4, total_steps=4)
    masks = [buffer for name, buffer in model.named_buffers() if name.endswith("rank_mask")]
    assert masks and all(bool(mask.all()) for mask in masks)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"experiment": {"methods": ["lora"]}, "trian": {}}, "unknown key.*trian", id="unknown-section"),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "train": {"epoch": 3}},
            r"\[train\]: unknown key.*epoch",
            id="unknown-train-key",
        ),
        pytest.param({"experiment": {"methods": ["lora-xl"]}}, "unknown method 'lora-xl'", id="unknown-method"),
        pytest.param(
            {"experiment": {"methods": ["lora", "ptuing2"]}, "methods": {"ptuning2": {"lr": 0.01}}},
            r"\[experiment\] methods: unknown method 'ptuing2'",
            id="typo-in-the-list-not-the-table",
        ),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "methods": {"lora": {"options": {"rank": 4}}}},
            "no option 'rank'",
            id="unknown-option",
        ),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "methods": {"ia3": {}}}, r"\[methods.ia3\] is not in", id="stray"
        ),
        pytest.param({"experiment": {"methods": ["lora"], "seeds": []}}, "seeds must be", id="no-seeds"),
        pytest.param({"experiment": {"methods": ["lora"], "seeds": [0, 0]}}, "lists a seed twice", id="seed-twice"),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "methods": {"lora": {"lr": -1}}},
            r"\[methods.lora\]",
            id="lr-negative",
        ),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "methods": {"lora": {"lr": []}}},
            r"\[methods.lora\] lr: an empty list",
            id="lr-empty-list",
        ),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "methods": {"lora": {"lr": [1e-3, 1e-3]}}},
            r"\[methods.lora\] lr: .* lists a value twice",
            id="lr-twice",
        ),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "methods": {"lora": {"lr": [1e-4, 1.000001e-4]}}},
            r"\[methods.lora\] lr: .* lists a value twice \(run folders",
            id="lr-same-folder-name",
        ),
        pytest.param(
            {"experiment": {"methods": ["lora"]}, "methods": {"lora": {"lr": [1e-3, "fast"]}}},
            r"\[methods.lora\] lr: 'fast' is not a positive number",
            id="lr-not-a-number",
        ),
    ],
)
def test_bad_experiment_files(values, message):
    with pytest.raises(ExperimentError, match=message):
        parse_experiment(values, "exp.toml")


def test_a_sweep_is_one_run_per_method_lr_and_seed():
    values = {
        "experiment": {"methods": ["lora", "ia3"], "seeds": [0, 1]},
        "methods": {"lora": {"lr": [3e-4, 1e-3, 3e-3]}, "ia3": {"lr": 3e-3}},
    }
    experiment = parse_experiment(values, "exp.toml")
    names = [run.name for run in experiment.runs()]
    assert names == [
        "lora-lr0.0003-seed0",
        "lora-lr0.0003-seed1",
        "lora-lr0.001-seed0",
        "lora-lr0.001-seed1",
        "lora-lr0.003-seed0",
        "lora-lr0.003-seed1",
        "ia3-seed0",
        "ia3-seed1",
    ]
    rates = [experiment.run_config(r.method, r.seed, Path("x"), r.lr).learning_rate for r in experiment.runs()]
    assert rates == [3e-4, 3e-4, 1e-3, 1e-3, 3e-3, 3e-3, 3e-3, 3e-3]


def test_unreadable_experiment_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiment\nmethods = ")
    with pytest.raises(ExperimentError, match="bad.toml: not valid TOML"):
        load_experiment(bad)
