"""Tasks as data (issue 18): built-in tasks in T5's formats, local folders in the Hub parquet layouts of GLUE,
SuperGLUE and AG News, a CSV with its own column names and label words, N classes, -1 rows, the bad inputs.

The data are small files made here in the real layouts (column names, split names, label encodings); every
training run is the t5-tiny architecture with random weights, a few steps, through the command line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t5peft.cli import main as cli_main
from t5peft.data.tasks import BUILTIN_TASKS, TaskError, resolve_task
from t5peft.engine.layout import changed_settings
from t5peft.engine.settings import comparable
from t5peft.train.settings import TrainConfig, TrainError
from tiny_runs import tiny_train_args

WORDS = ["the", "a", "film", "plot", "actor", "great", "dull", "story", "good", "bad", "scene", "music", "long", "city"]
FEW_STEPS = dict(epochs=1, batch_size=8, validation_size=8, max_source_length=32, logs_per_two_epochs=2, lr=3e-3)


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def write_parquet(path: Path, columns: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def write_split(folder: Path, split: str, text_columns: tuple[str, ...], labels: list[int], seed: int) -> None:
    """One Hub shard: ``{split}-00000-of-00001.parquet`` with the text columns, ``label`` and ``idx``."""
    rng = random.Random(seed)
    columns: dict[str, list] = {name: [sentence(rng) for _ in labels] for name in text_columns}
    write_parquet(
        folder / f"{split}-00000-of-00001.parquet", {**columns, "label": labels, "idx": list(range(len(labels)))}
    )


def labels_of(classes: int, n: int) -> list[int]:
    return [i % classes for i in range(n)]


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory) -> dict[str, Path]:
    """Local copies of the Hub layouts: nyu-mll/glue (one folder per config, test labels -1), aps/super_glue
    (boolq), fancyzhx/ag_news (data/, 4 classes)."""
    root = tmp_path_factory.mktemp("hub")
    glue, super_glue, ag_news = root / "glue", root / "super_glue", root / "ag_news"
    for config, columns, classes, validation in (
        ("sst2", ("sentence",), 2, "validation"),
        ("rte", ("sentence1", "sentence2"), 2, "validation"),
        ("mnli", ("premise", "hypothesis"), 3, "validation_matched"),
    ):
        write_split(glue / config, "train", columns, labels_of(classes, 24), 1)
        write_split(glue / config, validation, columns, labels_of(classes, 12), 2)
        test = "test_matched" if config == "mnli" else "test"
        write_split(glue / config, test, columns, [-1] * 10, 3)  # GLUE hides its test labels
    write_split(super_glue / "boolq", "train", ("question", "passage"), labels_of(2, 24), 1)
    write_split(super_glue / "boolq", "validation", ("question", "passage"), labels_of(2, 12), 2)
    write_split(super_glue / "boolq", "test", ("question", "passage"), [-1] * 10, 3)
    write_split(ag_news / "data", "train", ("text",), labels_of(4, 24), 1)
    write_split(ag_news / "data", "test", ("text",), labels_of(4, 16), 2)
    return {"glue": glue, "super_glue": super_glue, "ag_news": ag_news}


def train_cli(data: Path | str, tokenizer: Path, output: Path, **settings) -> dict:
    assert cli_main(tiny_train_args(data, tokenizer, output, **{**FEW_STEPS, **settings})) == 0
    return json.loads((output / "results.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# The declarations


def test_builtin_tasks_carry_t5s_formats():
    """T5's GLUE preprocessor: '<benchmark> <key>: <value>' over the sorted feature keys; TFDS label names."""
    assert BUILTIN_TASKS["sst2"].template == "sst2 sentence: {sentence}"
    assert BUILTIN_TASKS["mnli"].template == "mnli hypothesis: {hypothesis} premise: {premise}"
    assert BUILTIN_TASKS["rte"].template == "rte sentence1: {sentence1} sentence2: {sentence2}"
    assert BUILTIN_TASKS["qnli"].template == "qnli question: {question} sentence: {sentence}"
    assert BUILTIN_TASKS["boolq"].template == "boolq passage: {passage} question: {question}"
    assert BUILTIN_TASKS["mnli"].label_words == ("entailment", "neutral", "contradiction")
    assert BUILTIN_TASKS["mnli"].test_split == "validation_matched"
    assert (BUILTIN_TASKS["mrpc"].metric, BUILTIN_TASKS["cola"].metric) == ("f1", "matthews")
    assert all(task.origin for task in BUILTIN_TASKS.values())
    imdb = BUILTIN_TASKS["imdb"]
    assert (imdb.template, imdb.label_words, imdb.test_split) == ("Review: {text}", ("negative", "positive"), "test")


def test_imdb_settings_read_as_they_always_did(tmp_path):
    """The default task writes the settings an IMDb run always wrote: a run_config.json written by e0ebdb7 (before
    tasks) reads back to exactly the settings a run asks for today, so compare and --resume reuse old runs; a
    saved config of an overridden task reads back to the same task."""
    old = json.loads((Path(__file__).parent / "data" / "imdb_run_config_e0ebdb7.json").read_text())
    same = {key: old[key] for key in ("model", "data", "output", "tokenizer", "init", "method", "progress")}
    same.update({key: old[key] for key in ("epochs", "batch_size", "lr", "validation_size", "train_size", "test_size")})
    same.update(logs_per_two_epochs=old["logs_per_two_epochs"], max_source_length=old["max_source_length"])
    today = TrainConfig(**same)
    assert changed_settings(comparable(TrainConfig, old), today.to_dict()) == []
    assert {key: today.to_dict()[key] for key in ("prefix", "label_words")} == {
        "prefix": "Review: ",
        "label_words": ("negative", "positive"),
    }
    assert TrainConfig(output=str(tmp_path)).data == "stanfordnlp/imdb"
    custom = TrainConfig(output=str(tmp_path), data=str(tmp_path), text_column="review", label_words=("a", "b", "c"))
    again = TrainConfig.from_dict(json.loads(json.dumps(custom.to_dict())))
    assert again.resolved_task() == custom.resolved_task()
    assert custom.resolved_task().template == "Review: {review}"


def test_resolve_task_overrides():
    task = resolve_task("imdb", text_columns=("premise", "hypothesis"), template="p: {premise} h: {hypothesis}")
    assert task.source({"premise": "A", "hypothesis": "B"}) == "p: A h: B"
    relabelled = resolve_task("imdb", label_words=("neg", "pos"))
    assert relabelled.classes == ("neg", "pos") and relabelled.aliases == ("negative", "positive")
    with pytest.raises(TaskError, match="give a template"):
        resolve_task("imdb", text_columns=("premise", "hypothesis"))
    with pytest.raises(TaskError, match="not both"):
        resolve_task("imdb", template="{text}", prefix="x")
    with pytest.raises(TaskError, match=r"names no column"):
        resolve_task("imdb", template="no columns here")


# ---------------------------------------------------------------------------------------------------------
# Training through the command line on the real layouts


@pytest.mark.parametrize(
    ("task", "folder", "classes", "test_split", "test_rows"),
    [
        ("sst2", "glue", 2, "validation", 12),
        ("mnli", "glue", 3, "validation_matched", 12),
        ("rte", "glue", 2, "validation", 12),
        ("boolq", "super_glue", 2, "validation", 12),
        ("ag_news", "ag_news", 4, "test", 16),
    ],
)
def test_builtin_task_trains_on_its_hub_layout(
    hub_folders, t5_small_dir, tmp_path, task, folder, classes, test_split, test_rows
):
    """Each task reads its own folder of a local Hub layout, trains a few steps and is tested on its test split:
    GLUE's validation split where the test labels are hidden (-1), never the -1 rows."""
    results = train_cli(hub_folders[folder], t5_small_dir, tmp_path / task, task=task)
    test = results["test"]
    assert results["task"] == task and results["data"]["task"]["name"] == task
    assert results["data"]["test_split"] == test_split
    assert test["n"] == test_rows  # the split's labelled rows, all of them
    assert len(test["confusion"]) == classes and all(len(row) == classes for row in test["confusion"])
    assert list(test["per_class"]) == list(BUILTIN_TASKS[task].classes)
    assert sum(map(sum, test["confusion"])) == test_rows
    assert 0.0 <= test["macro_f1"] <= 1.0 and test["metric"]["name"] == "accuracy"
    multi_token = any(len(word.split()) > 1 or "_" in word or "/" in word for word in BUILTIN_TASKS[task].label_words)
    if multi_token or task in ("mnli", "boolq"):  # entailment, not_entailment, Sci/Tech, False: several tokens
        assert test["scoring"] == "sequence"
    if test_split != "test":
        assert "hidden" in results["data"]["test_from"]


def write_reviews_csv(path: Path, labels: list[str], seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = ["id,review,sentiment"] + [f"{i},{sentence(rng)},{label}" for i, label in enumerate(labels)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_with_its_own_columns_and_three_classes(t5_small_dir, tmp_path, capsys):
    """review/sentiment columns, labels neg/neu/pos: a 3 x 3 confusion matrix, and predict prints class names."""
    data = write_reviews_csv(tmp_path / "reviews.csv", [("neg", "neu", "pos")[i % 3] for i in range(60)])
    out = tmp_path / "run"
    results = train_cli(
        data, t5_small_dir, out, text_column="review", label_column="sentiment", label_words=("neg,neu,pos",)
    )
    test = results["test"]
    assert len(test["confusion"]) == 3 and list(test["per_class"]) == ["neg", "neu", "pos"]
    assert results["data"]["test_held_out"] and results["data"]["task"]["template"] == "Review: {review}"
    capsys.readouterr()
    assert cli_main(["predict", str(out), "a good film", "a dull plot"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 2 and all(row["label"] in ("neg", "neu", "pos") for row in printed)
    assert cli_main(["evaluate", str(out), "--no-progress", "--generate"]) == 0  # the run's own test set again
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "imdb" and report["confusion"] == test["confusion"] and report["loss"] == test["loss"]
    assert 0.0 <= report["agreement_with_fast_path"] <= 1.0


def test_csv_pos_neg_labels_map_to_the_imdb_classes_by_label_word(t5_small_dir, tmp_path):
    """Two label words for IMDb's two classes: a file may name a class by its word (pos) or its class name."""
    data = write_reviews_csv(tmp_path / "reviews.csv", [("neg", "positive")[i % 2] for i in range(40)])
    results = train_cli(
        data, t5_small_dir, tmp_path / "run", text_column="review", label_column="sentiment", label_words=("neg", "pos")
    )
    assert list(results["test"]["per_class"]) == ["neg", "pos"]


def test_unlabelled_training_rows_are_left_out_and_counted(t5_small_dir, tmp_path):
    folder = tmp_path / "sst2"
    write_split(folder / "sst2", "train", ("sentence",), labels_of(2, 40) + [-1] * 5, 1)
    write_split(folder / "sst2", "validation", ("sentence",), labels_of(2, 10), 2)
    results = train_cli(folder, t5_small_dir, tmp_path / "run", task="sst2")
    unlabelled = results["data"]["unlabelled_rows"]
    assert unlabelled["train"]["count"] == 5 and "row 41 (1-based)" in unlabelled["train"]["first"][0]
    assert results["data"]["sizes"]["train"] + results["data"]["sizes"]["validation"] == 40


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def bad_cases(tmp: Path) -> list[tuple[dict, str]]:
    csv = write_reviews_csv(tmp / "reviews.csv", [("neg", "pos")[i % 2] for i in range(30)] + ["meh"])
    plain = write_reviews_csv(tmp / "plain.csv", [("neg", "pos")[i % 2] for i in range(30)])
    columns = dict(text_column="review", label_column="sentiment")
    return [
        (dict(task="nosuch"), r"unknown task 'nosuch'; built-in tasks: imdb, sst2"),
        (
            dict(
                data=plain,
                template="premise: {premise} review: {review}",
                label_words=("neg", "pos"),
                label_column="sentiment",
            ),
            r"plain\.csv: missing premise column; found columns: id, review, sentiment",
        ),
        (
            dict(data=csv, label_words=("neg", "pos"), **columns),
            r"reviews\.csv: data row 31 .*label 'meh' is not one of 0, 1, 'neg', 'pos'",
        ),
        (dict(data=plain, label_words=("pos",), **columns), r"needs at least two classes, got \['pos'\]"),
        (
            dict(data=plain, label_words=("a  b", "a b"), **columns),
            r"label words 'a  b' and 'a b' of task 'imdb' tokenize to the same ids",
        ),
    ]


@pytest.mark.parametrize("case", range(5))
def test_bad_task_input_is_one_line_exit_2_nothing_written(t5_small_dir, tmp_path, capsys, case):
    settings, message = bad_cases(tmp_path)[case]
    settings = {**settings, "data": settings.get("data", tmp_path / "reviews.csv")}
    out = tmp_path / "run"
    assert cli_main(tiny_train_args(settings.pop("data"), t5_small_dir, out, **{**FEW_STEPS, **settings})) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert pytest.importorskip("re").search(message, err), err
    assert not out.exists()


def test_train_config_refuses_an_unknown_task_before_loading(tmp_path):
    with pytest.raises(TrainError, match="unknown task 'glu'"):
        TrainConfig(output=str(tmp_path), task="glu")


def test_a_hub_id_downloads_only_the_tasks_folder(hub_folders):
    """``nyu-mll/glue`` with task sst2: the snapshot asks for the task's folder (and the usual ones), and reads
    the GLUE validation split from it."""
    from t5peft.data.sources import load_split
    from t5peft.train.rows import task_columns

    asked: dict = {}

    def fake_download(**kwargs) -> str:
        asked.update(kwargs)
        return str(hub_folders["glue"])

    sst2 = BUILTIN_TASKS["sst2"]
    data = load_split(
        "nyu-mll/glue", "validation", downloader=fake_download, columns=task_columns(sst2), hub_config="sst2"
    )
    assert asked["allow_patterns"] == ["sst2/*.parquet", "plain_text/*.parquet", "data/*.parquet"]
    assert (
        asked["repo_id"] == "nyu-mll/glue" and len(data) == 12 and data.origin.startswith("hf://datasets/nyu-mll/glue")
    )
