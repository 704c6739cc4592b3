"""Facts about the machine and software a run used, recorded with its results."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from .._version import __version__

PACKAGES = ("torch", "safetensors", "tokenizers", "huggingface_hub", "numpy", "pyarrow", "transformers", "peft")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the t5peft checkout, when it runs from one (None for an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows (often just ``x86_64``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What the numbers of a CPU run depend on besides the code and the settings: the processor and torch's
    kernels for it (the CPU capability) set the arithmetic, the thread count its order of summation."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    capability = torch.backends.cpu.get_cpu_capability()
    return f"CPU: {cpu_model()} ({capability}), {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def environment(device: torch.device) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "t5peft": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
    }


def peak_cpu_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_report(device: torch.device) -> dict:
    report = {"peak_cpu_rss_bytes": peak_cpu_rss_bytes()}
    if device.type == "cuda":
        report["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        report["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return report
