"""How the runs of a comparison share a device: each CPU worker's share of the threads, and the record of it.

Runs that train at the same time on one device measure the device's load as much as their method: two CPU
workers with all of the cores each ran 20x slower than one alone (issue 16.6). So a CPU worker gets its share
of the cores, ``cores // jobs`` threads (at least 1; ``OMP_NUM_THREADS`` set lower by the user is kept), as
the test suite does for its workers; a lone run and CUDA workers keep the environment they inherit. Threads
also decide the order of reductions, so the runs of ``--jobs 2`` on a CPU are not bit-identical to those of a
serial plan (both are recorded; neither changes what the run is asked to compute).

Every stretch of a run (a run resumed from its checkpoint has two) is recorded in its folder
(``RunFolder.device_share``): the device, how many runs of the plan trained on that device at once at most
while it ran, and the CPU threads it was given. The results file carries this per run and per method, and
the table and figure 1 (d) say when times were measured on a shared device. A run on several processes
(``nproc_per_node``) divides its share among them (each at least 1 thread), and its stretches record how many.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from ..engine.layout import RunFolder
from ..errors import T5PeftError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "RAYON_NUM_THREADS")  # torch's CPU kernels; the tokenizers library


class ShareRecordError(T5PeftError, ValueError):
    """A run folder's device-share record cannot be read."""


def available_cores() -> int:
    """The cores this process may run on (its affinity where the platform says, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def inherited_threads() -> int | None:
    """``OMP_NUM_THREADS`` as this process's environment sets it (None: unset or not a positive number)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def cpu_thread_share(jobs: int, cores: int | None = None) -> int | None:
    """Threads for each of ``jobs`` CPU workers running at once: ``cores // jobs`` (at least 1), or the
    inherited ``OMP_NUM_THREADS`` when lower. None for a single job: it keeps what it inherits."""
    if jobs <= 1:
        return None
    share = max(1, (cores or available_cores()) // jobs)
    inherited = inherited_threads()
    return min(share, inherited) if inherited is not None else share


def rank_thread_share(threads: int | None, nproc: int, cores: int | None = None) -> int | None:
    """Threads for each of the ``nproc`` processes of one CPU run: the run's share (``threads``; None: all the
    cores, or the inherited ``OMP_NUM_THREADS`` when lower) divided among them, at least 1. ``threads`` itself
    for a run of one process."""
    if nproc <= 1:
        return threads
    whole = threads if threads is not None else (cores or available_cores())
    inherited = inherited_threads()
    if threads is None and inherited is not None:
        whole = min(whole, inherited)
    return max(1, whole // nproc)


def thread_environment(threads: int | None) -> dict[str, str]:
    """The variables that give a worker ``threads`` CPU threads (nothing for None: the inherited ones)."""
    return {} if threads is None else dict.fromkeys(THREAD_VARIABLES, str(threads))


def device_key(device: str, visible_device: str | None) -> str:
    """Which physical device a worker trains on: ``cpu``, or the CUDA device it is given (``cuda`` alone: the
    default GPU of a worker without ``--devices``)."""
    kind = device.split(":")[0]
    if kind != "cuda":
        return kind
    return f"cuda (CUDA_VISIBLE_DEVICES={visible_device})" if visible_device is not None else device


@dataclass
class Stretch:
    """One uninterrupted stretch of a run, as ``compare`` ran it."""

    started_at: str
    ended_at: str
    status: str  # "finished", "failed", "interrupted"
    device: str  # device_key
    jobs: int  # runs the plan allowed at once (--jobs)
    runs_at_once: int  # the most runs training on this device at one time while this one ran (1: alone)
    threads: int | None  # CPU threads it was given (None: not set by compare, what the environment gave)
    cores: int  # the machine's cores available to compare
    processes: int = 1  # the run's processes (nproc_per_node); ``threads`` is each one's


def start_record(folder: RunFolder, resumes_checkpoint: bool) -> None:
    """A run that starts over drops the stretches of its earlier attempts (their time is not in its results)."""
    if not resumes_checkpoint:
        folder.device_share.unlink(missing_ok=True)


def add_stretch(folder: RunFolder, stretch: Stretch) -> None:
    stretches = read_stretches(folder) or []
    stretches.append(asdict(stretch))
    folder.device_share.write_text(json.dumps({"stretches": stretches}, indent=2) + "\n", encoding="utf-8")


def read_stretches(folder: RunFolder) -> list[dict[str, Any]] | None:
    """The recorded stretches of a run; None for a run without a record (trained by ``train``, or by a
    t5peft from before the record)."""
    try:
        return list(json.loads(folder.device_share.read_text(encoding="utf-8"))["stretches"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise ShareRecordError(f"{folder.device_share}: not a device-share record ({problem})") from None


def run_share(stretches: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """What the results file records per run: the most runs at once on its device over all its stretches,
    the distinct thread counts it had, and the stretches themselves."""
    if not stretches:
        return None
    return {
        "runs_at_once": max(s["runs_at_once"] for s in stretches),
        "threads": list(dict.fromkeys(s["threads"] for s in stretches)),
        "stretches": stretches,
    }


def method_share(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over a method's runs: the most runs at once, the distinct thread counts, and how many runs have no
    record (their sharing is unknown)."""
    shares = [r["device_share"] for r in runs if r.get("device_share")]
    return {
        "runs_at_once": max((s["runs_at_once"] for s in shares), default=None),
        "threads": list(dict.fromkeys(t for s in shares for t in s["threads"])),
        "unrecorded": len(runs) - len(shares),
    }


def shared(share: dict[str, Any] | None) -> bool:
    """Whether a run's or a method's times were measured while other runs trained on the same device."""
    return bool(share) and (share.get("runs_at_once") or 1) > 1


def describe_share(share: dict[str, Any]) -> str:
    """``up to 2 runs at once on the device, 1 CPU thread each``, for the table and the figure."""
    threads = [t for t in share["threads"] if t is not None]
    each = ""
    if threads:
        counts = "/".join(str(t) for t in threads)
        each = f", {counts} CPU thread{'s' if threads != [1] else ''} each"
    return f"up to {share['runs_at_once']} runs at once on the device{each}"
