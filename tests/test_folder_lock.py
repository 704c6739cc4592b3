"""One writer per folder: a second ``train`` / ``pretrain`` / ``compare`` into a folder in use stops in one line that
names the holder; a killed holder leaves no stale lock (issue 16.4)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t5peft.cli import main as cli_main
from t5peft.data import load_split, split_validation
from t5peft.engine.lock import LOCK_FILE, FolderBusyError, FolderLock
from tiny_runs import TINY_MODEL, tiny_train_args, write_reviews


@pytest.fixture(scope="module")
def reviews_csv(tmp_path_factory, imdb_dir: Path) -> Path:
    _, sample = split_validation(load_split(imdb_dir, "train"), size=60, seed=3)
    return write_reviews(tmp_path_factory.mktemp("lock") / "reviews.csv", zip(sample.texts, sample.labels, strict=True))


def train_args(data: Path, tokenizer: Path, output: Path, *extra: str) -> list[str]:
    words = tiny_train_args(data, tokenizer, output, method="lora", max_source_length=24, epochs=1)
    return [*words, "--validation-size", "10", "--test-size", "10", "--batch-size", "16", *extra]


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_second_lock_on_a_folder_names_the_holder(tmp_path: Path) -> None:
    with FolderLock(tmp_path / "run", "t5peft train"), pytest.raises(FolderBusyError) as caught:
        FolderLock(tmp_path / "run", "t5peft compare").acquire()
    message = str(caught.value)
    assert f"pid {os.getpid()} on " in message and "t5peft train, since " in message
    assert "\n" not in message and str(tmp_path / "run" / LOCK_FILE) in message
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released: the record emptied
    FolderLock(tmp_path / "run", "t5peft train").acquire().release()  # and free again


def test_train_into_a_folder_in_use_stops_and_leaves_it_alone(reviews_csv, t5_small_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert cli_main(train_args(reviews_csv, t5_small_dir, out)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_FILE}
    capsys.readouterr()
    with FolderLock(out, "t5peft train"):  # as if another train --resume were running into it
        assert cli_main(train_args(reviews_csv, t5_small_dir, out, "--resume")) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "another command is writing into this folder" in lines[0], lines
    assert lines[0].startswith("t5peft train: error: ") and f"pid {os.getpid()}" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_FILE} == before  # untouched
    assert cli_main(train_args(reviews_csv, t5_small_dir, out, "--resume")) == 0  # the lock was released


def test_pretrain_and_compare_take_the_lock_too(t5_small_dir, tmp_path: Path, capsys) -> None:
    (tmp_path / "texts.txt").write_text("a review\n")
    pretrain = ["pretrain", "--model", TINY_MODEL, "--tokenizer", str(t5_small_dir), "--data", str(tmp_path)]
    with FolderLock(tmp_path / "busy", "t5peft train"):
        assert cli_main([*pretrain, "--output", str(tmp_path / "busy"), "--max-steps", "2"]) == 2
        assert "another command is writing into this folder" in error_lines(capsys)[0]
        experiment = tmp_path / "exp.toml"
        experiment.write_text(f'[experiment]\nmethods = ["lora"]\n[train]\nmodel = "{TINY_MODEL}"\n')
        assert cli_main(["compare", "--config", str(experiment), "--output", str(tmp_path / "busy")]) == 2
        lines = error_lines(capsys)
    assert len(lines) == 1 and "another command is writing into this folder" in lines[0], lines


def test_an_output_that_is_a_file_is_one_line(reviews_csv, t5_small_dir, tmp_path, capsys) -> None:
    (tmp_path / "afile.txt").write_text("not a folder")
    assert cli_main(train_args(reviews_csv, t5_small_dir, tmp_path / "afile.txt")) == 2
    lines = error_lines(capsys)
    assert lines == [
        f"t5peft train: error: {tmp_path / 'afile.txt'}: is a file; the output must be a folder (or a "
        "path not used yet)"
    ], lines
    assert (tmp_path / "afile.txt").read_text() == "not a folder"


def test_a_failed_start_unlocks_and_removes_the_folder_it_made(reviews_csv, t5_small_dir, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "run"
    assert cli_main(train_args(reviews_csv, t5_small_dir, out, "-o", "nonsense=1")) == 2
    assert not (tmp_path / "new").exists()


HOLD_AND_WAIT = """
import sys, time
from pathlib import Path
from t5peft.engine.lock import FolderLock
held = FolderLock(Path(sys.argv[1]), "t5peft train").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path, caplog) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid} on "):
            FolderLock(tmp_path / "run", "t5peft train").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    with caplog.at_level(logging.WARNING, logger="t5peft.engine.lock"):
        while True:  # the system releases a dead process's lock at once; allow for a slow reaper
            try:
                lock = FolderLock(tmp_path / "run", "t5peft train").acquire()
                break
            except FolderBusyError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    lock.release()
    assert f"ended without finishing (pid {holder.pid} on " in caplog.text
