"""``compare``'s lines go through ``logging`` (logger ``t5peft.compare``): ``-v`` adds each launch (DEBUG), ``-q``
keeps only failed and interrupted runs (WARNING); the default shows finished runs and the table (INFO), on
standard output, written above the progress bars."""

from __future__ import annotations

import logging

import pytest

from t5peft.cli import main
from t5peft.experiments.console import Console, configure_logging, log
from tiny_runs import TINY_MODEL

EXPERIMENT = """\
[experiment]
name = "tiny"
methods = ["lora"]

[train]
model = "{model}"
tokenizer = "{tokenizer}"
data = "{data}"
init = "random"
epochs = 1
batch_size = 8
train_size = 16
test_size = 16
validation_size = 16
max_source_length = 32
logs_per_two_epochs = 2
"""


def test_levels_of_the_console_lines(capsys):
    configure_logging(logging.WARNING)
    console = Console("t", total=1, done=0, jobs=1, progress=False, say=None)
    console.message("a finished run")
    console.message("a failed run", warning=True)
    console.close()
    assert capsys.readouterr().out.splitlines() == ["a failed run"]
    configure_logging(logging.INFO)
    Console("t", 1, 0, 1, progress=True, say=None).message("above the bar")
    assert "above the bar\n" in capsys.readouterr().out
    assert log.propagate is False  # not twice, not with the root logger's "INFO " prefix


@pytest.mark.slow  # three compares (19 s here); what each level prints, no number of a result
def test_verbose_quiet_and_default_compare(imdb_dir, t5_small_dir, tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text(EXPERIMENT.format(model=TINY_MODEL, tokenizer=t5_small_dir, data=imdb_dir))
    command = ["compare", "--config", str(config), "--output", str(tmp_path / "out"), "--no-progress"]
    assert main(["-v", *command]) == 0
    verbose = capsys.readouterr().out
    assert "lora-seed0 started (job slot 0" in verbose  # DEBUG: the launch
    assert "done lora seed 0: test accuracy " in verbose and "| lora |" in verbose

    assert main(["-q", *command]) == 0  # the finished run is reused: nothing failed, nothing to say
    assert capsys.readouterr().out == ""

    assert main(command) == 0
    default = capsys.readouterr().out
    assert "| lora |" in default and "outputs:" in default and "started (job slot" not in default
