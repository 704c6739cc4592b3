"""Peak host memory of a piece of code, measured in a fresh Python process (Linux): the growth of the resident set
(VmHWM after ``/proc/self/clear_refs`` reset it, minus VmRSS at that moment) while the code runs.

glibc keeps freed blocks for reuse, so a freed tensor would still count as resident and a later one could reuse it
unseen: the child runs with ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB, so every tensor larger than that is its own
``mmap`` and leaves the resident set when freed. What remains is Python's and torch's own bookkeeping (a few MiB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

MIB = 2**20

_PRELUDE = """
import json

def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(key)

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")

def peak():
    return _status("VmHWM")

result = {}
"""

_MEASURE = """
_base = reset_peak()
{measured}
result["growth_bytes"] = peak() - _base
print("PROBE " + json.dumps(result))
"""


def measure_peak(setup: str, measured: str, *, timeout: float = 120.0, cwd: Path | None = None) -> dict:
    """Run ``setup`` then ``measured`` in a fresh process; returns ``result`` (a dict the code may fill) with
    ``growth_bytes``, the peak resident growth during ``measured``."""
    code = _PRELUDE + textwrap.dedent(setup) + _MEASURE.format(measured=textwrap.indent(textwrap.dedent(measured), ""))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    tests = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = tests + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))
