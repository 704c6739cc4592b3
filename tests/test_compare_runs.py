"""``t5peft compare`` with a tiny random-init T5 and a few real reviews: reuse only with the same settings,
failed and interrupted runs, ``--jobs``, learning-rate sweeps, paths in experiment files, console output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import interrupt
from t5peft.experiments.compare import continue_command, run_compare
from t5peft.experiments.config import ExperimentError, load_experiment
from t5peft.experiments.layout import RESULTS_FILE
from t5peft.experiments.plan import build_requests, check_existing
from t5peft.experiments.pool import count_sharing, parse_devices, worker_environment
from t5peft.experiments.results import SCHEMA_FILE
from t5peft.experiments.share import cpu_thread_share, device_key

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "models" / "t5-tiny"

TRAIN = """\
[train]
model = "{model}"
tokenizer = "${{T5PEFT_SHARED}}/models/t5-small"
data = "${{T5PEFT_SHARED}}/data/imdb"
init = "random"
epochs = {epochs}
batch_size = 8
eval_batch_size = 16
train_size = 16
test_size = 16
validation_size = 16
max_source_length = 32
logs_per_two_epochs = 2
"""


def write_experiment(
    folder: Path, *, methods=("lora",), seeds=(0,), sections: str = "", epochs: int = 1, model: str | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "exp.toml"
    head = f'[experiment]\nname = "tiny"\nmethods = {json.dumps(list(methods))}\nseeds = {list(seeds)}\n\n'
    path.write_text(head + TRAIN.format(model=model or TINY, epochs=epochs) + "\n" + sections)
    return path


@pytest.fixture
def shared_env(monkeypatch, shared_dir):
    monkeypatch.setenv("T5PEFT_SHARED", str(shared_dir))
    return shared_dir


def cli_env(shared_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "T5PEFT_SHARED": str(shared_dir)}


def cli(
    args: list[str], shared_dir: Path, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None, **popen
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "t5peft.cli", "compare", *args]
    env = env or cli_env(shared_dir)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def log_times(log: Path) -> tuple[str, str]:
    """When compare started and ended a run, from the marker lines it writes to the run's log."""
    text = log.read_text()
    started = re.findall(r"=== t5peft compare: \S+ (?:started|resumed from its checkpoint) at (\S+)", text)
    ended = re.findall(r"=== t5peft compare: \S+ (?:finished|failed) at (\S+)", text)
    return started[-1], ended[-1]


# --------------------------------------------------------------------------------------------------
# Reuse: only runs made with the settings the plan asks for now


def test_changed_lr_is_an_error_naming_the_run_and_rerun_changed_reruns_it(tmp_path, shared_env, capsys):
    output = tmp_path / "out"
    config = write_experiment(tmp_path, sections="[methods.lora]\nlr = 1e-3\n")
    run_compare(config, output, progress=False)
    results_before = (output / RESULTS_FILE).read_text()
    experiment_before = (output / "experiment.json").read_text()
    assert json.loads(results_before)["runs"][0]["config"]["lr"] == 1e-3
    capsys.readouterr()
    assert run_compare(config, output, progress=False, say=print).reused == ["lora-seed0"]  # the same plan again
    printed = capsys.readouterr().out
    assert "all 1 runs of the plan are finished and reused; nothing to train" in printed.splitlines()[0]

    config.write_text(config.read_text().replace("lr = 1e-3", "lr = 5e-2"))
    with pytest.raises(ExperimentError) as caught:
        run_compare(config, output, progress=False)
    message = str(caught.value)
    assert "lora-seed0: lr 0.001 -> 0.05" in message and "--rerun-changed" in message
    # nothing was rewritten: no file records lr 0.05 beside results trained at 1e-3
    assert (output / RESULTS_FILE).read_text() == results_before
    assert (output / "experiment.json").read_text() == experiment_before

    capsys.readouterr()
    outcome = run_compare(config, output, progress=False, rerun_changed=True, say=print)
    printed = capsys.readouterr().out
    moved = output / "superseded" / "lora-seed0.1"
    assert outcome.moved == {"lora-seed0": moved} and f"to {moved}" in printed
    old = json.loads((moved / "results.json").read_text())
    assert old["config"]["lr"] == 1e-3  # kept, not deleted
    results = json.loads((output / RESULTS_FILE).read_text())
    assert [r["config"]["lr"] for r in results["runs"]] == [5e-2]
    assert results["runs"][0]["learning_rate"] == 5e-2
    assert json.loads((output / "experiment.json").read_text())["methods"][0]["lr"] == 5e-2
    assert [r.status for r in outcome.runs] == ["finished"]
    assert results["runs"][0]["device_share"]["runs_at_once"] == 1  # one job: the device to itself
    assert "Every run was timed with its device to itself" in (output / "results.md").read_text()


def test_a_backbone_pretrained_again_at_the_same_path_is_a_change(tmp_path, shared_env):
    """Same settings, same model path, but the backbone there was pretrained again: its results are not reused."""
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    (backbone / "config.json").write_text((TINY / "config.json").read_text())
    (backbone / "pretraining.json").write_text(json.dumps({"weights": "pretrained-here", "training": {"steps": 40}}))
    config = write_experiment(tmp_path, model=str(backbone))
    config.write_text(config.read_text().replace('init = "random"', 'init = "pretrained"'))
    (request,) = build_requests(load_experiment(config), tmp_path / "out", device="cpu", compile=None)
    request.folder.root.mkdir(parents=True)
    results = {
        "config": request.config.to_dict(),
        "pretraining": json.loads((backbone / "pretraining.json").read_text()),
    }
    request.folder.results.write_text(json.dumps(results))
    assert check_existing([request]) == []
    (backbone / "pretraining.json").write_text(json.dumps({"weights": "pretrained-here", "training": {"steps": 80}}))
    [(changed, differences)] = check_existing([request])
    assert changed is request and differences == [
        f"the backbone in {backbone} was pretrained again since (its pretraining.json differs)"
    ]


def test_partial_runs_and_command_line_overrides_are_checked_too(tmp_path, shared_env):
    output = tmp_path / "out"
    config = write_experiment(tmp_path, methods=("lora", "ia3"), sections="[methods.lora]\nlr = 1e-3\n")
    requests = build_requests(load_experiment(config), output, device="cpu", compile=None)
    lora, ia3 = requests
    assert lora.config.device == "cpu" and lora.config.compile == "off"  # auto resolved to what runs

    # a partial run (run_config.json, no results) made with another lr and other method options
    lora.folder.root.mkdir(parents=True)
    saved = {**lora.config.to_dict(), "lr": 3e-3, "method_options": {"r": 4}, "progress": False, "resume": True}
    lora.folder.run_config.write_text(json.dumps(saved))
    # a failed start leaves only compare's own files: nothing to protect, it is started again
    ia3.folder.root.mkdir(parents=True)
    ia3.folder.request.write_text(json.dumps({**ia3.config.to_dict(), "seed": 7}))
    changed = check_existing(requests)
    assert [(r.name, d) for r, d in changed] == [("lora-seed0", ["lr 0.003 -> 0.001", 'method_options {"r": 4} -> {}'])]

    # --compile on against runs made with compile off
    lora.folder.run_config.write_text(json.dumps(lora.config.to_dict()))
    again = build_requests(load_experiment(config), output, device="cpu", compile="on")
    assert [(r.name, d) for r, d in check_existing(again)] == [("lora-seed0", ['compile "off" -> "on"'])]
    with pytest.raises(ExperimentError, match=r"lora-seed0: compile \"off\" -> \"on\""):
        run_compare(config, output, device="cpu", compile="on", progress=False)
    assert not (output / "superseded").exists()


# --------------------------------------------------------------------------------------------------
# Logs, failed runs, --no-progress lines, the closing table


def test_failed_run_is_one_line_the_others_finish_and_compare_exits_non_zero(tmp_path, shared_dir):
    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    config = write_experiment(tmp_path, methods=("ia3", "lora"), sections=f'[methods.ia3]\ntokenizer = "{empty}"\n')
    done = cli(["--config", "exp.toml", "--output", "out", "--no-progress"], shared_dir, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    log = tmp_path / "out" / "runs" / "ia3-seed0" / "run.log"
    failed = [line for line in done.stdout.splitlines() if "ia3" in line and "FAILED" in line]
    assert len(failed) == 1 and f"log: {log.relative_to(tmp_path)}" in failed[0], done.stdout
    assert "tokenizer" in failed[0]  # the run's own one-line error
    assert "error: " in log.read_text()
    finished = [line for line in done.stdout.splitlines() if line.startswith("done lora seed 0: test accuracy ")]
    assert len(finished) == 1 and " s training, " in finished[0], done.stdout
    assert "| lora |" in done.stdout and "outputs:" in done.stdout and str(Path("out") / RESULTS_FILE) in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("t5peft compare: error: 1 of 2 run(s) failed: ia3-seed0")
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert results["not_finished"] == ["ia3-seed0"] and [r["method"] for r in results["runs"]] == ["lora"]
    assert "Not finished, so not in this report: ia3-seed0." in (tmp_path / "out" / "results.md").read_text()
    assert config.exists()


# --------------------------------------------------------------------------------------------------
# --jobs 2: a sweep in parallel, progress bars on, the shared compile cache, each worker's share of the CPU


def two_cores() -> list[int]:
    """Two of the cores this process may use, or a skip: the share of each of 2 workers is then 1 thread on any
    machine, while torch on its own would give each of them both."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity (Linux) to give compare two cores")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    return cores[:2]


def test_jobs_two_runs_a_sweep_in_parallel_and_chooses_on_validation(tmp_path, shared_dir):
    jsonschema = pytest.importorskip("jsonschema")
    write_experiment(tmp_path, sections="[methods.lora]\nlr = [1e-3, 3e-2]\n")
    cores = two_cores()
    env = {k: v for k, v in cli_env(shared_dir).items() if k not in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS")}
    started = time.time()
    done = cli(
        ["--config", "exp.toml", "--output", "out", "--jobs", "2"],
        shared_dir,
        cwd=tmp_path,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),  # compare, and its workers, on two cores
    )
    elapsed = time.time() - started
    assert done.returncode == 0, done.stdout + done.stderr
    runs = tmp_path / "out" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["lora-lr0.001-seed0", "lora-lr0.03-seed0"]
    (start_a, end_a), (start_b, end_b) = (log_times(runs / name / "run.log") for name in sorted(os.listdir(runs)))
    assert start_a < end_b and start_b < end_a, "the two runs did not overlap in time"
    cache = (tmp_path / "out" / "compile-cache").resolve()
    for name in os.listdir(runs):
        header = (runs / name / "run.log").read_text()
        assert f"TORCHINDUCTOR_CACHE_DIR={cache}" in header
        assert "TORCHINDUCTOR_FX_GRAPH_CACHE=1" in header and "TORCHINDUCTOR_AUTOGRAD_CACHE=1" in header
    lines = [line for line in done.stdout.splitlines() if line.startswith("done lora seed 0, lr ")]
    assert len(lines) == 2, done.stdout
    assert "compare tiny: 100%" in done.stderr and "\x1b[A" not in done.stderr  # no job lines off a terminal

    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    sweep = results["sweeps"]["lora"]
    values = {v["learning_rate"]: v for v in sweep["values"]}
    assert set(values) == {1e-3, 3e-2} and sweep["complete"]
    best = max(values.values(), key=lambda v: (v["validation_accuracy"]["mean"], -v["validation_loss"]["mean"]))
    assert sweep["chosen_learning_rate"] == best["learning_rate"]
    assert results["summary"]["lora"]["learning_rate"] == best["learning_rate"]
    assert f"| lora | {best['learning_rate']:g}* |" in done.stdout
    assert elapsed < 600

    # The two CPU workers shared the two cores, one thread each, and every output says they shared the device.
    for run in results["runs"]:
        share = run["device_share"]
        assert (share["runs_at_once"], share["threads"]) == (2, [1]), share
        [stretch] = share["stretches"]
        assert (stretch["device"], stretch["jobs"], stretch["cores"], stretch["status"]) == ("cpu", 2, 2, "finished")
        assert run["environment"]["device_name"].endswith(", 1 threads")  # what torch in the worker used
    for name in os.listdir(runs):
        assert "OMP_NUM_THREADS=1" in (runs / name / "run.log").read_text()
    summary_share = results["summary"]["lora"]["device_share"]
    assert summary_share == {"runs_at_once": 2, "threads": [1], "unrecorded": 0}
    note = "Timed while other runs of the plan trained on the same device (lora: up to 2 runs at once on the device, "
    note += "1 CPU thread each)"
    table = (tmp_path / "out" / "results.md").read_text()
    assert note in table and note in done.stdout
    row = next(line for line in table.splitlines() if line.startswith("| lora |"))
    assert row.count(" † |") == 2, row  # training time and examples/s
    from t5peft.experiments.figures import build_figure

    cost_ax = build_figure(results).axes[3]
    assert "every method timed while runs shared the device (up to 2 runs at once on the device" in " ".join(
        cost_ax.get_title().split()
    )
    assert [t.get_text() for t in cost_ax.texts if t.get_text() == "†"] == ["†"]


# --------------------------------------------------------------------------------------------------
# Ctrl-C


def _start(args: list[str], shared_dir: Path, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "t5peft.cli", "compare", *args]
    return subprocess.Popen(
        command, cwd=cwd, env=cli_env(shared_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``path`` exists; a process that ended first fails the test, one still running at the deadline is killed."""
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        if time.time() >= deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


@pytest.mark.slow  # 31 s here; Ctrl-C before training and train's own Ctrl-C tests stay in the default suite
def test_ctrl_c_names_the_run_keeps_its_checkpoint_and_the_same_command_resumes_it(tmp_path, shared_dir):
    write_experiment(tmp_path, epochs=6)
    args = ["--config", "exp.toml", "--output", "out", "--no-progress"]
    process = _start(args, shared_dir, tmp_path)
    run = tmp_path / "out" / "runs" / "lora-seed0"
    _wait_for(run / "checkpoint" / "state.json", process)
    stdout, stderr = interrupt(process)
    assert not (run / "results.json").exists(), "the run finished before it could be interrupted"
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    line = next(line for line in stdout.splitlines() if line.startswith("interrupted lora seed 0"))
    assert re.search(r"its checkpoint after epoch \d+ of 6 will be resumed", line), line
    assert "Continue with: t5peft compare --config exp.toml --output out --no-progress" in stderr
    epochs_done = json.loads((run / "checkpoint" / "state.json").read_text())["position"]["epochs_done"]

    again = cli(args, shared_dir, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    log = (run / "run.log").read_text()
    assert "lora-seed0 interrupted at" in log and "lora-seed0 resumed from its checkpoint at" in log
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["epoch"] == 6 and epochs_done < 6
    assert [m["step"] for m in metrics] == list(range(2, 13, 2))  # one log point per epoch, none lost or doubled
    stretches = json.loads((run / "device_share.json").read_text())["stretches"]
    assert [s["status"] for s in stretches] == ["interrupted", "finished"]  # both count in its training time


def test_ctrl_c_before_training_leaves_no_run_folder(tmp_path, shared_dir):
    write_experiment(tmp_path)
    process = _start(["--config", "exp.toml", "--output", "out", "--no-progress"], shared_dir, tmp_path)
    run = tmp_path / "out" / "runs" / "lora-seed0"
    _wait_for(run / "request.json", process)
    stdout, stderr = interrupt(process)
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "before it began training; its folder was removed" in stdout
    assert not run.exists()


# --------------------------------------------------------------------------------------------------
# Paths in an experiment file


def test_relative_paths_are_taken_from_the_experiment_files_folder(tmp_path, monkeypatch, shared_dir):
    monkeypatch.delenv("T5PEFT_SHARED", raising=False)
    checkout = tmp_path / "checkout"
    (checkout / "configs" / "models").mkdir(parents=True)
    (checkout / "configs" / "models" / "tiny").symlink_to(TINY)
    (tmp_path / "shared").symlink_to(shared_dir)  # the shared folder beside the checkout
    config = write_experiment(
        checkout / "configs",
        model="models/tiny",
        sections='[methods.lora]\ntest_data = "../data.csv"\n',
    )
    (checkout / "data.csv").write_text("text,label\nfine,1\nbad,0\n")
    monkeypatch.chdir(tmp_path)  # anywhere else
    experiment = load_experiment(config)
    assert experiment.train["model"] == str((checkout / "configs" / "models" / "tiny").resolve())
    assert experiment.train["tokenizer"] == str((tmp_path / "shared").resolve() / "models" / "t5-small")
    assert experiment.methods[0].overrides["test_data"] == str((checkout / "data.csv").resolve())
    assert experiment.shared == str((tmp_path / "shared").resolve())


@pytest.mark.parametrize(
    ("train_line", "message"),
    [
        pytest.param(
            'model = "models/nope"', r"exp.toml \[train\] model: models/nope \(= .*\) does not exist", id="model"
        ),
        pytest.param('data = "../imdb.csv"', r"exp.toml \[train\] data: ../imdb.csv .* does not exist", id="data"),
        pytest.param(
            'data = "${T5PEFT_SHARED}/nope"',
            r"\[train\] data: \$\{T5PEFT_SHARED\}/nope \(= .*/nope\) does not exist",
            id="shared",
        ),
    ],
)
def test_a_missing_path_names_the_file_and_the_key(tmp_path, shared_env, train_line, message):
    (tmp_path / "models").mkdir()
    key = train_line.split(" = ")[0]
    config = write_experiment(tmp_path)
    text = re.sub(rf"^{key} = .*$", train_line, config.read_text(), count=1, flags=re.M)
    config.write_text(text)
    with pytest.raises(ExperimentError, match=message):
        load_experiment(config)


def test_shared_folder_not_found_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("T5PEFT_SHARED", raising=False)
    config = write_experiment(tmp_path / "deep")
    if any((p.parent / "shared").is_dir() for p in (config.parent, *config.parent.parents)):
        pytest.skip("a shared folder exists above the temporary folder")
    with pytest.raises(ExperimentError, match=r"T5PEFT_SHARED.* is not set and no shared folder was found"):
        load_experiment(config)


def test_hub_ids_stay_hub_ids(tmp_path, shared_env):
    config = write_experiment(tmp_path, model="google-t5/t5-small")
    text = config.read_text().replace('data = "${T5PEFT_SHARED}/data/imdb"', 'data = "stanfordnlp/imdb"')
    config.write_text(text)
    experiment = load_experiment(config)
    assert (experiment.train["model"], experiment.train["data"]) == ("google-t5/t5-small", "stanfordnlp/imdb")


# --------------------------------------------------------------------------------------------------
# --devices, the worker environment, the continue command


def test_devices_need_cuda_and_map_through_an_inherited_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExperimentError, match="no CUDA GPU"):
        parse_devices("0,1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert parse_devices("1,0") == ["1", "0"]
    with pytest.raises(ExperimentError, match="only 2 CUDA device"):
        parse_devices("0,2")
    with pytest.raises(ExperimentError, match="expected GPU numbers"):
        parse_devices("gpu0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert parse_devices("1") == ["6"]


def test_worker_environment_sets_the_shared_compile_cache_and_its_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    env = worker_environment(tmp_path / "cache", "3")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1" and env["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["PYTHONUNBUFFERED"] == "1"
    assert env["OMP_NUM_THREADS"] == "7"  # no share given: the inherited setting stays
    shared = worker_environment(tmp_path / "cache", None, threads=2)
    assert shared["OMP_NUM_THREADS"] == shared["RAYON_NUM_THREADS"] == "2"


@pytest.mark.parametrize(
    ("jobs", "cores", "inherited", "threads"),
    [
        pytest.param(1, 16, None, None, id="one-job-keeps-its-environment"),
        pytest.param(2, 2, None, 1, id="two-jobs-two-cores"),
        pytest.param(2, 16, None, 8, id="two-jobs-sixteen-cores"),
        pytest.param(3, 16, None, 5, id="rounded-down"),
        pytest.param(4, 2, None, 1, id="at-least-one"),
        pytest.param(2, 16, "2", 2, id="a-lower-user-setting-is-kept"),
        pytest.param(2, 16, "32", 8, id="a-higher-user-setting-is-capped"),
    ],
)
def test_each_cpu_worker_gets_its_share_of_the_cores(monkeypatch, jobs, cores, inherited, threads):
    if inherited is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", inherited)
    assert cpu_thread_share(jobs, cores) == threads


def test_runs_share_a_device_only_with_runs_on_the_same_device():
    def launch(device):
        return SimpleNamespace(device=device, runs_at_once=1)

    gpu0, gpu1 = launch(device_key("cuda", "0")), launch(device_key("cuda", "1"))
    count_sharing(gpu1, [gpu0])
    assert (gpu0.runs_at_once, gpu1.runs_at_once) == (1, 1)  # --devices 0,1: one run per GPU
    second_on_gpu0 = launch(device_key("cuda", "0"))
    count_sharing(second_on_gpu0, [gpu0, gpu1])
    assert (gpu0.runs_at_once, gpu1.runs_at_once, second_on_gpu0.runs_at_once) == (2, 1, 2)
    first, second = launch(device_key("cpu", None)), launch(device_key("cpu", None))
    count_sharing(second, [first])
    third = launch(device_key("cpu", None))
    count_sharing(third, [second])  # the first one has ended: it keeps the most it saw
    assert (first.runs_at_once, second.runs_at_once, third.runs_at_once) == (2, 2, 2)


def test_continue_command_repeats_the_settings_that_matter():
    command = continue_command(
        Path("my exp.toml"), Path("out"), device="cpu", compile="off", jobs=2, devices=None, progress=False
    )
    assert (
        command
        == "t5peft compare --config 'my exp.toml' --output out --device cpu --compile off --jobs 2 --no-progress"
    )
