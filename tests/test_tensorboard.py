"""``--tensorboard``: the event files of tiny real runs, read back with TensorBoard's own reader, hold every
scalar of ``metrics.jsonl`` (and throughput and memory), one HParams entry per run with its final metrics, and a
``compare`` of two methods opens as two runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from t5peft.cli import main
from t5peft.engine.tensorboard import TensorBoardUnavailable
from t5peft.train.loop import Run, train
from tiny_runs import tiny_run_config, tiny_train_args

SIZES = dict(train_size=24, test_size=16, validation_size=16, max_source_length=32, batch_size=8, eval_batch_size=16)
SCALAR_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "train_seconds")


def read_events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def hparams_entries(events: EventAccumulator) -> tuple[list, list]:
    """The HParams experiment entries and session-start entries of one run's events."""
    experiments, sessions = [], []
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("experiment"):
            experiments.append(data.experiment)
        if data.HasField("session_start_info"):
            sessions.append(data.session_start_info)
    return experiments, sessions


def as_float32(value: float) -> float:
    return float(np.float32(value))  # an event stores a scalar as a float32


def test_events_of_a_tiny_run_equal_metrics_jsonl_and_hold_one_hparams_entry(imdb_dir, t5_small_dir, tmp_path):
    out, board = tmp_path / "run", tmp_path / "board"
    cfg = tiny_run_config(
        imdb_dir, t5_small_dir, out, method="lora", epochs=2, logs_per_two_epochs=3, tensorboard=str(board), **SIZES
    )
    results = train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) >= 3
    events = read_events(board)
    tags = set(events.Tags()["scalars"])
    for key in SCALAR_KEYS:
        expected = [(r["step"], as_float32(r[key])) for r in records]
        assert scalars(events, key) == expected, key
    steps = [r["step"] for r in records]
    for tag in ("throughput/examples_per_s", "throughput/tokens_per_s", "memory/peak_cpu_rss_bytes"):
        assert [s for s, _ in scalars(events, tag)] == steps, tag
    # the last log point's throughput is the run's: examples over training seconds, as results.json says
    assert scalars(events, "throughput/examples_per_s")[-1][1] == pytest.approx(
        results["training"]["examples_per_s"], rel=1e-6
    )

    experiments, sessions = hparams_entries(events)
    assert len(experiments) == 1 and len(sessions) == 1
    hparams = dict(sessions[0].hparams)
    assert hparams["method"].string_value == "lora"
    assert hparams["learning_rate"].number_value == pytest.approx(cfg.learning_rate)
    assert hparams["method_options.r"].number_value == results["method_options"]["r"]
    assert hparams["weights"].string_value == "random-init"
    assert "output" not in hparams and "tensorboard" not in hparams
    metric_tags = {m.name.tag for m in experiments[0].metric_infos}
    assert {"final/test_accuracy", "final/val_accuracy", "final/trainable_parameters"} <= metric_tags <= tags
    last = steps[-1]
    assert scalars(events, "final/test_accuracy") == [(last, as_float32(results["test"]["accuracy"]))]
    assert scalars(events, "final/trainable_parameters") == [(last, results["parameters"]["trainable"])]
    assert not any(p.is_dir() for p in board.iterdir()), "the HParams entry belongs to the run, not a sub-run"


def test_resumed_run_replaces_the_events_after_its_checkpoint(imdb_dir, t5_small_dir, tmp_path, monkeypatch):
    """Interrupted after the first epoch's checkpoint and a later log point: the resumed run's events, as
    TensorBoard reads them, are again exactly its metrics log (the later point was purged, not doubled)."""
    out, board = tmp_path / "run", tmp_path / "run" / "tensorboard"
    cfg = tiny_run_config(
        imdb_dir, t5_small_dir, out, method="lora", epochs=2, logs_per_two_epochs=6, tensorboard=str(board), **SIZES
    )
    original = Run.log_point

    def stop_after_epoch_one_and_a_log_point(self, step: int) -> None:
        original(self, step)
        if step == self.steps_per_epoch + 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "log_point", stop_after_epoch_one_and_a_log_point)
    with pytest.raises(Exception, match="interrupted"):
        train(cfg)
    monkeypatch.setattr(Run, "log_point", original)
    cfg.resume = True
    train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = read_events(board)
    for key in ("train_loss", "val_accuracy", "lr"):
        assert scalars(events, key) == [(r["step"], as_float32(r[key])) for r in records], key
    assert len(hparams_entries(events)[0]) == 1


def test_cli_bare_flag_writes_into_the_run_folder(imdb_dir, t5_small_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_train_args(imdb_dir, t5_small_dir, out, method="ia3", epochs=1, **SIZES)
    assert main([*args, "--tensorboard"]) == 0
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["tensorboard"] == str(out / "tensorboard")
    assert "val_accuracy" in read_events(out / "tensorboard").Tags()["scalars"]


def test_missing_package_is_one_line_naming_the_extra_and_writes_nothing(
    imdb_dir, t5_small_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    out = tmp_path / "run"
    with pytest.raises(TensorBoardUnavailable, match=r"t5peft\[tensorboard\]"):
        train(tiny_run_config(imdb_dir, t5_small_dir, out, tensorboard=str(tmp_path / "tb"), **SIZES))
    assert not out.exists() and not (tmp_path / "tb").exists()
    args = tiny_train_args(imdb_dir, t5_small_dir, out, **SIZES)
    assert main([*args, "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 't5peft[tensorboard]'" in err[0], err
    assert not out.exists()


EXPERIMENT = """\
[experiment]
name = "tiny"
methods = ["lora", "ia3"]
seeds = [0]
tensorboard = true

[train]
model = "{model}"
tokenizer = "{tokenizer}"
data = "{data}"
init = "random"
epochs = 1
batch_size = 8
eval_batch_size = 16
train_size = 16
test_size = 16
validation_size = 16
max_source_length = 32
logs_per_two_epochs = 2
"""


@pytest.mark.slow  # a whole two-method compare (33 s here); one run's events are checked in the default suite
def test_compare_of_two_methods_opens_as_two_runs(imdb_dir, t5_small_dir, tmp_path):
    from t5peft.experiments.compare import run_compare
    from tiny_runs import TINY_MODEL

    config = tmp_path / "exp.toml"
    config.write_text(EXPERIMENT.format(model=TINY_MODEL, tokenizer=t5_small_dir, data=imdb_dir))
    output = tmp_path / "cmp"
    said: list[str] = []
    run_compare(config, output, progress=False, say=said.append)
    board = output / "tensorboard"
    assert f"  {board}/: TensorBoard events, one run per run (tensorboard --logdir {board})" in said
    runs = sorted(p.name for p in board.iterdir())
    assert runs == ["ia3-seed0", "lora-seed0"]
    methods = []
    for name in runs:
        experiments, sessions = hparams_entries(read_events(board / name))
        assert len(experiments) == len(sessions) == 1, name
        methods.append(dict(sessions[0].hparams)["method"].string_value)
        saved = json.loads((output / "runs" / name / "results.json").read_text())
        accuracy = scalars(read_events(board / name), "final/test_accuracy")[0][1]
        assert accuracy == as_float32(saved["test"]["accuracy"])
    assert methods == ["ia3", "lora"]

    # the same plan again, without events for lora: the reused run gets them from its files, equal to the live ones
    live = read_events(board / "lora-seed0")
    shutil.rmtree(board / "lora-seed0")
    said.clear()
    run_compare(config, output, progress=False, say=said.append)
    assert any(line.startswith("lora-seed0 had finished without TensorBoard events") for line in said)
    again = read_events(board / "lora-seed0")
    for tag in (*SCALAR_KEYS, "final/test_accuracy", "final/trainable_parameters"):
        assert scalars(again, tag) == scalars(live, tag), tag
    assert dict(hparams_entries(again)[1][0].hparams) == dict(hparams_entries(live)[1][0].hparams)
    assert "throughput/examples_per_s" not in again.Tags()["scalars"]  # measured only by the live run


def test_pretrain_events_equal_its_metrics_log(imdb_test_texts, t5_small_dir, tmp_path):
    from t5peft.pretrain import PretrainConfig, pretrain
    from tiny_runs import TINY_MODEL

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t.replace("\n", " ") for t in imdb_test_texts[:120]) + "\n")
    out = tmp_path / "pre"
    cfg = PretrainConfig(
        model=TINY_MODEL,
        tokenizer=str(t5_small_dir),
        data=str(texts),
        output=str(out),
        input_length=32,
        batch_size=8,
        max_steps=6,
        warmup_steps=2,
        validation_documents=16,
        validation_examples=16,
        eval_every=3,
        checkpoint_every=6,
        progress=False,
        exclude_test_overlap=False,  # test reviews, but nothing is tested here
        tensorboard=str(out / "tensorboard"),
    )
    record = pretrain(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = read_events(out / "tensorboard")
    for key in ("val_loss", "lr"):
        assert scalars(events, key) == [(r["step"], as_float32(r[key])) for r in records], key
    logged = [r for r in records if r["train_loss"] is not None]  # none at step 0
    assert scalars(events, "train_loss") == [(r["step"], as_float32(r["train_loss"])) for r in logged]
    experiments, sessions = hparams_entries(events)
    assert len(experiments) == len(sessions) == 1
    assert scalars(events, "final/val_loss")[0][1] == as_float32(record["losses"]["validation"][-1]["loss"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "{tmp}/out/tensorboard"), (False, None), ("boards", "{tmp}/exp-folder/boards"), ("/abs/b", "/abs/b")],
)
def test_experiment_key_gives_one_folder_per_run(value, expected, tmp_path):
    """true: <output>/tensorboard; a relative folder is taken from the experiment file's folder."""
    from t5peft.experiments.config import parse_experiment
    from t5peft.experiments.plan import build_requests

    folder = tmp_path / "exp-folder"
    folder.mkdir()
    values = {"experiment": {"methods": ["lora", "ia3"], "tensorboard": value}, "train": {"init": "random"}}
    experiment = parse_experiment(values, "exp.toml", folder)
    root = experiment.tensorboard_root(tmp_path / "out")
    assert root == (None if expected is None else Path(expected.format(tmp=tmp_path)))
    requests = build_requests(experiment, tmp_path / "out", device="cpu", tensorboard=root)
    boards = [r.config.tensorboard for r in requests]
    assert boards == ([None, None] if root is None else [str(root.resolve() / r.name) for r in requests])
    assert [r.name for r in requests] == ["lora-seed0", "ia3-seed0"]


def test_experiment_key_must_be_a_bool_or_a_folder():
    from t5peft.experiments.config import ExperimentError, parse_experiment

    with pytest.raises(ExperimentError, match=r"exp.toml \[experiment\] tensorboard: expected true, false or a folder"):
        parse_experiment({"experiment": {"methods": ["lora"], "tensorboard": 3}}, "exp.toml")
    with pytest.raises(ExperimentError, match=r"\[train\]: unknown key\(s\) tensorboard"):
        parse_experiment({"experiment": {"methods": ["lora"]}, "train": {"tensorboard": "x"}}, "exp.toml")
