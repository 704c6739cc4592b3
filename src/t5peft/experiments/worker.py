"""One run of a comparison, in its own process: ``python -m t5peft.experiments.worker request.json``.

Its output goes to the run's ``run.log`` (``compare`` reads it through a pipe). Exit status: 0 finished,
2 an error the user can fix (its one-line message is the last line of the log), 1 a bug (traceback, then a
one-line summary), 130 interrupted (Ctrl-C reaches it from ``compare``). When ``compare`` itself dies, the
worker stops too (its checkpoint, if any, is resumed by the next ``compare``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from ..errors import T5PeftError

WATCHED_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "TORCHINDUCTOR_CACHE_DIR",
    "TORCHINDUCTOR_FX_GRAPH_CACHE",
    "TORCHINDUCTOR_AUTOGRAD_CACHE",
    "OMP_NUM_THREADS",
)


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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m t5peft.experiments.worker REQUEST.json", file=sys.stderr)
        return 2
    request = Path(argv[0])
    _exit_with_parent()
    settings = ", ".join(f"{k}={os.environ[k]}" for k in WATCHED_VARIABLES if k in os.environ)
    print(f"t5peft worker pid {os.getpid()}: {request}" + (f" ({settings})" if settings else ""), flush=True)
    try:
        from ..engine.settings import TrainInterrupted
        from ..train.loop import train
        from ..train.settings import TrainConfig
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C) while starting", file=sys.stderr)
        return 130
    try:
        cfg = TrainConfig.from_dict(json.loads(request.read_text()), str(request))
        train(cfg)
        line = compile_cache_line()
        if line:
            print(line, flush=True)
    except TrainInterrupted as err:  # Ctrl-C, as the training loop reports it: where it stopped
        print(f"interrupted (Ctrl-C): {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (T5PeftError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # one line: compare shows the last one
        return 2
    except Exception as err:
        traceback.print_exc()
        print(f"internal error (a bug in t5peft): {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
