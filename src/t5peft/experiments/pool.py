"""Runs of a plan as worker processes, ``jobs`` at a time: start, watch, stop on Ctrl-C.

Each run is its own process (``python -m t5peft.experiments.worker``), so its peak memory is its own and a
crash or kill loses only that run; ``jobs`` of them run at once, spread over ``devices`` (one
``CUDA_VISIBLE_DEVICES`` per worker) when given. All workers share one compile cache
(``<output>/compile-cache``, torch's FX-graph and AOT-autograd caches on), so the runs of a plan compile once.
CPU workers running at once get their share of the cores (:mod:`.share`), and every run's folder records how
many runs shared its device.

A worker's output goes to ``run.log`` in its run folder, between marker lines written here (started or
resumed, finished or failed, interrupted). What the pool sees is reported through :class:`PoolEvents`; it
prints nothing itself. Ctrl-C during the plan passes one interrupt to each running worker and waits for them
(a second Ctrl-C, or a minute, kills them); the interrupted launches are returned to the caller.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from .config import ExperimentError
from .plan import Request
from .share import (
    Stretch,
    add_stretch,
    available_cores,
    cpu_thread_share,
    device_key,
    inherited_threads,
    rank_thread_share,
    start_record,
    thread_environment,
)

INTERRUPT_GRACE_S = 60.0
POLL_S = 0.1

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


logger = logging.getLogger("t5peft.compare")


def worker_environment(
    cache_dir: Path, visible_device: str | None, columns: int | None = None, threads: int | None = None
) -> dict[str, str]:
    """The environment of one worker: unbuffered output, the plan's shared compile cache, its GPU, and its
    share of the CPU threads (``threads``; None keeps the inherited settings)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    env["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    env["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    if visible_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible_device
    if columns:
        env["COLUMNS"] = str(columns)
    env.update(thread_environment(threads))
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


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
    device: str  # share.device_key: which runs share a device
    threads: int | None  # CPU threads given (None: the environment's)
    runs_at_once: int = 1  # the most runs on this device at one time since it started (itself included)
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
    runs_at_once: int = 1
    threads: int | None = None


class PoolEvents(Protocol):
    """What the pool reports while it runs (the console and the aggregate files listen)."""

    def running(self, launch: Launch) -> None:
        """Called every poll for each running worker (its latest output is ``launch.pump.latest``)."""

    def ended(self, launch: Launch, outcome: RunOutcome) -> None:
        """A worker exited on its own: finished (``outcome.status``) or failed."""


@dataclass
class PoolResult:
    outcomes: list[RunOutcome] = field(default_factory=list)
    interrupted: list[Launch] = field(default_factory=list)  # Ctrl-C: the launches it stopped


@dataclass
class WorkerPool:
    """``jobs`` worker processes at a time over the ``visible`` GPUs (None: the device each run asks for)."""

    jobs: int
    visible: list[str] | None
    cache_dir: Path
    progress: bool
    cores: int = field(default_factory=available_cores)

    def run(self, todo: list[Request], events: PoolEvents) -> PoolResult:
        """Run every request of ``todo``; returns on the last one's end, or on Ctrl-C with the ones it stopped."""
        result = PoolResult()
        pending = deque(todo)
        active: dict[int, Launch] = {}
        cpu_threads = cpu_thread_share(min(self.jobs, len(todo)), self.cores)
        try:
            with CtrlC() as ctrl_c:
                while (pending or active) and not ctrl_c.pressed:
                    for slot in range(self.jobs):
                        if slot not in active and pending:
                            active[slot] = self._launch(pending.popleft(), slot, cpu_threads, list(active.values()))
                    time.sleep(POLL_S)
                    for slot, launch in list(active.items()):
                        events.running(launch)
                        code = launch.process.poll()
                        if code is None:
                            continue
                        del active[slot]
                        outcome = self._end(launch, code)
                        result.outcomes.append(outcome)
                        events.ended(launch, outcome)
                if ctrl_c.pressed:
                    result.outcomes += self._interrupt(list(active.values()), ctrl_c)
                    result.interrupted = list(active.values())
                    active.clear()
        finally:
            for launch in active.values():  # only on an unexpected error: leave no worker behind
                _stop(launch, kill=True)
        return result

    def _launch(self, request: Request, slot: int, cpu_threads: int | None, others: list[Launch]) -> Launch:
        folder = request.folder
        created = not folder.root.exists()
        folder.root.mkdir(parents=True, exist_ok=True)
        resumed = folder.run_config.is_file()
        request.config.resume = resumed
        folder.request.write_text(json.dumps(request.config.to_dict(), indent=2) + "\n")
        resumes_checkpoint = resumed and folder.checkpoint.exists()
        start_record(folder, resumes_checkpoint)
        visible = slot_devices(self.visible, slot, request.nproc_per_node)
        device = device_key(request.config.device, visible)
        threads = rank_thread_share(cpu_threads, request.nproc_per_node, self.cores) if device == "cpu" else None
        log = open(folder.log, "a", encoding="utf-8")  # noqa: SIM115 (closed by Launch.close)
        started_at = now()
        how = "resumed from its checkpoint" if resumes_checkpoint else "started"
        where = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
        given = f", {threads} CPU thread(s) of {self.cores}" if threads is not None else ""
        if request.nproc_per_node > 1:
            given += f"{' each' if threads is not None else ''}, {request.nproc_per_node} processes (torchrun)"
        log.write(f"=== t5peft compare: {request.name} {how} at {started_at} (job slot {slot}{where}{given})\n")
        log.flush()
        logger.debug("%s %s (job slot %d%s%s), log: %s", request.name, how, slot, where, given, folder.log)
        columns = max(40, shutil.get_terminal_size().columns - len(request.name) - 4) if self.progress else None
        command = worker_command(folder.request, request.nproc_per_node)
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=worker_environment(self.cache_dir, visible, columns, threads),
            start_new_session=True,  # Ctrl-C reaches compare only; it passes one SIGINT to each worker
        )
        pump = LogPump(process.stdout, log)
        pump.start()
        launch = Launch(
            request,
            slot,
            visible,
            process,
            pump,
            log,
            time.perf_counter(),
            started_at,
            created,
            resumed,
            device,
            threads if threads is not None else inherited_threads(),
        )
        count_sharing(launch, others)
        return launch

    def _end(self, launch: Launch, code: int) -> RunOutcome:
        ok = code == 0 and launch.request.folder.results.exists()
        return self._close(launch, "finished" if ok else "failed", code, f"(exit {code})")

    def _close(self, launch: Launch, status: str, code: int | None, detail: str = "") -> RunOutcome:
        """Close a worker's log with its marker line and record its stretch; returns what happened."""
        launch.close()
        launch.finished = time.perf_counter()
        request = launch.request
        ended_at = now()
        with contextlib.suppress(OSError), open(request.folder.log, "a", encoding="utf-8") as log:
            log.write(f"=== t5peft compare: {request.name} {status} at {ended_at}{' ' + detail if detail else ''}\n")
        if request.folder.results.exists() or request.folder.checkpoint.exists():  # its time counts in a result
            stretch = Stretch(
                launch.started_at,
                ended_at,
                status,
                launch.device,
                self.jobs,
                launch.runs_at_once,
                launch.threads,
                self.cores,
                request.nproc_per_node,
            )
            add_stretch(request.folder, stretch)
        return RunOutcome(
            request.name,
            status,
            launch.slot,
            launch.visible_device,
            launch.started,
            launch.finished,
            code,
            launch.runs_at_once,
            launch.threads,
        )

    def _interrupt(self, active: list[Launch], ctrl_c: CtrlC) -> list[RunOutcome]:
        """Ctrl-C: pass it to each running worker once, wait for them (a second Ctrl-C kills them)."""
        for launch in active:
            _stop(launch)
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while ctrl_c.pressed < 2 and time.monotonic() < deadline and any(a.process.poll() is None for a in active):
            time.sleep(0.05)
        outcomes = []
        for launch in active:
            if launch.process.poll() is None:
                _stop(launch, kill=True)
                launch.process.wait()
            outcomes.append(self._close(launch, "interrupted", launch.process.returncode))
        return outcomes


def slot_devices(visible: list[str] | None, slot: int, nproc: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES of a job slot's run: one GPU of ``visible`` per slot, or ``nproc`` consecutive
    ones (one per rank) for a run on several processes; None without ``--devices``."""
    if not visible:
        return None
    first = slot * nproc
    return ",".join(visible[(first + i) % len(visible)] for i in range(nproc))


def worker_command(request: Path, nproc: int) -> list[str]:
    """The worker of one run: one process, or the launcher of its ``nproc`` ranks under torchrun (:mod:`.worker`)."""
    launcher = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [sys.executable, "-m", "t5peft.experiments.worker", *launcher, str(request)]


def count_sharing(new: Launch, others: list[Launch]) -> None:
    """Runs on one device at once: the new one and every running one on its device see the count."""
    together = [launch for launch in others if launch.device == new.device] + [new]
    for launch in together:
        launch.runs_at_once = max(launch.runs_at_once, len(together))


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
