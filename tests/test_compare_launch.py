"""``nproc_per_node`` in an experiment file: each run of ``t5peft compare`` on N processes under torchrun
(``--standalone``, gloo on the CPU over the loopback), and ``compare --merge`` as ``report DIR... --output``.

Tolerances: the two-rank run is compared with the one-process run of the same settings as tests/test_distributed.py
compares ``t5peft train`` under torchrun (its module docstring says how they were measured); the same bounds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import interrupt
from t5peft.cli import main
from t5peft.engine.layout import RunFolder
from t5peft.experiments.compare import run_compare
from t5peft.experiments.config import ExperimentError, load_experiment
from t5peft.experiments.layout import EXPERIMENT_FILE, RESULTS_FILE
from t5peft.experiments.plan import build_requests, launch_difference
from t5peft.experiments.pool import slot_devices, worker_command
from t5peft.experiments.share import rank_thread_share
from t5peft.experiments.worker import Ending, launch_ending, parse_arguments
from t5peft.train.loop import train
from t5peft.train.settings import TrainConfig
from test_distributed import assert_same_training

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "models" / "t5-tiny"
RUN = "lora-seed0"

EXPERIMENT = """\
[experiment]
name = "launch"
methods = ["lora"]
seeds = [0]

[train]
model = "{model}"
tokenizer = "${{T5PEFT_SHARED}}/models/t5-small"
data = "${{T5PEFT_SHARED}}/data/imdb"
init = "random"
device = "cpu"
epochs = {epochs}
batch_size = {batch_size}
eval_batch_size = 16
train_size = 32
test_size = 16
validation_size = 16
max_source_length = 32
logs_per_two_epochs = 4
lr = 3e-3
dropout = 0.0
{train}
[methods.lora]
options = {{ lora_dropout = 0.0 }}
{method}
"""


def write_experiment(
    folder: Path, *, train: str = "", method: str = "", epochs: int = 1, batch_size: int = 8, name: str = "exp.toml"
) -> Path:
    """One LoRA run of 4 steps of global batch 8 (32 reviews), no dropout anywhere: what test_distributed trains."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(EXPERIMENT.format(model=TINY, epochs=epochs, batch_size=batch_size, train=train, method=method))
    return path


@pytest.fixture
def launch_env(monkeypatch, shared_dir):
    """The shared data, one CPU thread per process, gloo over the loopback (the workers inherit this)."""
    monkeypatch.setenv("T5PEFT_SHARED", str(shared_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    return shared_dir


# ---------------------------------------------------------------------------------------------------------
# The experiment file's key


@pytest.mark.parametrize("value", ["0", "-1", '"2"', "true", "1.5"])
def test_nproc_per_node_must_be_an_integer_of_at_least_1(value, tmp_path, launch_env):
    config = write_experiment(tmp_path, train=f"nproc_per_node = {value}")
    with pytest.raises(ExperimentError, match=r"exp.toml \[train\]: nproc_per_node must be an integer >= 1, got"):
        load_experiment(config)


def test_a_batch_that_does_not_divide_over_the_processes_is_one_line_exit_2(tmp_path, launch_env, capsys):
    config = write_experiment(tmp_path, train="nproc_per_node = 3")
    output = tmp_path / "out"
    assert main(["compare", "--config", str(config), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"t5peft compare: error: {config} [methods.lora]: batch_size 8 (the global batch) does not divide evenly "
        "over nproc_per_node = 3 processes; use a multiple of 3"
    ]
    assert not output.exists()


def test_nproc_per_node_is_how_a_run_starts_not_a_train_setting(tmp_path, launch_env):
    """Default 1; a method's table may set it like any [train] key; the runs' TrainConfig never sees it, the plan
    (experiment.json's train / overrides) records it."""
    plain = load_experiment(write_experiment(tmp_path))
    assert [r.nproc_per_node for r in build_requests(plain, tmp_path / "a")] == [1]
    experiment = load_experiment(write_experiment(tmp_path, method="nproc_per_node = 2", name="two.toml"))
    (request,) = build_requests(experiment, tmp_path / "b")
    assert request.nproc_per_node == 2
    assert "nproc_per_node" not in request.config.to_dict()
    assert experiment.describe()["methods"][0]["overrides"]["nproc_per_node"] == 2
    assert "nproc_per_node" not in {f for f in TrainConfig.__dataclass_fields__}


def test_a_finished_run_on_another_number_of_processes_is_a_changed_setting(tmp_path, launch_env):
    """Reuse compares the world size a finished run recorded (none recorded: one process) with the plan's."""
    experiment = load_experiment(write_experiment(tmp_path, train="nproc_per_node = 2"))
    (request,) = build_requests(experiment, tmp_path / "out")
    request.folder.root.mkdir(parents=True)
    assert launch_difference(request) == []  # nothing finished yet: nothing to compare
    request.folder.results.write_text(json.dumps({"config": {}}))
    assert launch_difference(request) == ["nproc_per_node 1 -> 2 (the processes it trained on)"]
    request.folder.results.write_text(json.dumps({"distribution": {"world_size": 2}}))
    assert launch_difference(request) == []


def test_the_readme_experiment_file_with_nproc_per_node_is_valid(tmp_path, launch_env):
    """The README's snippet (Scaling up) loads: every run on 2 processes, full with FSDP."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Each run of a comparison on many processes: `nproc_per_node`", 1)[1]
    snippet = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme.toml").write_text(snippet)
    experiment = load_experiment(tmp_path / "readme.toml")
    requests = build_requests(experiment, tmp_path / "out", device="cpu")
    assert {r.nproc_per_node for r in requests} == {2} and len(requests) == 6
    assert {r.run.method.name: r.config.strategy for r in requests} == {"lora": "auto", "full": "fsdp"}


# ---------------------------------------------------------------------------------------------------------
# How the pool starts a run's processes


def test_the_worker_command_threads_and_gpus_of_a_run_on_several_processes(monkeypatch):
    request = Path("/x/request.json")
    assert worker_command(request, 1) == [sys.executable, "-m", "t5peft.experiments.worker", str(request)]
    assert worker_command(request, 2)[3:] == ["--nproc-per-node", "2", str(request)]
    assert parse_arguments(["--nproc-per-node", "2", "r.json"]) == (2, Path("r.json"))
    assert parse_arguments(["r.json"]) == (1, Path("r.json"))
    assert parse_arguments(["--nproc-per-node", "0", "r.json"]) is None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert rank_thread_share(None, 1, 16) is None  # one process: what it had before
    assert rank_thread_share(None, 4, 16) == 4  # --jobs 1: the cores over the ranks
    assert rank_thread_share(8, 2, 16) == 4  # --jobs 2: a run's share over its ranks
    assert rank_thread_share(1, 2, 16) == 1  # at least one
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert rank_thread_share(None, 2, 16) == 3  # the user's setting for the run, divided
    assert slot_devices(None, 1, 2) is None
    assert slot_devices(["0", "1", "2", "3"], 0, 1) == "0" and slot_devices(["0", "1", "2", "3"], 1, 1) == "1"
    assert slot_devices(["0", "1", "2", "3"], 0, 2) == "0,1" and slot_devices(["0", "1", "2", "3"], 1, 2) == "2,3"


def test_the_launch_ends_as_a_one_process_worker_would(capsys):
    """Rank 0's ending when it failed; else the first failed rank's, named; a rank killed before it reported:
    the shell's status (128 + signal); the other ranks' different lines said above; Ctrl-C before any rank: 130."""
    ok, user = Ending(0), Ending(2, "error: bad data")
    assert launch_ending(2, {0: ok, 1: ok}, {}, False) == Ending(0)
    assert launch_ending(2, {0: user, 1: user}, {0: 2, 1: 2}, False) == user
    assert capsys.readouterr().err == ""  # the same line once
    lost = Ending(2, "error: rank 0 stopped: another rank left the run")
    bug = Ending(1, "internal error (a bug in t5peft): ValueError: x", "Traceback ...\n")
    assert launch_ending(2, {0: lost, 1: bug}, {0: 2, 1: 1}, False) == lost
    assert capsys.readouterr().err == "Traceback ...\nrank 1: internal error (a bug in t5peft): ValueError: x\n"
    assert launch_ending(2, {0: ok, 1: bug}, {1: 1}, False) == Ending(1, f"rank 1: {bug.line}", bug.details)
    capsys.readouterr()
    killed = launch_ending(2, {0: lost}, {0: 2, 1: -9}, False)
    assert killed == lost and "rank 1: killed by signal SIGKILL before it said why" in capsys.readouterr().err
    assert launch_ending(2, {}, {}, True) == Ending(130, "interrupted (Ctrl-C) before the ranks started")
    assert launch_ending(2, {0: Ending(130, "interrupted (Ctrl-C): x")}, {}, True).code == 130


# ---------------------------------------------------------------------------------------------------------
# A run on two processes, end to end


@pytest.fixture(scope="module")
def two_rank_compare(tmp_path_factory, shared_dir):
    """``compare`` of one LoRA run with ``nproc_per_node = 2`` (DDP, gloo), and the one-process run of the same
    settings (its request.json), trained here with one thread."""
    folder = tmp_path_factory.mktemp("launch")
    saved = {name: os.environ.get(name) for name in ("T5PEFT_SHARED", "OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME")}
    os.environ.update(T5PEFT_SHARED=str(shared_dir), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    try:
        config = write_experiment(folder, train="nproc_per_node = 2")
        start = time.monotonic()
        run_compare(config, folder / "out", progress=False, say=lambda _: None)
        print(f"two-rank compare: {time.monotonic() - start:.1f} s")  # shown by -rP
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    run = RunFolder(folder / "out" / "runs" / RUN)
    values = json.loads(run.request.read_text())
    reference = folder / "one-process"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran
    try:
        train(TrainConfig(**{**values, "output": str(reference), "resume": False}))
    finally:
        torch.set_num_threads(threads)
    return folder, run, reference


def test_a_run_on_two_processes_trains_what_one_process_trains(two_rank_compare):
    """Weights and losses as the one-process run within test_distributed's tolerances; results.json (and the
    comparison's results) say world size 2; the log is rank 0's alone; the stretch records 2 processes."""
    folder, run, reference = two_rank_compare
    recorded = json.loads(run.results.read_text())
    assert recorded["distribution"] == {"world_size": 2, "strategy": "ddp", "backend": "gloo"}
    assert_same_training(reference, run.root)
    log = run.log.read_text()
    assert "(rank 0 of 2" in log and "rank 1" not in log, log
    assert log.count("step 4/4") == 1, log  # one rank's log points
    results = json.loads((folder / "out" / RESULTS_FILE).read_text())
    (entry,) = results["runs"]
    assert entry["distribution"]["world_size"] == 2
    assert [s["processes"] for s in entry["device_share"]["stretches"]] == [2]
    assert entry["device_share"]["threads"] == [1]


def test_another_nproc_per_node_does_not_reuse_the_finished_run(two_rank_compare, launch_env):
    folder, run, _ = two_rank_compare
    one = write_experiment(folder, name="one.toml")
    with pytest.raises(ExperimentError, match=r"lora-seed0: nproc_per_node 2 -> 1 \(the processes it trained on\)"):
        run_compare(one, folder / "out", progress=False, say=lambda _: None)
    assert json.loads(run.results.read_text())["distribution"]["world_size"] == 2  # left as it was


# ---------------------------------------------------------------------------------------------------------
# compare --merge


def test_compare_merge_is_report_of_the_folders(two_rank_compare, tmp_path, capsys):
    folder, _, _ = two_rank_compare
    assert main(["compare", "--merge", str(folder / "out"), "--output", str(tmp_path / "merged")]) == 0
    assert main(["report", str(folder / "out"), "--output", str(tmp_path / "reported")]) == 0
    merged = json.loads((tmp_path / "merged" / RESULTS_FILE).read_text())
    reported = json.loads((tmp_path / "reported" / RESULTS_FILE).read_text())
    assert [(r["method"], r["seed"]) for r in merged["runs"]] == [("lora", 0)] and merged["not_finished"] == []
    assert merged["runs"] == reported["runs"] and merged["summary"] == reported["summary"]


def _fake_share(folder: Path, seeds: list[int]) -> Path:
    folder.mkdir(parents=True)
    description = {"name": "p", "description": "", "seeds": seeds, "methods": [], "train": {}, "plan_runs": []}
    (folder / EXPERIMENT_FILE).write_text(json.dumps(description))
    return folder


def test_compare_merge_refuses_what_report_refuses_in_one_line(tmp_path, capsys):
    first, other = _fake_share(tmp_path / "a", [0]), _fake_share(tmp_path / "b", [0, 1])
    output = tmp_path / "merged"
    assert main(["compare", "--merge", str(first), str(other), "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another plan" in err[0] and "seeds" in err[0], err
    assert main(["compare", "--merge", str(first), "--config", "x.toml", "--output", str(output)]) == 2
    assert capsys.readouterr().err.strip() == (
        "t5peft compare: error: --merge merges the folders of finished shares; it takes no --config"
    )
    assert main(["compare", "--output", str(output)]) == 2
    assert "--config is required (or --merge DIR..." in capsys.readouterr().err
    assert not output.exists()


# ---------------------------------------------------------------------------------------------------------
# Stopping a run on two processes


def _processes_of(request: Path) -> list[int]:
    """The live processes started for ``request`` (the launcher and its ranks name it on their command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(request).encode() in words and state != "Z":
            pids.append(int(proc.name))
    return pids


def _start_long_compare(folder: Path, shared_dir: Path) -> tuple[subprocess.Popen, RunFolder]:
    write_experiment(folder, train="nproc_per_node = 2", epochs=200)
    env = {**os.environ, "T5PEFT_SHARED": str(shared_dir), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "t5peft.cli", "compare", "--config", "exp.toml", "--output", "out"]
    process = subprocess.Popen(
        [*command, "--no-progress"], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run = RunFolder(folder / "out" / "runs" / RUN)
    deadline = time.monotonic() + 240
    while not (run.checkpoint / "state.json").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run wrote no checkpoint in 240 s"
        time.sleep(0.1)
    assert len(_processes_of(run.request)) == 3  # the launcher and two ranks
    return process, run


def _gone_within(request: Path, seconds: float) -> float:
    start = time.monotonic()
    while _processes_of(request):
        assert time.monotonic() - start < seconds, f"still running: {_processes_of(request)}"
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_and_the_checkpoint_resumes(tmp_path, shared_dir):
    """Ctrl-C to compare: one SIGINT to the launcher, which torchrun passes to both ranks; compare exits 130 and
    says the checkpoint will be resumed; no process of the run is left."""
    process, run = _start_long_compare(tmp_path, shared_dir)
    stdout, stderr = interrupt(process)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert any(line.startswith("interrupted lora seed 0") and "will be resumed" in line for line in stdout.splitlines())
    assert _processes_of(run.request) == []
    log = run.log.read_text()
    assert "interrupted (Ctrl-C)" in log.splitlines()[-2], log[-2000:]  # rank 0's line, then compare's marker


@pytest.mark.slow
def test_a_killed_compare_leaves_no_rank_behind(tmp_path, shared_dir):
    """compare killed (SIGKILL: no chance to stop anything): the launcher sees its parent gone and exits, then
    each rank sees its own parent gone. Measured (2026-12-03, 2 CPU cores): all gone 2.0 s later."""
    process, run = _start_long_compare(tmp_path, shared_dir)
    try:
        process.kill()
        process.communicate(timeout=30)
        seconds = _gone_within(run.request, 30)
        print(f"every process of the run gone {seconds:.1f} s after compare was killed")  # shown by -rP
    finally:
        for pid in _processes_of(run.request):
            os.kill(pid, signal.SIGKILL)
