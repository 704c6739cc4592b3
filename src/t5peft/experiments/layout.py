"""The files of a comparison's output folder, named in one place (what ``compare`` writes and ``report`` reads).

One run's own folder is :class:`t5peft.engine.layout.RunFolder`; this module names what sits around the run
folders: the aggregate outputs rendered from them, the plan as run, and compare's own bookkeeping.
"""

from __future__ import annotations

from pathlib import Path

RESULTS_FILE = "t5_peft_results.json"  # every run, the sweeps and the per-method summary
TABLE_FILE = "results.md"
FIGURE_FILE = "t5_peft_comparison.png"  # figure 1: curves, accuracy vs parameters, time and memory
MEMORY_FIGURE_FILE = "t5_peft_memory.png"  # figure 2: memory per method
EXPERIMENT_FILE = "experiment.json"  # the plan as run
RUNS = "runs"  # one folder per (method, lr, seed)
SUPERSEDED = "superseded"  # run folders moved aside by --rerun-changed
COMPILE_CACHE = "compile-cache"  # torch's FX-graph and AOT-autograd caches, shared by the plan's workers


def run_dir(output: Path, method: str, seed: int) -> Path:
    """The folder of a (method, seed) run without a learning-rate sweep."""
    return Path(output) / RUNS / f"{method.replace('+', '_')}-seed{seed}"


def task_figure_files(task: str, first: bool) -> tuple[str, str]:
    """The two figures of one task of a comparison: the usual names for the first (or only) task, the names with
    ``-<task>`` for each further one."""
    if first:
        return FIGURE_FILE, MEMORY_FIGURE_FILE
    return tuple(name.replace(".png", f"-{task}.png") for name in (FIGURE_FILE, MEMORY_FIGURE_FILE))  # type: ignore[return-value]
