"""``t5peft compare --shard i/N`` and ``t5peft report DIR1 DIR2 ...``: every run of a plan in exactly one share, the
shares merged into one results file, shares of different plans refused, bad shares one line with exit 2."""

from __future__ import annotations

import json

import pytest

from t5peft.cli import main
from t5peft.experiments.compare import run_compare
from t5peft.experiments.config import ExperimentError, load_experiment
from t5peft.experiments.layout import EXPERIMENT_FILE, RESULTS_FILE, TABLE_FILE
from t5peft.experiments.plan import build_requests
from t5peft.experiments.shards import parse_shard, select_share
from test_compare_runs import write_experiment


@pytest.fixture
def shared_env(monkeypatch, shared_dir):
    monkeypatch.setenv("T5PEFT_SHARED", str(shared_dir))
    return shared_dir


def test_every_run_is_in_exactly_one_share(tmp_path, shared_env):
    sections = "[methods.lora]\nlr = [1e-4, 1e-3, 1e-2]\n"
    config = write_experiment(tmp_path, methods=("lora", "ia3", "prompt"), seeds=(0, 1, 2), sections=sections)
    names = [r.name for r in build_requests(load_experiment(config), tmp_path / "out", device="cpu")]
    assert len(names) == len(set(names)) == 15
    for count in range(1, 18):
        shares = [[r for r in select_share(names, index, count)] for index in range(1, count + 1)]
        flat = [name for share in shares for name in share]
        assert sorted(flat) == sorted(names), count  # every run, none twice
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert shares == [select_share(names, index, count) for index in range(1, count + 1)]  # deterministic
    # a share mixes methods: the first of three gets runs of every method
    assert {name.split("-")[0] for name in select_share(names, 1, 3)} == {"lora", "ia3", "prompt"}


@pytest.mark.parametrize("text", ["3/2", "0/2", "1/0", "a/b", "2", "-1/3"])
def test_a_share_that_does_not_exist_is_refused(text):
    with pytest.raises(ExperimentError, match="--shard"):
        parse_shard(text)


def test_cli_bad_shard_is_one_line_exit_2_and_writes_nothing(tmp_path, shared_env, capsys):
    config = write_experiment(tmp_path)
    output = tmp_path / "out"
    assert main(["compare", "--config", str(config), "--output", str(output), "--shard", "3/2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--shard 3/2" in err
    assert not output.exists()


@pytest.mark.slow  # 27 s of real compare runs; the share arithmetic and refusals stay in the default suite (-m slow)
def test_shares_run_apart_and_merge_into_one_report(tmp_path, shared_env, capsys):
    config = write_experiment(tmp_path, methods=("lora", "ia3"), seeds=(0,))
    first, second, merged = tmp_path / "share1", tmp_path / "share2", tmp_path / "merged"
    run_compare(config, first, device="cpu", progress=False, shard="1/2", say=lambda _: None)
    run_compare(config, second, device="cpu", progress=False, shard="2/2", say=lambda _: None)
    for folder, runs in ((first, ["lora-seed0"]), (second, ["ia3-seed0"])):
        description = json.loads((folder / EXPERIMENT_FILE).read_text())
        assert description["shard"]["runs"] == runs and description["plan_runs"] == ["lora-seed0", "ia3-seed0"]
        assert sorted(p.name for p in (folder / "runs").iterdir()) == runs

    assert main(["report", str(first), str(second), "--output", str(merged)]) == 0
    results = json.loads((merged / RESULTS_FILE).read_text())
    assert [r["method"] for r in results["runs"]] == ["lora", "ia3"] and results["not_finished"] == []
    assert set(results["summary"]) == {"lora", "ia3"}
    assert (merged / TABLE_FILE).is_file()
    assert [m["shard"]["index"] for m in results["experiment"]["merged_from"]] == [1, 2]

    # one share alone: the other's run is listed as not finished
    assert main(["report", str(first), "--output", str(tmp_path / "half")]) == 0
    assert json.loads((tmp_path / "half" / RESULTS_FILE).read_text())["not_finished"] == ["ia3-seed0"]
    capsys.readouterr()

    # a share given twice, and a share of another plan: one line, exit 2, nothing written
    assert main(["report", str(first), str(first), "--output", str(tmp_path / "twice")]) == 2
    assert "both share 1/2" in capsys.readouterr().err
    description = json.loads((second / EXPERIMENT_FILE).read_text())
    description["seeds"] = [0, 1]
    (second / EXPERIMENT_FILE).write_text(json.dumps(description))
    assert main(["report", str(first), str(second), "--output", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another plan" in err and "seeds" in err
    assert not (tmp_path / "other").exists() and not (tmp_path / "twice").exists()
    assert main(["report", str(first), str(second)]) == 2
    assert "needs --output" in capsys.readouterr().err
