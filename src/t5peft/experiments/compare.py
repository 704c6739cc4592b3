"""``t5peft compare``: run every (method, seed) of an experiment file, then write the report.

Each run is its own process (``python -m t5peft.experiments.worker``), so its peak memory is its own and a
crash or kill loses only that run. A run whose ``results.json`` exists is not run again; one with a
checkpoint is resumed. The aggregate files are rewritten from the run folders after every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from ..train.layout import RunFolder
from .config import Experiment, load_experiment
from .report import RESULTS_FILE, collect_results, render_report


class RunFailed(RuntimeError):
    pass


def run_dir(output: Path, method: str, seed: int) -> Path:
    return output / "runs" / f"{method.replace('+', '_')}-seed{seed}"


def _launch(config_path: Path, progress: bool) -> None:
    command = [sys.executable, "-m", "t5peft.experiments.worker", str(config_path)]
    completed = subprocess.run(command, stdout=None if progress else subprocess.DEVNULL)
    if completed.returncode != 0:
        raise RunFailed(f"run {config_path.parent} failed with exit code {completed.returncode}")


def run_compare(config_file: str | Path, output: str | Path, device: str = "auto", progress: bool = True) -> Path:
    experiment = load_experiment(config_file)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "experiment.json").write_text(json.dumps(_describe(experiment), indent=2) + "\n")
    plan = experiment.plan()
    done = sum(RunFolder(run_dir(output, m.name, s)).results.exists() for m, s in plan)
    bar = tqdm(
        total=len(plan), initial=done, desc=f"compare {experiment.name}", unit="run", disable=not progress, position=0
    )
    for method, seed in plan:
        folder = run_dir(output, method.name, seed)
        if RunFolder(folder).results.exists():
            continue
        cfg = experiment.run_config(method, seed, folder)
        cfg.device = device if device != "auto" else cfg.device
        cfg.resume = RunFolder(folder).run_config.exists()
        cfg.progress = progress
        folder.mkdir(parents=True, exist_ok=True)
        request = RunFolder(folder).request
        request.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        bar.set_postfix(run=folder.name)
        _launch(request, progress)
        bar.update(1)
        write_aggregate(experiment, output)
    bar.close()
    return write_aggregate(experiment, output)


def _describe(experiment: Experiment) -> dict:
    return {
        "name": experiment.name,
        "description": experiment.description,
        "source": experiment.source,
        "seeds": experiment.seeds,
        "methods": [
            {"name": m.name, "lr": m.lr, "options": m.options, "overrides": m.overrides} for m in experiment.methods
        ],
        "train": experiment.train,
    }


def write_aggregate(experiment: Experiment, output: Path) -> Path:
    folders = [run_dir(output, m.name, s) for m, s in experiment.plan()]
    results = collect_results(_describe(experiment), [f for f in folders if RunFolder(f).results.exists()])
    path = output / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    render_report(path, output)
    return path
