"""``t5peft compare``: run every (method, lr, seed) of an experiment file, then write the report.

Each run is its own process (``python -m t5peft.experiments.worker``), so its peak memory is its own and a
crash or kill loses only that run; ``jobs`` of them run at once, spread over ``devices`` (one
``CUDA_VISIBLE_DEVICES`` per worker) when given. All workers share one compile cache
(``<output>/compile-cache``, torch's FX-graph and AOT-autograd caches on), so the runs of a plan compile once.

Reuse is checked, never assumed. Before anything runs, every run folder already in ``output`` is compared
with the settings the plan now asks for (the whole run config, except ``progress`` and ``resume``, and
``output`` for a finished run): a difference is an error naming the run and the settings, unless
``rerun_changed``, which moves the old folder to ``<output>/superseded/`` (nothing is deleted) and runs it
again. A finished run (``results.json``) is then reused, a partial one (``run_config.json``) is resumed from
its checkpoint; a folder holding only compare's own ``request.json`` and ``run.log`` (a run that failed
before training began) has nothing to reuse and is started again with the settings asked for now.

Each run's console output goes to ``run.log`` in its folder. A failed run prints one line (the run, its last
error line, its log) and the others go on (a failure is usually one method's, and the other runs' results
stay useful); ``compare`` reports the failures at the end and exits non-zero.
Ctrl-C stops the runs in flight, says which were interrupted and what will be resumed, and prints the command
that continues. The aggregate files are rewritten from the run folders after every finished run.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from ..engine.layout import RunFolder, changed_settings
from ..engine.settings import comparable
from ..engine.state import last_logged_step, read_position
from ..errors import T5PeftError
from ..train.loop import pretraining_record
from ..train.settings import TrainConfig
from .config import Experiment, ExperimentError, PlannedRun, format_lr, load_experiment
from .report import FIGURE_FILE, MEMORY_FIGURE_FILE, RESULTS_FILE, TABLE_FILE, collect_results, render_report

SUPERSEDED = "superseded"
COMPILE_CACHE = "compile-cache"
EXPERIMENT_FILE = "experiment.json"
LOCK_FILE = ".compare.lock"
INTERRUPT_GRACE_S = 60.0


class CompareInterrupted(T5PeftError):
    """Ctrl-C: the message says what was interrupted and how to continue (exit 130)."""

    exit_code = 130


class RunsFailed(ExperimentError):
    """Some runs failed; the others finished and are in the report."""


def run_dir(output: Path, method: str, seed: int) -> Path:
    """The folder of a (method, seed) run without a learning-rate sweep."""
    return Path(output) / "runs" / f"{method.replace('+', '_')}-seed{seed}"


# --------------------------------------------------------------------------------------------------
# The plan: one TrainConfig per run, with the command line's device and compile settings


@dataclass
class Request:
    run: PlannedRun
    folder: RunFolder
    config: TrainConfig

    @property
    def name(self) -> str:
        return self.run.name

    def describe(self) -> str:
        lr = f", lr {format_lr(self.config.learning_rate)}" if self.run.method.is_sweep else ""
        return f"{self.run.method.name} seed {self.run.seed}{lr}"


def resolve_device_setting(device: str) -> str:
    """``auto`` becomes the device it means here, so each run records what it used."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_compile_setting(compile: str, device: str) -> str:
    from ..engine.settings import COMPILE_SETTINGS

    if compile not in COMPILE_SETTINGS:
        raise ExperimentError(f"--compile must be one of {', '.join(COMPILE_SETTINGS)}, got {compile!r}")
    if compile != "auto":
        return compile
    return "on" if device.startswith("cuda") else "off"


def build_requests(
    experiment: Experiment,
    output: Path,
    *,
    device: str | None = None,
    compile: str | None = None,
    progress: bool = True,
) -> list[Request]:
    """Every run of the plan with its settings; ``device`` / ``compile`` (None: the experiment's) override."""
    requests = []
    for run in experiment.runs():
        folder = RunFolder(output.resolve() / "runs" / run.name)
        cfg = experiment.run_config(run.method, run.seed, folder.root, run.lr)
        cfg.device = resolve_device_setting(device or cfg.device)
        cfg.compile = resolve_compile_setting(compile or cfg.compile, cfg.device)
        cfg.progress = progress
        cfg.resume = False
        requests.append(Request(run, folder, cfg))
    return requests


# --------------------------------------------------------------------------------------------------
# Existing run folders against the plan


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config with today's defaults filled in (a setting added since keeps its old behaviour)."""
    return comparable(TrainConfig, values)


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


_ABSENT = object()


def saved_settings(folder: RunFolder) -> dict[str, Any] | None:
    """The settings a run folder's results (or partial run) were made with; None for a folder with neither."""
    if folder.results.is_file():
        return json.loads(folder.results.read_text(encoding="utf-8"))["config"]
    if folder.run_config.is_file():
        return json.loads(folder.run_config.read_text(encoding="utf-8"))
    return None


def settings_differences(saved: dict[str, Any], wanted: TrainConfig, finished: bool) -> list[str]:
    """``key saved -> wanted`` for every setting that differs (``output`` only matters to a run to resume)."""
    mine, theirs = _comparable(wanted.to_dict()), _comparable(saved)
    keys = changed_settings(theirs, mine, also_ignored={"output"} if finished else ())
    return [f"{key} {_show(theirs.get(key, _ABSENT))} -> {_show(mine.get(key, _ABSENT))}" for key in keys]


def backbone_difference(request: Request) -> list[str]:
    """A finished run on a backbone pretrained here, whose folder now holds another pretraining (same path)."""
    model = Path(request.config.model)
    if not request.folder.results.is_file() or not model.is_dir():
        return []
    saved = json.loads(request.folder.results.read_text(encoding="utf-8")).get("pretraining")
    now = pretraining_record(request.config)
    if saved == now:
        return []
    return [f"the backbone in {model} was pretrained again since (its pretraining.json differs)"]


def check_existing(requests: list[Request]) -> list[tuple[Request, list[str]]]:
    """The runs whose folders hold results or a partial run made with other settings, with what differs."""
    changed = []
    for request in requests:
        try:
            saved = saved_settings(request.folder)
        except (json.JSONDecodeError, KeyError, OSError) as err:
            changed.append((request, [f"its settings cannot be read ({type(err).__name__}: {err})"]))
            continue
        if saved is None:
            continue
        differences = settings_differences(saved, request.config, request.folder.results.is_file())
        differences += backbone_difference(request)
        if differences:
            changed.append((request, differences))
    return changed


def move_aside(folder: Path, output: Path) -> Path:
    """Move a run folder to ``<output>/superseded/<name>.<n>`` (the first free n); returns where it went."""
    target_root = output / SUPERSEDED
    target_root.mkdir(parents=True, exist_ok=True)
    n = 1
    while (target_root / f"{folder.name}.{n}").exists():
        n += 1
    target = target_root / f"{folder.name}.{n}"
    folder.rename(target)
    return target


def _changed_message(changed: list[tuple[Request, list[str]]], config_file: Path, output: Path) -> str:
    lines = [
        f"{len(changed)} run(s) in {output} were made with other settings than {config_file} now asks for "
        "(saved -> now):"
    ]
    lines += [f"  {request.name}: {'; '.join(diffs)}" for request, diffs in changed]
    lines.append(
        "pass --rerun-changed to run them again (their folders are moved to "
        f"{output / SUPERSEDED}, nothing is deleted), or choose another --output"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Workers


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LogPump(threading.Thread):
    """Copies a worker's output to its log file. A progress bar's redraws (``\\r``) keep only the last state in
    the log; the latest text is kept for the console (``latest``) and the last whole line (``last_line``)."""

    def __init__(self, stream: IO[bytes], log: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream, self.log = stream, log
        self.latest = ""
        self.last_line = ""
        self._current = ""

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.stream.fileno()
        while chunk := os.read(fd, 65536):
            self._feed(decoder.decode(chunk))
        self._feed(decoder.decode(b"", final=True))
        if self._current.strip():
            self._end_line()
        self.log.flush()

    def _feed(self, text: str) -> None:
        for piece in re.split(r"(\r|\n)", _ANSI.sub("", text)):
            if piece == "\n":
                self._end_line()
            elif piece == "\r":
                self._current = ""
            elif piece:
                self._current += piece
                self.latest = self._current.strip() or self.latest
        self.log.flush()

    def _end_line(self) -> None:
        self.log.write(self._current + "\n")
        if self._current.strip():
            self.last_line = self._current.strip()
        self._current = ""


def worker_environment(cache_dir: Path, visible_device: str | None, columns: int | None = None) -> dict[str, str]:
    """The environment of one worker: unbuffered output, the plan's shared compile cache, its GPU."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    env["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    env["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    if visible_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_device
    if columns:
        env["COLUMNS"] = str(columns)
    return env


def parse_devices(devices: str | None) -> list[str] | None:
    """``0,1``: the GPUs (as this process numbers them) to spread the runs over, as CUDA_VISIBLE_DEVICES values."""
    if devices is None:
        return None
    items = [d.strip() for d in devices.split(",")]
    if not items or not all(d.isdigit() for d in items):
        raise ExperimentError(f"--devices {devices!r}: expected GPU numbers separated by commas, e.g. 0,1")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ExperimentError(f"--devices {devices}: this machine has no CUDA GPU that PyTorch can use")
    bad = [d for d in items if int(d) >= count]
    if bad:
        raise ExperimentError(f"--devices {devices}: only {count} CUDA device(s) here (0 to {count - 1})")
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited:  # numbers are this process's view; pass on what they stand for
        visible = [v.strip() for v in inherited.split(",")]
        return [visible[int(d)] for d in items]
    return items


@dataclass
class Launch:
    request: Request
    slot: int
    visible_device: str | None
    process: subprocess.Popen
    pump: LogPump
    log: IO[str]
    started: float
    started_at: str
    created_folder: bool
    resumed: bool
    finished: float | None = None

    def close(self) -> None:
        self.pump.join(timeout=10)
        with contextlib.suppress(OSError):
            self.log.close()


@dataclass
class RunOutcome:
    """When and where each run of this call ran (``slot``, ``visible_device``) and how it ended."""

    name: str
    status: str  # "finished", "failed", "interrupted"
    slot: int
    visible_device: str | None
    started: float
    finished: float
    exit_code: int | None


@dataclass
class CompareOutcome:
    results: Path | None
    outputs: list[Path]
    runs: list[RunOutcome] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    moved: dict[str, Path] = field(default_factory=dict)


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _launch(request: Request, slot: int, visible: str | None, cache_dir: Path, progress: bool) -> Launch:
    folder = request.folder
    created = not folder.root.exists()
    folder.root.mkdir(parents=True, exist_ok=True)
    resumed = folder.run_config.is_file()
    request.config.resume = resumed
    folder.request.write_text(json.dumps(request.config.to_dict(), indent=2) + "\n")
    log = open(folder.log, "a", encoding="utf-8")  # noqa: SIM115 (closed by Launch.close)
    started_at = _now()
    how = "resumed from its checkpoint" if resumed and folder.checkpoint.exists() else "started"
    where = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
    log.write(f"=== t5peft compare: {request.name} {how} at {started_at} (job slot {slot}{where})\n")
    log.flush()
    columns = max(40, shutil.get_terminal_size().columns - len(request.name) - 4) if progress else None
    command = [sys.executable, "-m", "t5peft.experiments.worker", str(folder.request)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=worker_environment(cache_dir, visible, columns),
        start_new_session=True,  # Ctrl-C reaches compare only; it passes one SIGINT to each worker
    )
    pump = LogPump(process.stdout, log)
    pump.start()
    return Launch(request, slot, visible, process, pump, log, time.perf_counter(), started_at, created, resumed)


# --------------------------------------------------------------------------------------------------
# Console


class Console:
    """One bar for the plan and, on a terminal, one line per running job (the worker's own latest output);
    messages print above them. Without a terminal the job lines are left out (each redraw would be a line)."""

    def __init__(self, title: str, total: int, done: int, jobs: int, progress: bool, say) -> None:
        self.progress, self.say = progress, say
        self.live = progress and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=done, desc=title, unit="run", disable=not progress, position=0)
        self.slots = [
            tqdm(total=0, bar_format="{desc}", disable=not self.live, position=i + 1, leave=False) for i in range(jobs)
        ]
        self.shown = [""] * jobs

    def message(self, text: str) -> None:
        if self.progress:
            tqdm.write(text, file=sys.stdout)
        else:
            self.say(text)

    def show(self, slot: int, text: str) -> None:
        if not self.live:
            return
        text = text[: max(20, shutil.get_terminal_size().columns - 1)]
        if text != self.shown[slot]:
            self.shown[slot] = text
            self.slots[slot].set_description_str(text, refresh=True)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        for bar in self.slots:
            bar.close()
        self.bar.close()


def _finished_line(request: Request, seconds: float) -> str:
    results = json.loads(request.folder.results.read_text(encoding="utf-8"))
    test, training = results["test"], results["training"]
    return (
        f"done {request.describe()}: test accuracy {test['accuracy']:.4f} on {test['n']:,} reviews, "
        f"validation {results['validation']['accuracy']:.4f}, {training['seconds']:.1f} s training, "
        f"{seconds:.1f} s in all -> {shown(request.folder.root)}"
    )


def _failed_line(launch: Launch, code: int) -> str:
    cause = launch.pump.last_line[:300] or "no output"
    return f"FAILED {launch.request.describe()} (exit {code}): {cause} -- log: {shown(launch.request.folder.log)}"


def _interrupted_line(launch: Launch) -> str:
    """What an interrupted run left, and what the next compare will do with it; removes a never-started folder."""
    request, folder = launch.request, launch.request.folder
    checkpoint = read_position(folder.checkpoint)
    epochs = None if checkpoint is None else checkpoint.epochs_done
    step = last_logged_step(folder.metrics)
    at = f" (last log point: step {step})" if step is not None else ""
    if folder.results.exists():
        return f"{request.describe()} had finished before it stopped; its results are kept"
    if epochs is not None:
        return (
            f"interrupted {request.describe()}{at}: its checkpoint after epoch {epochs} of "
            f"{request.config.epochs} will be resumed ({shown(folder.checkpoint)})"
        )
    if folder.run_config.exists():
        return f"interrupted {request.describe()}{at}: no checkpoint yet (it saves one per epoch), it starts again"
    names = {p.name for p in folder.root.iterdir()} if folder.root.exists() else set()
    if names <= folder.before_training and (launch.created_folder or names <= folder.compare_files):
        shutil.rmtree(folder.root, ignore_errors=True)
        return f"interrupted {request.describe()} before it began training; its folder was removed"
    return f"interrupted {request.describe()} before it began training; it starts again"


# --------------------------------------------------------------------------------------------------
# The comparison


def continue_command(
    config_file: Path,
    output: Path,
    *,
    device: str | None,
    compile: str | None,
    jobs: int,
    devices: str | None,
    progress: bool,
) -> str:
    parts = ["t5peft", "compare", "--config", str(config_file), "--output", str(output)]
    for flag, value in (("--device", device), ("--compile", compile), ("--devices", devices)):
        if value is not None:
            parts += [flag, value]
    if jobs != 1 and not (devices and jobs == len(devices.split(","))):
        parts += ["--jobs", str(jobs)]
    if not progress:
        parts.append("--no-progress")
    return shlex.join(parts)


@contextlib.contextmanager
def _exclusive(output: Path):
    """One ``compare`` per output folder at a time (two would train the same runs into the same folders)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    with open(output / LOCK_FILE, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise ExperimentError(
                f"{output}: another t5peft compare (pid {holder}) is running into this folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


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
    say=print,
) -> CompareOutcome:
    """Run the plan of ``config_file`` into ``output`` (see the module doc); ``say`` prints a line.

    ``device`` / ``compile``: None (or ``"auto"`` for device) keeps the experiment file's setting.
    Raises :class:`RunsFailed` after the other runs when some failed, :class:`CompareInterrupted` on Ctrl-C.
    """
    config_file, output = Path(config_file), Path(output)
    experiment = load_experiment(config_file)
    visible = parse_devices(devices)
    if visible is not None and device is not None and device not in ("auto", "cuda"):
        raise ExperimentError(f"--devices {devices} spreads runs over GPUs; it cannot be used with --device {device}")
    jobs = jobs if jobs is not None else (len(visible) if visible else 1)
    if jobs < 1:
        raise ExperimentError(f"--jobs must be at least 1, got {jobs}")
    device = "cuda" if visible is not None else (None if device in (None, "auto") else device)
    requests = build_requests(experiment, output, device=device, compile=compile, progress=progress)
    output.mkdir(parents=True, exist_ok=True)
    with _exclusive(output):
        outcome = CompareOutcome(None, [])
        changed = check_existing(requests)
        if changed and not rerun_changed:
            raise ExperimentError(_changed_message(changed, config_file, output))
        for request, diffs in changed:
            target = move_aside(request.folder.root, output)
            outcome.moved[request.name] = target
            say(
                f"moved {shown(request.folder.root)} aside to {shown(target)} (made with {'; '.join(diffs)}); "
                "running it again"
            )
        description = {**experiment.describe(), "command_line": {"device": device, "compile": compile}}
        (output / EXPERIMENT_FILE).write_text(json.dumps(description, indent=2) + "\n")
        todo = [r for r in requests if not r.folder.results.exists()]
        outcome.reused = [r.name for r in requests if r.folder.results.exists()]
        command = continue_command(
            config_file, output, device=device, compile=compile, jobs=jobs, devices=devices, progress=progress
        )
        _run_all(description, requests, todo, output, jobs, visible, progress, say, outcome, command)
        return outcome


def _run_all(
    description: dict[str, Any],
    requests: list[Request],
    todo: list[Request],
    output: Path,
    jobs: int,
    visible: list[str] | None,
    progress: bool,
    say,
    outcome: CompareOutcome,
    command: str,
) -> None:
    console = Console(f"compare {description['name']}", len(requests), len(requests) - len(todo), jobs, progress, say)
    pending = deque(todo)
    active: dict[int, Launch] = {}
    failed: list[str] = []
    cache_dir = (output / COMPILE_CACHE).resolve()
    try:
        with CtrlC() as ctrl_c:
            while (pending or active) and not ctrl_c.pressed:
                for slot in range(jobs):
                    if slot not in active and pending:
                        device = visible[slot % len(visible)] if visible else None
                        active[slot] = _launch(pending.popleft(), slot, device, cache_dir, progress)
                time.sleep(0.1)
                for slot, launch in list(active.items()):
                    console.show(slot, f"  {launch.request.name}: {launch.pump.latest}")
                    code = launch.process.poll()
                    if code is None:
                        continue
                    del active[slot]
                    _finish(launch, code, console, outcome, failed)
                    if code == 0 and launch.request.folder.results.exists():
                        write_aggregate(description, output, requests)
            if ctrl_c.pressed:
                lines = _interrupt(list(active.values()), outcome, ctrl_c)
                active.clear()
                console.close()
                for line in lines:
                    say(line)
                if any(r.folder.results.exists() for r in requests):
                    write_aggregate(description, output, requests)
                raise CompareInterrupted(
                    f"interrupted; finished runs are kept and the next compare reuses them. Continue with: {command}"
                )
    finally:
        for launch in active.values():  # only on an unexpected error: leave no worker behind
            _stop(launch, kill=True)
        console.close()
    _summary(description, output, requests, outcome, say)
    if failed:
        raise RunsFailed(
            f"{len(failed)} of {len(todo)} run(s) failed: {', '.join(failed)} (each run's folder holds its run.log)"
        )


def _finish(launch: Launch, code: int, console: Console, outcome: CompareOutcome, failed: list[str]) -> None:
    launch.close()
    launch.finished = time.perf_counter()
    request = launch.request
    ok = code == 0 and request.folder.results.exists()
    with contextlib.suppress(OSError), open(request.folder.log, "a", encoding="utf-8") as log:
        log.write(f"=== t5peft compare: {request.name} {'finished' if ok else 'failed'} at {_now()} (exit {code})\n")
    status = "finished" if ok else "failed"
    outcome.runs.append(
        RunOutcome(request.name, status, launch.slot, launch.visible_device, launch.started, launch.finished, code)
    )
    if ok:
        console.message(_finished_line(request, launch.finished - launch.started))
    else:
        failed.append(request.name)
        console.message(_failed_line(launch, code))
    console.advance()


def _stop(launch: Launch, kill: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        if kill:
            launch.process.kill()
        else:
            launch.process.send_signal(signal.SIGINT)


class CtrlC:
    """Ctrl-C during the plan sets ``pressed`` (counted) instead of raising, so it never lands halfway through
    starting a worker or writing the report; the loop checks it every 0.1 s. Outside the main thread, where
    Python delivers no signals, it does nothing."""

    def __init__(self) -> None:
        self.pressed = 0
        self._previous: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.pressed += 1

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _interrupt(active: list[Launch], outcome: CompareOutcome, ctrl_c: CtrlC) -> list[str]:
    """Ctrl-C: pass it to each running worker once, wait for them (a second Ctrl-C kills them), report."""
    for launch in active:
        _stop(launch)
    deadline = time.monotonic() + INTERRUPT_GRACE_S
    while ctrl_c.pressed < 2 and time.monotonic() < deadline and any(a.process.poll() is None for a in active):
        time.sleep(0.05)
    lines = []
    for launch in active:
        if launch.process.poll() is None:
            _stop(launch, kill=True)
            launch.process.wait()
        launch.close()
        launch.finished = time.perf_counter()
        with contextlib.suppress(OSError), open(launch.request.folder.log, "a", encoding="utf-8") as log:
            log.write(f"=== t5peft compare: {launch.request.name} interrupted at {_now()}\n")
        outcome.runs.append(
            RunOutcome(
                launch.request.name,
                "interrupted",
                launch.slot,
                launch.visible_device,
                launch.started,
                launch.finished,
                launch.process.returncode,
            )
        )
        lines.append(_interrupted_line(launch))
    return lines


def _summary(description: dict[str, Any], output: Path, requests: list[Request], outcome: CompareOutcome, say) -> None:
    """The table and the paths of the outputs, at the end of every comparison with at least one finished run."""
    if not any(r.folder.results.exists() for r in requests):
        say(f"no finished runs: nothing to report in {output}")
        return
    outcome.results = write_aggregate(description, output, requests)
    outcome.outputs = [
        outcome.results,
        output / TABLE_FILE,
        output / FIGURE_FILE,
        output / MEMORY_FIGURE_FILE,
        output / EXPERIMENT_FILE,
    ]
    say("")
    say((output / TABLE_FILE).read_text(encoding="utf-8").rstrip())
    say("")
    say("outputs:")
    what = (
        "every run, the sweeps and the summary",
        "this table",
        "figure 1: curves, accuracy vs parameters, time and memory",
        "figure 2: memory per method",
        "the plan",
    )
    for path, text in zip(outcome.outputs, what, strict=True):
        say(f"  {path}: {text}")
    say(f"  {output / 'runs'}/: one folder per run, with its run.log")


def write_aggregate(description: dict[str, Any], output: Path, requests: list[Request]) -> Path:
    """Rewrite the results JSON, the table and the figures from the finished run folders of the plan."""
    finished = [r for r in requests if r.folder.results.exists()]
    missing = [r.name for r in requests if not r.folder.results.exists()]
    results = collect_results(description, [r.folder.root for r in finished], missing=missing, root=output)
    path = output / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    render_report(path, output)
    return path
