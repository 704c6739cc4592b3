"""What the user sees: test sets that cannot be training data unnoticed, one-line errors, Ctrl-C, feedback while
training and evaluating, and the commands' help."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t5peft import __version__
from t5peft.cli import HelpFormatter, build_parser
from t5peft.cli import main as cli_main
from t5peft.data import LabeledTexts, load_split, shared_rows, split_validation
from t5peft.data.sources import DataError
from t5peft.data.text2text import encode_split
from t5peft.train.evaluate import evaluate
from t5peft.train.loop import Run
from t5peft.train.rows import RunTexts, data_overlap
from t5peft.train.runs import evaluation_texts, load_run, predict
from t5peft.train.settings import TrainConfig, TrainError
from tiny_runs import tiny_train_args, write_reviews


def tiny_args(t5_small_dir: Path, data: Path, output: Path, *extra: str) -> list[str]:
    """`t5peft train` arguments for a tiny LoRA run, 40 source tokens, no progress bar."""
    return [*tiny_train_args(data, t5_small_dir, output, max_source_length=40, method="lora"), *extra]


def select_texts(cfg: TrainConfig) -> RunTexts:
    return cfg.rows().texts()


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reviews_csv(tmp_path_factory, imdb_dir: Path) -> Path:
    """200 real training reviews (100 per class), one file: a single-split source."""
    _, sample = split_validation(load_split(imdb_dir, "train"), size=200, seed=7)
    return write_reviews(tmp_path_factory.mktemp("csv") / "reviews.csv", zip(sample.texts, sample.labels, strict=True))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, imdb_dir: Path, t5_small_dir: Path) -> tuple[Path, str]:
    """A finished tiny LoRA run on IMDb (32 train, 16 validation, 40 of the 25,000 test reviews), and its stdout."""
    out = tmp_path_factory.mktemp("runs") / "lora"
    sizes = shlex.split("--train-size 32 --validation-size 16 --test-size 40 --epochs 2 --logs-per-two-epochs 4")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(tiny_args(t5_small_dir, imdb_dir, out, *sizes)) == 0
    return out, printed.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Which reviews a run tests on: a hold-out of a single data file; overlap with training counted in every run


def test_single_file_holds_out_a_disjoint_stratified_seeded_test_set(reviews_csv: Path) -> None:
    cfg = TrainConfig(data=str(reviews_csv), validation_size=20)
    texts = select_texts(cfg)
    train, validation, test = set(texts.train.texts), set(texts.validation.texts), set(texts.test.texts)
    assert len(texts.test) == 20  # 10% of the file
    assert sorted(texts.test.labels) == [0] * 10 + [1] * 10
    assert not train & test and not validation & test and not train & validation
    assert len(texts.train) + len(texts.validation) + len(texts.test) == 200
    assert "held out from" in texts.test_from and "disjoint" in texts.test_from
    assert texts.overlap() == {"test_in_train": 0, "test_in_validation": 0, "validation_in_train": 0}
    assert select_texts(cfg).test.texts == texts.test.texts  # seeded
    assert select_texts(TrainConfig(data=str(reviews_csv), validation_size=20, seed=1)).test.texts != texts.test.texts
    assert len(select_texts(TrainConfig(data=str(reviews_csv), validation_size=20, test_size=50)).test) == 50
    with pytest.raises(DataError, match="pass --test-data"):
        select_texts(TrainConfig(data=str(reviews_csv), validation_size=150, test_size=50))


def test_single_file_run_says_its_test_set_is_held_out(reviews_csv, t5_small_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    extra = shlex.split("--validation-size 20 --epochs 1 --batch-size 32")
    assert cli_main(tiny_args(t5_small_dir, reviews_csv, out, *extra)) == 0
    printed = capsys.readouterr().out
    assert "test accuracy: " in printed and "on 20 reviews" in printed
    assert f"test set: held out from {reviews_csv}, a single file: 20 of its 200 rows" in printed
    assert "overlap: 0 of the 20 test reviews also occur in the training reviews, 0 in the validation" in printed
    data = json.loads((out / "results.json").read_text())["data"]
    assert data["test_held_out"] is True and "held out from" in data["test_from"]
    assert data["sizes"] == {"train": 160, "validation": 20, "test": 20}
    assert data["overlap"] == {"test_in_train": 0, "test_in_validation": 0, "validation_in_train": 0}
    assert "[test hold-out: 20 of 200 rows" in data["origins"]["test"]
    # evaluate RUN scores the same held-out rows
    assert cli_main(["evaluate", str(out), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 20 and report["source"].startswith("the run's test set: ")
    assert report["accuracy"] == json.loads((out / "results.json").read_text())["test"]["accuracy"]


def test_overlap_of_imdb_train_and_test_is_counted(imdb_dir: Path) -> None:
    """IMDb: 123 test texts also occur in train; with the default validation hold-out (seed 0) all 123 are
    training rows, and 7 validation rows are texts that also occur among the training rows."""
    train, test = load_split(imdb_dir, "train"), load_split(imdb_dir, "test")
    assert shared_rows(test, train) == 123
    texts = select_texts(TrainConfig(data=str(imdb_dir)))
    assert texts.overlap() == {"test_in_train": 123, "test_in_validation": 0, "validation_in_train": 7}


def test_overlap_counts_rows_with_exact_texts() -> None:
    def texts(*values: str) -> LabeledTexts:
        return LabeledTexts(list(values), [0] * len(values), "made up")

    train, validation = texts("a", "b", "c"), texts("c", "d")
    test = texts("a", "a", "d", "A", "e")  # duplicates count per row; matching is exact ("A" != "a")
    assert data_overlap(train, validation, test) == {
        "test_in_train": 2,
        "test_in_validation": 1,
        "validation_in_train": 1,
    }


def test_every_run_records_and_prints_its_overlap(finished_run) -> None:
    out, printed = finished_run
    data = json.loads((out / "results.json").read_text())["data"]
    assert set(data["overlap"]) == {"test_in_train", "test_in_validation", "validation_in_train"}
    assert data["test_held_out"] is False
    assert "a stratified sample (seed 2) of 40 of the 25,000 reviews of the test split of" in data["test_from"]
    assert f"overlap: {data['overlap']['test_in_train']} of the 40 test reviews also occur" in printed


# ---------------------------------------------------------------------------------------------------------
# Errors: bad input in one line (exit 2), bugs reported as bugs; --version


BAD_TRAIN_INPUTS = [
    ("--device cuda", "no CUDA GPU"),
    ("--device foo", "is not a device"),
    ("--validation-size 0", "--validation-size must be >= 1"),
    ("--validation-size 199 --test-data {csv}", "--validation-size 199 leaves fewer than 2 training rows"),
    ("--validation-size 190", "200 rows cannot hold a test set of 20, a validation set of 190"),
    ("--test-size 1", "--test-size must be at least 2"),
    ("--max-source-length 0", "--max-source-length must be at least 2"),
    ("--dropout 2", "dropout must be in [0, 1)"),
    ("--weight-decay -1", "--weight-decay must be >= 0"),
    ("--max-grad-norm -1", "--max-grad-norm must be > 0"),
    ("--batch-size 0", "--batch-size must be >= 1"),
    ("--lr -1", "lr must be > 0"),
    ("--label-words good good", "label words must be different non-empty words"),
    ("--label-words 'a  b' 'a b'", "tokenize to the same ids"),  # a shared first token is scored; identical ids not
    ("--method full -o r=4", "method 'full' has no options (got 'r')"),
    ("--method lora -o rank=4", "method 'lora' has no option 'rank'"),
    ("--method lora -o target_modules=nope", "no linear layer matches"),
    ("--method lora-plus", "unknown method 'lora-plus'"),
    ("--init pretrained", "no weights found"),
    ("--model {tmp}/nowhere", "no such folder"),
    ("--data {tmp}/nowhere.csv", "nowhere.csv"),
    ("--test-data {tmp}/nowhere.csv", "nowhere.csv"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_TRAIN_INPUTS, ids=[e for e, _ in BAD_TRAIN_INPUTS])
def test_train_input_errors_are_one_line_exit_2(
    extra, message, reviews_csv, t5_small_dir, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    words = shlex.split(extra.format(tmp=tmp_path, csv=reviews_csv))
    args = tiny_args(t5_small_dir, reviews_csv, tmp_path / "out", "--test-size", "20", *words)
    if words[:2] == ["--init", "pretrained"]:
        args[args.index("--model") + 1] = str(t5_small_dir)  # t5-small's config, but no weights here
    assert cli_main(args) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("t5peft train: error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # a failed run leaves no run folder behind


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "{run}", "--size", "0"], "--size must be at least 2"),
        (["evaluate", "{run}", "--batch-size", "0"], "batch size must be >= 1"),
        (["evaluate", "{tmp}"], "not a run folder"),
        (["evaluate", "{run}", "--data", "{tmp}/nowhere.csv"], "nowhere.csv"),
        (["predict", "{run}", ""], "text 1 is empty"),
        (["predict", "{run}", "fine", "   "], "text 2 is empty"),
        (["predict", "{run}"], "no reviews"),
        (["predict", "{run}", "--file", "{tmp}/blanks.txt"], "blanks.txt: no reviews"),
        (["predict", "{run}", "--file", "{tmp}"], "is a folder; expected a text file"),
        (["predict", "{run}", "--file", "{tmp}/nowhere.txt"], "nowhere.txt"),
        (["predict", "{run}", "x", "--file", "{tmp}/blank.txt"], "not both"),
    ],
)
def test_evaluate_and_predict_input_errors_are_one_line(argv, message, finished_run, tmp_path, capsys) -> None:
    (tmp_path / "blank.txt").write_text("good\n\nbad\n")
    (tmp_path / "blanks.txt").write_text("\n  \n\r\n")
    args = [word.format(run=finished_run[0], tmp=tmp_path) for word in argv]
    assert cli_main(args) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and message in lines[0], lines


def test_resume_from_a_damaged_checkpoint_is_one_line(reviews_csv, t5_small_dir, tmp_path, capsys) -> None:
    args = tiny_args(t5_small_dir, reviews_csv, tmp_path / "run", *shlex.split("--validation-size 20 --epochs 1"))
    args += shlex.split("--batch-size 64 --max-source-length 24")
    assert cli_main(args) == 0
    state = tmp_path / "run" / "checkpoint" / "state.json"
    state.write_text(state.read_text()[:40])
    capsys.readouterr()
    assert cli_main([*args, "--resume"]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "checkpoint: cannot resume from this checkpoint (JSONDecodeError" in lines[0], lines
    assert "delete the folder to start the run over with --resume" in lines[0]


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"t5peft {__version__}"


def test_a_bug_says_it_is_one_and_shows_its_traceback_with_v(monkeypatch, capsys) -> None:
    def broken(args):
        raise RuntimeError("something impossible")

    monkeypatch.setattr("t5peft.cli.cmd_methods", broken)
    assert cli_main(["methods"]) == 1
    err = capsys.readouterr().err
    assert "internal error (a bug in t5peft): RuntimeError: something impossible" in err
    assert "run again with -v" in err and "Traceback" not in err
    assert cli_main(["-v", "methods"]) == 1
    err = capsys.readouterr().err
    assert "a bug in t5peft" in err and "Traceback (most recent call last)" in err and "something impossible" in err


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C during train


def _interrupt_at(monkeypatch, step: int) -> None:
    """Raise KeyboardInterrupt (what Ctrl-C raises) when the run reaches the log point of ``step``."""
    validate = Run.validate

    def interrupted(self, at, epoch, train_loss):
        if at == step:
            raise KeyboardInterrupt
        return validate(self, at, epoch, train_loss)

    monkeypatch.setattr(Run, "validate", interrupted)


def _ctrl_c_args(imdb_dir, t5_small_dir, out) -> list[str]:
    # 48 reviews: 3 steps per epoch, a log point at every step, a checkpoint at steps 3, 6, 9
    sizes = shlex.split("--train-size 48 --validation-size 16 --test-size 16 --epochs 3 --logs-per-two-epochs 6")
    return tiny_args(t5_small_dir, imdb_dir, out, *sizes)


def test_ctrl_c_after_a_checkpoint_says_where_and_how_to_resume(
    imdb_dir, t5_small_dir, tmp_path, capsys, monkeypatch
) -> None:
    out = tmp_path / "run"
    args = _ctrl_c_args(imdb_dir, t5_small_dir, out)
    _interrupt_at(monkeypatch, 5)
    assert cli_main(args) == 130
    lines = stderr_lines(capsys)
    assert lines[0] == (
        f"t5peft train: interrupted in epoch 2 of 3, after step 5 of 9; checkpoint: {out / 'checkpoint'} "
        "(end of epoch 1, step 3); --resume continues from there"
    )
    assert lines[1] == "to continue: " + shlex.join(["t5peft", *args, "--resume"])
    assert len(lines) == 2
    monkeypatch.undo()
    assert cli_main(shlex.split(lines[1].removeprefix("to continue: "))[1:]) == 0  # the printed command works
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["steps"] == 9
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 9


def test_ctrl_c_before_the_first_checkpoint(imdb_dir, t5_small_dir, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 2)
    assert cli_main(_ctrl_c_args(imdb_dir, t5_small_dir, out)) == 130
    first = stderr_lines(capsys)[0]
    assert "interrupted in epoch 1 of 3, after step 2 of 9; no checkpoint yet" in first
    assert "--resume starts it over" in first


def test_ctrl_c_while_setting_up_leaves_nothing(imdb_dir, t5_small_dir, tmp_path, capsys, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("t5peft.train.loop.prepare_data", interrupted)
    out = tmp_path / "new" / "run"
    assert cli_main(_ctrl_c_args(imdb_dir, t5_small_dir, out)) == 130
    lines = stderr_lines(capsys)
    assert "interrupted while setting up, before any training step; nothing saved" in lines[0]
    assert not (tmp_path / "new").exists()


def test_failed_setup_removes_the_folders_it_created(imdb_dir, t5_small_dir, tmp_path, monkeypatch, capsys) -> None:
    def failing(self):
        raise TrainError("the optimizer cannot be built")

    monkeypatch.setattr(Run, "_setup_optimizer", failing)
    out = tmp_path / "a" / "b"
    assert cli_main(_ctrl_c_args(imdb_dir, t5_small_dir, out)) == 2
    assert "the optimizer cannot be built" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_real_sigint_exits_130_with_the_resume_command(imdb_dir, t5_small_dir, tmp_path) -> None:
    """A real SIGINT (what Ctrl-C sends) to a `t5peft train` process, once its first log line is out."""
    out = tmp_path / "run"
    args = tiny_args(
        t5_small_dir, imdb_dir, out, *shlex.split("--train-size 32 --validation-size 16 --test-size 16 --epochs 60")
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "t5peft.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("step "), first
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "t5peft train: interrupted in epoch" in err and "Traceback" not in err
    assert "to continue: t5peft train " in err and err.rstrip().endswith("--resume")


# ---------------------------------------------------------------------------------------------------------
# Feedback


def test_train_without_progress_prints_a_line_per_log_point_and_the_run_folder(finished_run) -> None:
    out, printed = finished_run
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in printed.splitlines() if line.startswith("step ")]
    assert len(logged) == len(metrics) == 4
    first = metrics[0]
    assert logged[0] == (
        f"step {first['step']}/4 (epoch {first['epoch']:.2f}): train loss {first['train_loss']:.4f}, "
        f"validation loss {first['val_loss']:.4f}, accuracy {first['val_accuracy']:.4f}"
    )
    assert (
        f"  run folder: {out} (base/, checkpoint/, final/, metrics.jsonl, paths.json, results.json, run_config.json)"
        in printed
    )


def test_evaluate_scores_the_runs_test_set_with_a_progress_bar(finished_run, capsys) -> None:
    out, _ = finished_run
    results = json.loads((out / "results.json").read_text())
    assert cli_main(["evaluate", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["n"] == results["test"]["n"] == 40
    assert report["accuracy"] == results["test"]["accuracy"]
    assert report["confusion"] == results["test"]["confusion"]
    assert report["source"].startswith("the run's test set: ")
    assert "evaluate: " in captured.err and "batch" in captured.err  # the bar (cleared when done)
    assert cli_main(["evaluate", str(out), "--no-progress", "--size", "20"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 20 and "evaluate:" not in captured.err


def test_evaluate_size_samples_as_the_run_drew_its_test_set(finished_run, capsys) -> None:
    """``--size`` draws a stratified sample with the run's own test seed: the run's test size gives back the
    run's test set (and its results), a smaller one a sample of the whole split, seeded as the run's."""
    out, _ = finished_run
    run = load_run(out)
    assert evaluation_texts(run, None, None, 40).texts == run.config.rows().test_set().texts
    twenty = evaluation_texts(run, None, None, 20)
    assert twenty.origin.endswith("[stratified sample: 20 of 25,000 rows, seed 2]")
    assert sorted(twenty.labels) == [0] * 10 + [1] * 10
    assert cli_main(["evaluate", str(out), "--size", "40", "--no-progress"]) == 0
    report, test = json.loads(capsys.readouterr().out), json.loads((out / "results.json").read_text())["test"]
    assert {k: report[k] for k in ("n", "accuracy", "loss", "confusion")} == {
        k: test[k] for k in ("n", "accuracy", "loss", "confusion")
    }


def test_predict_scores_a_review_as_evaluate_does(finished_run) -> None:
    """The label and probability ``predict`` gives a review are those evaluation computed for it, exactly."""
    out, _ = finished_run
    run = load_run(out)
    test = run.config.rows().test_set()
    labelled = predict(run, test.texts)
    scored = evaluate(run.model, encode_split(test, run.tokenizer, run.task), run.tokenizer.pad_token_id)
    words = run.task.label_words
    assert [words.index(label) for label, _ in labelled] == scored.predictions
    # the probability of the class predicted, as evaluation's softmax over the classes gave it (exactly)
    assert [p for _, p in labelled] == [row[g] for row, g in zip(scored.probabilities, scored.predictions, strict=True)]
    positive = [p if label == words[1] else 1.0 - p for label, p in labelled]
    # float32 softmax: p(negative) and 1 - p(positive) differ by rounding (measured: up to 9e-8)
    assert positive == pytest.approx(scored.positive_probability, rel=0, abs=1e-6)


def test_predict_reads_a_file_and_standard_input(finished_run, tmp_path, capsys, monkeypatch) -> None:
    out, _ = finished_run
    reviews = ["A wonderful, moving film.", "Dreadful and boring.", "Not bad at all."]
    (tmp_path / "reviews.txt").write_text("\n".join(reviews) + "\n")
    assert cli_main(["predict", str(out), "--file", str(tmp_path / "reviews.txt")]) == 0
    from_file = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in from_file] == reviews
    assert [x["line"] for x in from_file] == [1, 2, 3]
    assert all(x["label"] in ("negative", "positive") and 0.5 <= x["probability"] <= 1 for x in from_file)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(reviews)))
    assert cli_main(["predict", str(out), "-"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == from_file
    assert cli_main(["predict", str(out), *reviews]) == 0
    by_argument = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x.pop("argument") for x in by_argument] == [1, 2, 3]
    assert by_argument == [{k: v for k, v in x.items() if k != "line"} for x in from_file]
    bad_bytes = io.TextIOWrapper(io.BytesIO(b"fine\n\xff\xfe\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", bad_bytes)
    assert cli_main(["predict", str(out), "-"]) == 2
    assert stderr_lines(capsys) == [
        "t5peft predict: error: standard input: not UTF-8 text (invalid start byte at byte 5)"
    ]


def test_predict_splits_lines_at_newlines_only(finished_run, tmp_path, capsys) -> None:
    """U+0085, U+2028 and a lone carriage return stay inside a review (real IMDb reviews hold U+0085); blank lines
    are passed over with a note, and every prediction names the line it came from."""
    out, _ = finished_run
    first = "The film was great\u0085 really great\u2028 and\rmoving"
    long = "Awful. " * 20
    (tmp_path / "reviews.txt").write_bytes(f"{first}\r\n\n   \n{long}\n".encode())
    assert cli_main(["predict", str(out), "--file", str(tmp_path / "reviews.txt")]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [(x["line"], x["text"], x["text_truncated"]) for x in rows] == [
        (1, first, False),
        (4, long[:80], True),
    ]
    assert "2 blank line(s) passed over" in captured.err
    assert cli_main(["predict", str(out), "--full-text", "--file", str(tmp_path / "reviews.txt")]) == 0
    whole = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["text"], x["text_truncated"]) for x in whole] == [(first, False), (long, False)]
    assert [x["label"] for x in whole] == [x["label"] for x in rows]


def test_sizes_larger_than_the_data_warn_with_the_size_used(reviews_csv: Path, caplog) -> None:
    """Also the case the issue met: the same file as training and test data is not refused, but counted."""
    cfg = TrainConfig(
        data=str(reviews_csv), test_data=str(reviews_csv), validation_size=20, train_size=5000, test_size=500
    )
    with caplog.at_level(logging.WARNING, logger="t5peft.train.rows"):
        texts = select_texts(cfg)
    assert (len(texts.train), len(texts.test)) == (180, 200)
    warnings = [record.getMessage() for record in caplog.records]
    assert any(
        w.startswith("train_size 5,000 is larger than the data") and w.endswith("using all 180") for w in warnings
    )
    assert any(w.startswith("test_size 500 is larger than the data") and w.endswith("using all 200") for w in warnings)
    assert texts.overlap() == {"test_in_train": 180, "test_in_validation": 20, "validation_in_train": 0}


def test_train_help_shows_every_default() -> None:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    formatter = HelpFormatter("t5peft train")
    for action in train._actions:
        if action.dest in ("help", "output"):
            continue
        help_text = formatter._get_help_string(action) or ""
        assert "default" in help_text, action.option_strings
    text = " ".join(train.format_help().split())  # without line wrapping
    for shown in ("(default: 3)", "(default: 0.06)", "(default: the method's", "(default: all)", "(default: 1000)"):
        assert shown in text


def test_flags_say_off_by_default_in_every_command() -> None:
    """A store_false flag (``--no-first-sentinel``) is off unless given; its help must not say "default: True"."""
    for name, command in build_parser()._subparsers._group_actions[0].choices.items():
        text = " ".join(command.format_help().split())
        assert "(default: True)" not in text and "(default: False)" not in text, name


def test_the_settings_of_a_run_import_no_torch() -> None:
    """The command line builds its help from the settings classes: reading them must not start torch (seconds)."""
    code = (
        "import sys, types; package = types.ModuleType('t5peft'); package.__path__ = [sys.argv[1]]; "
        "sys.modules['t5peft'] = package; import t5peft.train.settings, t5peft.engine.settings; "
        "print(sorted(name for name in ('torch', 'numpy', 'pyarrow') if name in sys.modules))"
    )
    source = Path(__file__).resolve().parent.parent / "src" / "t5peft"  # the package, without its __init__
    printed = subprocess.run([sys.executable, "-c", code, str(source)], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == "[]", printed.stderr


def test_main_help_is_plain_text(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "Commands: train" in text and "-v, --verbose" in text and "130" in text


# ---------------------------------------------------------------------------------------------------------
# Data a real user has: one class only, empty reviews (issue 16.5, 16.9)


def small_run_args(t5_small_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    sizes = "--validation-size 6 --test-size 6 --epochs 1 --batch-size 8 --max-source-length 16"
    return tiny_args(t5_small_dir, data, out, *shlex.split(sizes), *extra)


def test_a_set_without_one_class_is_an_error_or_a_recorded_warning(reviews_csv, t5_small_dir, tmp_path, capsys):
    with reviews_csv.open(encoding="utf-8") as handle:
        positive = [(row["text"], 1) for row in csv.DictReader(handle) if row["label"] == "1"][:40]
    data = write_reviews(tmp_path / "positive.csv", positive)
    assert cli_main(small_run_args(t5_small_dir, data, tmp_path / "one")) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "no 'negative' reviews" in lines[0] and "--allow-missing-classes" in lines[0], lines
    assert not (tmp_path / "one").exists()
    assert cli_main(small_run_args(t5_small_dir, data, tmp_path / "one", "--allow-missing-classes")) == 0
    printed = capsys.readouterr().out
    assert "  class balance: train 0 negative / 28 positive; validation 0 negative / 6 positive; test 0 negative" in (
        printed
    )
    assert "  WARNING: the train set (" in printed
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    sets = [m.split(" (")[0] for m in results["data"]["missing_classes"]]
    assert sets == ["the train set", "the validation set", "the test set"]
    assert results["data"]["class_balance"]["test"] == {"negative": 0, "positive": 6}


def test_the_summary_prints_each_sets_class_balance(finished_run) -> None:
    _, printed = finished_run
    balance = (
        "  class balance: train 16 negative / 16 positive; validation 8 negative / 8 positive; test 20 negative / "
    )
    assert balance + "20 positive" in printed.splitlines()


def test_empty_reviews_stop_training_unless_skipped_and_counted(reviews_csv, t5_small_dir, tmp_path, capsys):
    with reviews_csv.open(encoding="utf-8") as handle:
        every = [(row["text"], int(row["label"])) for row in csv.DictReader(handle)]
    rows = [row for label in (0, 1) for row in every if row[1] == label][80:120]  # 20 of each class
    rows[5] = ("   ", rows[5][1])
    data = write_reviews(tmp_path / "holey.csv", rows)
    assert cli_main(small_run_args(t5_small_dir, data, tmp_path / "run")) == 2
    lines = stderr_lines(capsys)
    assert (
        len(lines) == 1 and "data row 6 (1-based" in lines[0] and "empty" in lines[0] and "--skip-empty" in lines[0]
    ), lines
    assert cli_main(small_run_args(t5_small_dir, data, tmp_path / "run", "--skip-empty")) == 0
    printed = capsys.readouterr().out
    assert "  skipped: 1 empty review(s) in the train source (--skip-empty)" in printed.splitlines()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["skipped_empty"]["train"]["count"] == 1
    assert results["config"]["skip_empty"] is True
    assert sum(results["data"]["sizes"].values()) == 39


# ---------------------------------------------------------------------------------------------------------
# A run folder reopened from another directory, or copied to another machine (issue 16.7)


def predictions(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_a_run_folder_works_from_anywhere_and_when_moved(
    reviews_csv, imdb_dir, t5_small_dir, tmp_path, monkeypatch, capsys
) -> None:
    import shutil

    work = tmp_path / "work"
    shutil.copytree(t5_small_dir, work / "tok")
    shutil.copyfile(reviews_csv, work / "data.csv")
    monkeypatch.chdir(work)
    assert cli_main(small_run_args(Path("tok"), Path("data.csv"), Path("runs/tiny"))) == 0
    capsys.readouterr()
    run = work / "runs" / "tiny"
    paths = json.loads((run / "paths.json").read_text())
    assert paths["data"] == {"as_typed": "data.csv", "resolved": str(work / "data.csv")}
    assert paths["tokenizer"] == {"as_typed": "tok", "resolved": str(work / "tok")}
    assert {"tokenizer.json", "adapter_config.json"} <= {p.name for p in (run / "final").iterdir()}
    tested = json.loads((run / "results.json").read_text())["test"]

    monkeypatch.chdir(tmp_path)  # elsewhere: the relative paths as typed name nothing here
    assert cli_main(["predict", str(run), "A wonderful film", "Dull and long"]) == 0
    here = predictions(capsys)
    assert cli_main(["evaluate", str(run), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["n"], report["accuracy"], report["loss"]) == (tested["n"], tested["accuracy"], tested["loss"])

    shutil.copytree(run, tmp_path / "moved")  # to another machine: without its tokenizer folder and its data
    shutil.rmtree(work)
    assert cli_main(["predict", str(tmp_path / "moved"), "A wonderful film", "Dull and long"]) == 0
    assert predictions(capsys) == here
    assert cli_main(["evaluate", str(tmp_path / "moved"), "--no-progress"]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and "the run's data 'data.csv' is not here" in lines[0] and "--data" in lines[0], lines
    assert cli_main(["evaluate", str(tmp_path / "moved"), "--data", str(imdb_dir), "--size", "6", "--no-progress"]) == 0


def test_resume_from_another_directory_does_not_read_other_data(
    reviews_csv, t5_small_dir, tmp_path, monkeypatch, capsys
) -> None:
    import shutil

    for place in ("a", "b"):
        (tmp_path / place).mkdir()
        shutil.copyfile(reviews_csv, tmp_path / place / "data.csv")
    monkeypatch.chdir(tmp_path / "a")
    args = small_run_args(t5_small_dir, Path("data.csv"), tmp_path / "run")
    assert cli_main(args) == 0
    monkeypatch.chdir(tmp_path / "b")  # the same words, another data.csv
    assert cli_main([*args, "--resume"]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and f"data 'data.csv' names {tmp_path / 'b' / 'data.csv'}" in lines[0], lines
    assert f"resume from {tmp_path / 'a'}" in lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ("train --output {tmp}/r --validation-size 0", "t5peft train: error: --validation-size must be >= 1, got 0"),
        ("train --output {tmp}/r --eval-batch-size 0", "t5peft train: error: --eval-batch-size must be >= 1, got 0"),
        (
            "pretrain --model m --output {tmp}/r --data d",
            "t5peft pretrain: error: give a budget: --max-steps and/or --max-minutes",
        ),
    ],
)
def test_errors_name_the_option_the_user_typed(argv, expected, tmp_path, capsys) -> None:
    assert cli_main(shlex.split(argv.format(tmp=tmp_path))) == 2
    assert stderr_lines(capsys) == [expected]


def test_setting_names_inside_paths_and_words_stay_as_they_are() -> None:
    from t5peft.cli import named_as_typed

    flags = {"max_steps": "--max-steps", "train_size": "--train-size"}
    message = "runs/max_steps/x.csv: max_steps must be >= 1; train_sizes, train_size-like, .train_size, train_size"
    assert named_as_typed(message, flags) == (
        "runs/max_steps/x.csv: --max-steps must be >= 1; train_sizes, train_size-like, .train_size, --train-size"
    )


def test_evaluate_counts_the_scored_reviews_that_the_run_trained_on(
    reviews_csv, t5_small_dir, tmp_path, capsys, caplog
):
    """As ``train`` counts its test set's overlap: here the whole file the run was trained on is scored."""
    assert cli_main(small_run_args(t5_small_dir, reviews_csv, tmp_path / "run")) == 0
    sizes = json.loads((tmp_path / "run" / "results.json").read_text())["data"]["sizes"]
    capsys.readouterr()
    assert cli_main(["evaluate", str(tmp_path / "run"), "--data", str(reviews_csv), "--split", "train"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overlap"] == {"in_train": sizes["train"], "in_validation": sizes["validation"]}
    assert f"{sizes['train']} of the 200 reviews scored also occur in the run's training reviews" in caplog.text
    assert cli_main(["evaluate", str(tmp_path / "run"), "--no-progress"]) == 0  # its own held-out test set
    assert json.loads(capsys.readouterr().out)["overlap"] == {"in_train": 0, "in_validation": 0}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (IsADirectoryError(21, "Is a directory", "runs/smoke"), "runs/smoke: is a folder; a file was expected here"),
        (FileExistsError(17, "File exists", "runs/a.txt"), "runs/a.txt: is a file (or a path through one); a folder"),
        (FileNotFoundError(2, "No such file or directory", "x.csv"), "x.csv: no such file or folder"),
        (PermissionError(13, "Permission denied", "/root/x"), "/root/x: permission denied"),
    ],
)
def test_os_errors_say_what_was_expected(error, expected, monkeypatch, capsys) -> None:
    def fail(args):
        raise error

    monkeypatch.setattr("t5peft.cli.cmd_methods", fail)
    assert cli_main(["methods"]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"t5peft methods: error: {expected}") and "Errno" not in lines[0]
