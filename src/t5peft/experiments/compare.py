"""``t5peft compare``: run every (method, lr, seed) of an experiment file, then write the report.

The steps, each in a module of its own:

1. the plan (:mod:`.plan`): one request per run, every existing run folder checked against it (reused,
   resumed, or an error naming what changed; ``rerun_changed`` moves the old folder aside);
2. the runs (:mod:`.pool`): worker processes, ``jobs`` at a time, over the ``devices`` when given, each
   with its share of the CPU (:mod:`.share`), their output in each run's ``run.log``;
3. what is printed (:mod:`.console`): progress, one line per finished, failed or interrupted run, the table;
4. the report (:mod:`.report`): results JSON, table and figures, rewritten from the run folders after every
   finished run.

One ``compare`` at a time per output folder (a lock). A failed run prints one line (the run, its last error
line, its log) and the others go on (a failure is usually one method's, and the other runs' results stay
useful); ``compare`` reports the failures at the end and exits non-zero. Ctrl-C stops the runs in flight,
says which were interrupted and what will be resumed, and prints the command that continues.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.lock import FolderLock
from ..errors import T5PeftError
from .config import ExperimentError, load_experiment
from .console import Console, interrupted_line, log, print_summary, shown
from .layout import COMPILE_CACHE, EXPERIMENT_FILE
from .plan import (
    Request,
    build_requests,
    changed_message,
    check_existing,
    finished,
    move_aside,
    settle_interrupted,
    to_do,
)
from .pool import Launch, RunOutcome, WorkerPool, parse_devices
from .report import write_report
from .shards import parse_shard, select_share

Say = Callable[[str], None]


class CompareInterrupted(T5PeftError):
    """Ctrl-C: the message says what was interrupted and how to continue (exit 130)."""

    exit_code = 130


class RunsFailed(ExperimentError):
    """Some runs failed; the others finished and are in the report."""


@dataclass
class CompareOutcome:
    results: Path | None
    outputs: list[Path]
    runs: list[RunOutcome] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    moved: dict[str, Path] = field(default_factory=dict)


def continue_command(
    config_file: Path,
    output: Path,
    *,
    device: str | None,
    compile: str | None,
    jobs: int,
    devices: str | None,
    progress: bool,
    tensorboard: str | Path | None = None,
    shard: str | None = None,
) -> str:
    parts = ["t5peft", "compare", "--config", str(config_file), "--output", str(output)]
    if tensorboard is not None:
        parts += ["--tensorboard", str(tensorboard)]
    for flag, value in (("--device", device), ("--compile", compile), ("--devices", devices), ("--shard", shard)):
        if value is not None:
            parts += [flag, value]
    if jobs != 1 and not (devices and jobs == len(devices.split(","))):
        parts += ["--jobs", str(jobs)]
    if not progress:
        parts.append("--no-progress")
    return shlex.join(parts)


def run_compare(
    config_file: str | Path,
    output: str | Path,
    device: str | None = None,
    progress: bool = True,
    *,
    jobs: int | None = None,
    devices: str | None = None,
    compile: str | None = None,
    rerun_changed: bool = False,
    tensorboard: str | Path | None = None,
    shard: str | None = None,
    say: Say | None = None,
) -> CompareOutcome:
    """Run the plan of ``config_file`` into ``output`` (see the module doc); ``say`` prints a line (None: the
    ``t5peft.compare`` logger, see :mod:`.console`).

    ``device`` / ``compile``: None (or ``"auto"`` for device) keeps the experiment file's setting.
    ``tensorboard``: a folder for the runs' TensorBoard events (None: the experiment file's ``tensorboard`` key).
    ``shard`` (``"i/N"``): only the i-th of N shares of the plan's runs (:mod:`.shards`).
    Raises :class:`RunsFailed` after the other runs when some failed, :class:`CompareInterrupted` on Ctrl-C.
    """
    config_file, output = Path(config_file), Path(output)
    info: Say = say or log.info
    experiment = load_experiment(config_file)
    share = parse_shard(shard) if shard is not None else None
    visible = parse_devices(devices)
    if visible is not None and device is not None and device not in ("auto", "cuda"):
        raise ExperimentError(f"--devices {devices} spreads runs over GPUs; it cannot be used with --device {device}")
    nproc = max(experiment.nproc_per_node(run.method, run.task) for run in experiment.runs())
    jobs = jobs if jobs is not None else (max(1, len(visible) // nproc) if visible else 1)
    if jobs < 1:
        raise ExperimentError(f"--jobs must be at least 1, got {jobs}")
    if visible is not None and nproc > 1 and jobs * nproc > len(visible):
        raise ExperimentError(
            f"--devices {devices} gives {len(visible)} GPU(s); {jobs} run(s) at once (--jobs) on nproc_per_node = "
            f"{nproc} processes each need {jobs * nproc}, one per rank"
        )
    device = "cuda" if visible is not None else (None if device in (None, "auto") else device)
    tensorboard_root = Path(tensorboard) if tensorboard is not None else experiment.tensorboard_root(output)
    if tensorboard_root is not None:
        from ..engine.tensorboard import check_available

        check_available()  # before any run starts, not once per run
    requests = build_requests(
        experiment, output, device=device, compile=compile, progress=progress, tensorboard=tensorboard_root
    )
    plan_runs = [r.name for r in requests]
    if share is not None:
        requests = select_share(requests, *share)
    with FolderLock(output, "t5peft compare"):
        outcome = CompareOutcome(None, [])
        changed = check_existing(requests)
        if changed and not rerun_changed:
            raise ExperimentError(changed_message(changed, config_file, output))
        for request, diffs in changed:
            target = move_aside(request.folder.root, output)
            outcome.moved[request.name] = target
            info(
                f"moved {shown(request.folder.root)} aside to {shown(target)} (made with {'; '.join(diffs)}); "
                "running it again"
            )
        description = {
            **experiment.describe(),
            "command_line": {"device": device, "compile": compile},
            "plan_runs": plan_runs,
        }
        if share is not None:
            description["shard"] = {"index": share[0], "count": share[1], "runs": [r.name for r in requests]}
        (output / EXPERIMENT_FILE).write_text(json.dumps(description, indent=2) + "\n")
        outcome.reused = [r.name for r in finished(requests)]
        if outcome.reused:
            left = len(requests) - len(outcome.reused)
            info(
                f"all {len(requests)} runs of the {'plan' if share is None else 'share'} are finished and reused; "
                "nothing to train (the report is "
                "rewritten from their folders)"
                if not left
                else f"{len(outcome.reused)} of the {len(requests)} runs are finished and reused; {left} to run"
            )
        _backfill_tensorboard(finished(requests), info)
        command = continue_command(
            config_file,
            output,
            device=device,
            compile=compile,
            jobs=jobs,
            devices=devices,
            progress=progress,
            tensorboard=tensorboard,
            shard=shard,
        )
        pool = WorkerPool(jobs, visible, (output / COMPILE_CACHE).resolve(), progress)
        _run_plan(Plan(description, output, requests), pool, outcome, command, say)
        return outcome


def _backfill_tensorboard(reused: list[Request], info: Say) -> None:
    """Reused runs that finished without TensorBoard events get them now, so the plan opens as one set."""
    from ..train.loop import write_tensorboard_of_finished_run

    for request in reused:
        board = request.config.tensorboard
        if board and not Path(board).exists():
            write_tensorboard_of_finished_run(request.folder.root, Path(board))
            info(
                f"{request.name} had finished without TensorBoard events: written now from its metrics.jsonl and "
                f"results.json (without per-point throughput and memory) -> {shown(Path(board))}"
            )


@dataclass
class Plan:
    """The plan as run: its description (``experiment.json``), its output folder and every request."""

    description: dict[str, Any]
    output: Path
    requests: list[Request]

    def write_report(self) -> Path:
        done = [r.folder.root for r in finished(self.requests)]
        missing = [r.name for r in to_do(self.requests)]
        return write_report(self.description, self.output, done, missing=missing)


class _Listener(Console):
    """The console, and the report rewritten after every finished run."""

    def __init__(self, plan: Plan, jobs: int, progress: bool, say: Say | None) -> None:
        done = len(finished(plan.requests))
        super().__init__(f"compare {plan.description['name']}", len(plan.requests), done, jobs, progress, say)
        self.plan = plan
        self.failed: list[str] = []

    def ended(self, launch: Launch, outcome: RunOutcome) -> None:
        super().ended(launch, outcome)
        if outcome.status == "finished":
            self.plan.write_report()
        else:
            self.failed.append(outcome.name)


def _run_plan(plan: Plan, pool: WorkerPool, outcome: CompareOutcome, command: str, say: Say | None) -> None:
    """Run what is left of the plan; ``say``: where lines go (None: the logger, failures at WARNING)."""
    info, warn = say or log.info, say or log.warning
    todo = to_do(plan.requests)
    listener = _Listener(plan, pool.jobs, pool.progress, say)
    try:
        result = pool.run(todo, listener)
    finally:
        listener.close()
    outcome.runs = result.outcomes
    if result.interrupted:
        for launch in result.interrupted:
            warn(interrupted_line(launch.request, settle_interrupted(launch.request, launch.created_folder)))
        if finished(plan.requests):
            plan.write_report()
        raise CompareInterrupted(
            f"interrupted; finished runs are kept and the next compare reuses them. Continue with: {command}"
        )
    if not finished(plan.requests):
        warn(f"no finished runs: nothing to report in {plan.output}")
    else:
        outcome.results = plan.write_report()
        boards = {Path(r.config.tensorboard).parent for r in plan.requests if r.config.tensorboard}
        outcome.outputs = print_summary(plan.output, info, boards.pop() if len(boards) == 1 else None)
    if listener.failed:
        raise RunsFailed(
            f"{len(listener.failed)} of {len(todo)} run(s) failed: {', '.join(listener.failed)} "
            "(each run's folder holds its run.log)"
        )
