"""``compare`` over several tasks (issue 18): experiment files with ``[task]`` / ``tasks = [...]`` /
``[tasks.<name>]``, run folders and results per task, the table's blocks and mean row, old results files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from t5peft.experiments.compare import run_compare
from t5peft.experiments.config import ExperimentError, parse_experiment
from t5peft.experiments.layout import RESULTS_FILE, TABLE_FILE
from t5peft.experiments.report import render_report
from t5peft.experiments.results import SCHEMA_FILE, read_results
from test_tasks import labels_of, sentence, write_split
from tiny_runs import TINY_MODEL

TRAIN = dict(
    model=TINY_MODEL,
    init="random",
    epochs=1,
    batch_size=8,
    eval_batch_size=16,
    validation_size=8,
    max_source_length=32,
    logs_per_two_epochs=2,
)


def toml_value(value) -> str:
    return json.dumps(value)


def write_experiment(folder: Path, tokenizer: Path, body: str) -> Path:
    train = "\n".join(f"{key} = {toml_value(value)}" for key, value in {**TRAIN, "tokenizer": str(tokenizer)}.items())
    path = folder / "exp.toml"
    path.write_text(f'[experiment]\nname = "tasks"\nmethods = ["lora"]\nseeds = [0]\n{body}\n[train]\n{train}\n')
    return path


@pytest.mark.slow  # 22 s; per-task CLI training stays in the default suite (-m slow)
def test_compare_runs_each_task_and_reports_a_block_per_task_and_the_mean(t5_small_dir, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    glue = tmp_path / "glue"
    write_split(glue / "sst2", "train", ("sentence",), labels_of(2, 24), 1)
    write_split(glue / "sst2", "validation", ("sentence",), labels_of(2, 10), 2)
    write_split(glue / "sst2", "test", ("sentence",), [-1] * 6, 3)
    rng = random.Random(0)
    rows = [f"{sentence(rng)},{('neg', 'neu', 'pos')[i % 3]}" for i in range(45)]
    (tmp_path / "reviews.csv").write_text("review,sentiment\n" + "\n".join(rows) + "\n")
    body = (
        'tasks = ["sst2"]\n\n[tasks.sst2]\ndata = "glue"\n\n'
        '[tasks.reviews]\nname = "imdb"\ndata = "reviews.csv"\ntext_column = "review"\nlabel_column = "sentiment"\n'
        'label_words = "neg,neu,pos"\n'
    )
    config = write_experiment(tmp_path, t5_small_dir, body)
    said: list[str] = []
    outcome = run_compare(config, tmp_path / "out", device="cpu", progress=False, say=said.append)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["reviews-lora-seed0", "sst2-lora-seed0"]
    results = json.loads((out / RESULTS_FILE).read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert results["schema_version"] == 3 and list(results["tasks"]) == ["sst2", "reviews"]
    assert sorted((r["task"], r.get("builtin_task")) for r in results["runs"]) == [
        ("reviews", "imdb"),
        ("sst2", "sst2"),
    ]
    by_task = {r["folder"].split("/")[-1].split("-")[0]: r for r in results["runs"]}
    assert len(by_task["reviews"]["test_confusion"]) == 3 and by_task["sst2"]["test_n"] == 10
    assert by_task["sst2"]["data"]["test_split"] == "validation"
    mean = results["mean_over_tasks"]["lora"]
    per_task = [results["tasks"][t]["summary"]["lora"]["test_metric"]["mean"] for t in ("sst2", "reviews")]
    assert mean["test_metric"] == pytest.approx(sum(per_task) / 2, rel=1e-12)
    table = (out / TABLE_FILE).read_text()
    assert "## Task sst2" in table and "## Task reviews" in table and "## Mean over tasks" in table
    assert (out / "t5_peft_comparison.png").is_file() and (out / "t5_peft_comparison-reviews.png").is_file()
    assert outcome.results == out / RESULTS_FILE


def test_a_schema_2_results_file_is_read_as_one_imdb_task(t5_small_dir, tmp_path):
    """Old results (before tasks) still render: every run read as an IMDb run, one task."""
    from test_report import fake_run, results_of

    runs = [fake_run("lora", 0, 1e-3, val=0.8, test=0.7), fake_run("lora", 1, 1e-3, val=0.7, test=0.6)]
    old = results_of(runs, [{"name": "lora", "lr": 1e-3, "options": {}, "overrides": {}}])
    old["schema_version"] = 2
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps(old))
    read = read_results(path)
    assert list(read["tasks"]) == ["imdb"] and all(r["task"] == "imdb" for r in read["runs"])
    assert read["tasks"]["imdb"]["summary"]["lora"]["test_metric"]["mean"] == pytest.approx(0.65)
    assert [p.name for p in render_report(path)][-1] == TABLE_FILE


def test_a_task_table_sets_the_task_of_every_run(tmp_path):
    (tmp_path / "r.csv").write_text("review,sentiment\na,neg\n")
    values = {
        "experiment": {"methods": ["lora"]},
        "task": {"name": "imdb", "text_column": "review", "label_words": "neg,neu,pos"},
        "train": {"data": "r.csv", "output": "x"} | {},
    }
    values["train"].pop("output")
    experiment = parse_experiment(values, "exp.toml", tmp_path)
    cfg = experiment.run_config(experiment.methods[0], 0, tmp_path / "o")
    assert cfg.resolved_task().classes == ("neg", "neu", "pos") and cfg.text_column == ("review",)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"task": {"name": "imdb", "colour": "red"}}, r"exp\.toml \[task\]: unknown key\(s\) colour"),
        ({"task": {"name": "nosuch"}}, r"exp\.toml \[task\] name: unknown task 'nosuch'; built-in tasks: imdb"),
        ({"experiment": {"methods": ["lora"], "tasks": ["sst2", "sst2"]}}, r"lists a task twice"),
        ({"task": {"name": "imdb"}, "tasks": {"sst2": {}}}, r"one \[task\] table or several tasks"),
        ({"experiment": {"methods": ["lora"], "tasks": ["no/slash"]}}, r"'no/slash' must be letters"),
    ],
)
def test_bad_task_declarations_in_experiment_files(tmp_path, values, message):
    values = {"experiment": {"methods": ["lora"]}, **values}
    with pytest.raises(ExperimentError, match=message):
        parse_experiment(values, "exp.toml", tmp_path)


def test_glue_small_plans_every_task_on_its_own_hub_folder():
    from t5peft.experiments.config import load_experiment

    experiment = load_experiment(Path(__file__).resolve().parent.parent / "configs" / "glue-small.toml")
    runs = experiment.runs()
    assert [t.name for t in experiment.tasks] == ["sst2", "rte", "mnli", "boolq"]
    assert runs[0].name == "sst2-full-seed0" and len(runs) == 4 * 5  # lora sweeps two rates
    configs = {run.task.name: experiment.run_config(run.method, run.seed, Path("o"), run.lr, run.task) for run in runs}
    assert {name: cfg.data for name, cfg in configs.items()} == {
        "sst2": "nyu-mll/glue",
        "rte": "nyu-mll/glue",
        "mnli": "nyu-mll/glue",
        "boolq": "aps/super_glue",
    }
    assert configs["rte"].train_size == 2000 and configs["mnli"].rows().test_split_name == "validation_matched"
