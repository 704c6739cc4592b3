"""One run of a comparison, in its own process: ``python -m t5peft.experiments.worker request.json``.

Its output goes to the run's ``run.log`` (``compare`` reads it through a pipe). Exit status: 0 finished,
2 an error the user can fix (its one-line message is the last line of the log), 1 a bug (traceback, then a
one-line summary), 130 interrupted (Ctrl-C reaches it from ``compare``). When ``compare`` itself dies, the
worker stops too (its checkpoint, if any, is resumed by the next ``compare``).

A run on several processes (``nproc_per_node`` in the experiment file):
``python -m t5peft.experiments.worker --nproc-per-node N request.json`` is the launcher. It runs torchrun's
own launch in this process (``torchrun --standalone --nproc-per-node N --shutdown-timeout S -m
t5peft.experiments.worker request.json``: a rendezvous on a free localhost port, so runs at once never
collide), and each rank is this module again, training as one rank of the run (``t5peft train`` under
torchrun: :mod:`t5peft.engine.distributed`). Rank 0 writes the run folder and its output is the log's; the
other ranks write nothing (their output is discarded). Every rank leaves how it ended (exit status, its one
line, a bug's traceback) in the launcher's temporary folder (``T5PEFT_RANK_REPORTS``), and the launcher
ends with the same exit statuses and one-line last line as a one-process worker: rank 0's ending, or that of
the first rank that failed when rank 0 did not; the other failed ranks' lines are printed above it. Ctrl-C
(a SIGINT to the launcher) is passed by torchrun to every rank; each process of the launch stops when its
parent is gone (the launcher when ``compare`` dies, the ranks when the launcher does), so a killed
``compare`` leaves no rank behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import T5PeftError

WATCHED_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "TORCHINDUCTOR_CACHE_DIR",
    "TORCHINDUCTOR_FX_GRAPH_CACHE",
    "TORCHINDUCTOR_AUTOGRAD_CACHE",
    "OMP_NUM_THREADS",
)
RANK_REPORTS = "T5PEFT_RANK_REPORTS"  # the launcher's folder where each rank leaves its Ending
SHUTDOWN_TIMEOUT_S = 45  # torchrun's wait for the ranks after Ctrl-C, before it kills them (compare waits 60)
USAGE = "usage: python -m t5peft.experiments.worker [--nproc-per-node N] REQUEST.json"


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """Stop when the process that started this one is gone (a killed ``compare`` leaves no orphan training)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def compile_cache_line() -> str | None:
    """How the shared compile cache served this run (torch's own counters), when anything was compiled."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    fx, aot = counters["inductor"], counters["aot_autograd"]
    if not (fx.get("fxgraph_cache_hit") or fx.get("fxgraph_cache_miss") or aot.get("total")):
        return None
    return (
        f"compile cache: FX graph {fx['fxgraph_cache_hit']} hit(s), {fx['fxgraph_cache_miss']} miss(es); "
        f"AOT autograd {aot['autograd_cache_hit']} hit(s), {aot['autograd_cache_miss']} miss(es), "
        f"{aot['autograd_cache_bypass']} bypass(es)"
    )


@dataclass
class Ending:
    """How a worker (or one rank of it) ended: its exit status, the one line it says last, a bug's traceback."""

    code: int
    line: str | None = None
    details: str | None = None

    def say(self, prefix: str = "") -> None:
        if self.details:
            print(self.details, end="" if self.details.endswith("\n") else "\n", file=sys.stderr)
        if self.line:
            print(f"{prefix}{self.line}", file=sys.stderr, flush=True)


def run_request(request: Path) -> Ending:
    """Train the run that ``request`` (a TrainConfig as JSON) asks for; the exit statuses of the module doc."""
    try:
        from ..engine.settings import TrainInterrupted
        from ..train.loop import train
        from ..train.settings import TrainConfig
    except KeyboardInterrupt:
        return Ending(130, "interrupted (Ctrl-C) while starting")
    try:
        cfg = TrainConfig.from_dict(json.loads(request.read_text()), str(request))
        train(cfg)
        line = compile_cache_line()
        if line:
            print(line, flush=True)
    except TrainInterrupted as err:  # Ctrl-C, as the training loop reports it: where it stopped
        return Ending(130, f"interrupted (Ctrl-C): {err}")
    except KeyboardInterrupt:
        return Ending(130, "interrupted (Ctrl-C)")
    except (T5PeftError, OSError) as err:
        return Ending(2, f"error: {' '.join(str(err).split())}")  # one line: compare shows the last one
    except Exception as err:
        return Ending(1, f"internal error (a bug in t5peft): {type(err).__name__}: {err}", traceback.format_exc())
    return Ending(0)


# --------------------------------------------------------------------------------------------------
# One rank of a run on several processes, and the launcher of its ranks


def launched_rank() -> int | None:
    """This process's rank when it is one rank of a launch by :func:`launch_ranks` (None: a worker of its own)."""
    if RANK_REPORTS not in os.environ or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"])


def discard_output() -> None:
    """Send this process's stdout and stderr (the file descriptors, so C code's too) to the null device."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def leave_report(rank: int, ending: Ending) -> None:
    folder = Path(os.environ[RANK_REPORTS])
    (folder / f"rank{rank}.json").write_text(json.dumps(asdict(ending)), encoding="utf-8")


def read_reports(folder: Path, nproc: int) -> dict[int, Ending]:
    endings = {}
    for rank in range(nproc):
        path = folder / f"rank{rank}.json"
        if path.is_file():
            endings[rank] = Ending(**json.loads(path.read_text(encoding="utf-8")))
    return endings


def exit_status(code: int) -> int:
    """A child's exit code as a shell shows it: killed by signal N (negative N in Python) is 128 + N."""
    return 128 - code if code < 0 else code


def _unreported(code: int) -> Ending:
    if code < 0:
        return Ending(exit_status(code), f"killed by signal {signal.Signals(-code).name} before it said why")
    return Ending(code, f"exited with status {code} before it said why")


def launch_ending(nproc: int, endings: dict[int, Ending], failed: dict[int, int], interrupted: bool) -> Ending:
    """The ending of the whole launch (module doc): every rank's ending, from its report or, for a rank that
    left none, from the exit code torchrun saw (``failed``); the other failed ranks' lines said here."""
    ranks = {
        r: endings[r] if r in endings else _unreported(failed[r]) for r in range(nproc) if r in endings or r in failed
    }
    bad = [r for r, ending in sorted(ranks.items()) if ending.code != 0]
    if not bad:
        return Ending(130, "interrupted (Ctrl-C) before the ranks started") if interrupted else Ending(0)
    chosen = 0 if 0 in bad else bad[0]
    for rank in bad:  # the others' causes above the chosen one (a line the chosen rank says too: once)
        if rank != chosen and ranks[rank].line != ranks[chosen].line:
            ranks[rank].say(f"rank {rank}: ")
    ending = ranks[chosen]
    return ending if chosen == 0 else Ending(ending.code, f"rank {chosen}: {ending.line}", ending.details)


def torchrun_arguments(nproc: int, request: Path) -> list[str]:
    """torchrun's command line for the ranks of one run (the launcher runs it in its own process)."""
    return [
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
        "-m",
        "t5peft.experiments.worker",
        str(request),
    ]


def launch_ranks(nproc: int, request: Path) -> Ending:
    """Run ``request`` on ``nproc`` processes under torchrun (module doc); returns the launch's ending."""
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run
    except KeyboardInterrupt:
        return Ending(130, "interrupted (Ctrl-C) while starting")
    failed: dict[int, int] = {}
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="t5peft-ranks-") as reports:
        os.environ[RANK_REPORTS] = reports
        try:
            run(parse_args(torchrun_arguments(nproc, request)))
        except ChildFailedError as err:
            failed = {rank: failure.exitcode for rank, failure in err.failures.items()}
        except (SignalException, KeyboardInterrupt):
            interrupted = True
        endings = read_reports(Path(reports), nproc)
    return launch_ending(nproc, endings, failed, interrupted)


def parse_arguments(argv: list[str]) -> tuple[int, Path] | None:
    """``[--nproc-per-node N] REQUEST.json`` as (N, request); None when they are not that."""
    nproc = 1
    if len(argv) == 3 and argv[0] == "--nproc-per-node" and argv[1].isdigit() and int(argv[1]) >= 1:
        nproc, argv = int(argv[1]), argv[2:]
    return (nproc, Path(argv[0])) if len(argv) == 1 else None


def main(argv: list[str]) -> int:
    parsed = parse_arguments(argv)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return 2
    nproc, request = parsed
    _exit_with_parent()
    rank = launched_rank()
    if rank:  # a rank other than 0: rank 0 says what the run says
        discard_output()
    notes = [f"rank {rank} of {os.environ.get('WORLD_SIZE')}"] if rank is not None else []
    notes += [f"{nproc} ranks under torchrun"] if nproc > 1 else []
    notes += [f"{k}={os.environ[k]}" for k in WATCHED_VARIABLES if k in os.environ]
    print(f"t5peft worker pid {os.getpid()}: {request}" + (f" ({', '.join(notes)})" if notes else ""), flush=True)
    ending = launch_ranks(nproc, request) if nproc > 1 else run_request(request)
    if rank is not None:
        leave_report(rank, ending)
    ending.say()
    return ending.code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
