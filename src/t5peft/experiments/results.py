"""The comparison's results file, ``t5_peft_results.json``, built from its finished run folders.

:func:`collect_results` reads each run folder (``results.json``, ``metrics.jsonl``, compare's device-share
record) into one record per run, chooses the learning rate of each swept method, and summarises each method
over its seeds. The schema is ``results.schema.json`` beside this module (documented in the README);
:func:`read_results` reads a file back for the report, refusing another schema version.

Tasks (schema 3): every run records its task; sweeps and the summary are made per task (``tasks``: one entry per
task, in plan order), and ``mean_over_tasks`` averages each method's mean test accuracy and metric of record over
the tasks, as GLUE reports. ``summary`` and ``sweeps`` at the top are the first task's (the only one in a
comparison of one task, as in schema 2). A schema 2 file (IMDb only, before tasks) is read as one task, imdb.

Learning-rate sweeps: per task and method, the learning rate with the best mean validation accuracy over seeds is
chosen (ties: the lower mean validation loss, then the smaller rate); the test split is never used to
choose. The summary, the table and the figures show the chosen rate's runs; the JSON keeps every run and
every value's statistics (``sweeps``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..engine.layout import RunFolder
from ..errors import T5PeftError
from .config import row_name
from .layout import RESULTS_FILE
from .share import method_share, read_stretches, run_share

SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: before tasks (every run IMDb), read as one task
OLD_TASK = "imdb"  # the task of every run in a schema 2 file
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")

# Counted memory: t5peft keeps every parameter in float32 (bf16 is autocast only) and trains with AdamW, unless the
# frozen base is stored in bf16 or quantized (--base-dtype / --quantize): then the base counts the bytes it is stored
# in (runs record them: results.json "base_storage"), e.g. 0.516 B per NF4 weight (4 bits + the scales).
BYTES_PER_WEIGHT = 4
BYTES_PER_GRADIENT = 4
BYTES_PER_ADAMW_STATE = 8  # exp_avg + exp_avg_sq, float32 each
CHOSEN_ON = "mean validation accuracy over seeds (ties: lower mean validation loss, then the smaller rate)"


class ReportError(T5PeftError, ValueError):
    pass


def _curve(run_folder: Path) -> list[dict[str, float]]:
    keys = ("step", "epoch", "train_loss", "val_loss", "val_accuracy")
    lines = RunFolder(run_folder).metrics.read_text(encoding="utf-8").splitlines()
    return [{k: json.loads(line)[k] for k in keys} for line in lines if line.strip()]


def run_record(run_folder: Path, root: Path | None = None) -> dict[str, Any]:
    """The facts of one finished run, as the results file records them (with the settings that made them);
    ``folder`` is relative to ``root`` (the comparison's folder) when it lies inside it."""
    r = json.loads(RunFolder(run_folder).results.read_text(encoding="utf-8"))
    params = r["parameters"]
    folder = Path(run_folder)
    if root is not None and folder.resolve().is_relative_to(Path(root).resolve()):
        folder = folder.resolve().relative_to(Path(root).resolve())
    config = r["config"]
    return {
        "task": r.get("task", OLD_TASK),
        # the row: the method, and its base storage when that is not float32 ("lora@nf4")
        "method": row_name(r["method"], config.get("base_dtype", "fp32"), config.get("quantize", "none")),
        "seed": r["seed"],
        "folder": str(folder),
        "weights": r["weights"],
        "pretraining": r.get("pretraining"),  # what a pretrained-here backbone is (data, steps, time, machine)
        "learning_rate": r["learning_rate"],
        "method_options": r["method_options"],
        "test_accuracy": r["test"]["accuracy"],
        "test_loss": r["test"]["loss"],
        "test_n": r["test"]["n"],
        "test_confusion": r["test"]["confusion"],
        "test_per_class": r["test"]["per_class"],
        "test_macro_f1": r["test"].get("macro_f1"),
        "test_metric": r["test"].get("metric") or {"name": "accuracy", "value": r["test"]["accuracy"]},
        "validation_accuracy": r["validation"]["accuracy"],
        "validation_loss": r["validation"]["loss"],
        "curve": _curve(run_folder),
        "parameters": {
            "trainable": params["trainable"],
            "base": params["base"],
            "total": params.get("total", params["base"]),
            "trainable_percent": params["trainable_percent"],
        },
        "memory": r["memory"],
        "base_storage": r.get("base_storage"),
        "training": r["training"],
        "evaluation_seconds": r["test"]["seconds"],
        "adapter_file_bytes": r["adapter_file_bytes"],
        "method_report": r["method_report"],
        "data": r["data"],
        "environment": r["environment"],
        "config": r["config"],
        "device_share": run_share(read_stretches(RunFolder(run_folder))),
        "distribution": r.get("distribution"),
    }


def _mean_std(values: list[float]) -> dict[str, float | int]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def counted_memory(parameters: dict[str, int], base_storage: dict[str, Any] | None = None) -> dict[str, int]:
    """Bytes of the weights (all parameters; a stored base at the bytes it is stored in), and of the gradients and
    AdamW moments of the trainable ones."""
    trainable, total = parameters["trainable"], parameters["total"]
    frozen = BYTES_PER_WEIGHT * (total - trainable) if base_storage is None else base_storage["frozen_bytes"]
    memory = {
        "weights": frozen + BYTES_PER_WEIGHT * trainable,
        "trainable_weights": BYTES_PER_WEIGHT * trainable,
        "gradients": BYTES_PER_GRADIENT * trainable,
        "optimizer_state": BYTES_PER_ADAMW_STATE * trainable,
    }
    memory["training_state"] = memory["trainable_weights"] + memory["gradients"] + memory["optimizer_state"]
    memory["total"] = memory["weights"] + memory["gradients"] + memory["optimizer_state"]
    return memory


def base_precision(base_storage: dict[str, Any] | None) -> str:
    """How a row's frozen base was stored, as the table shows it: fp32, bf16, nf4, int8, nf4 (bf16 scales)..."""
    if base_storage is None or base_storage["quantize"] == "none":
        return base_storage["base_dtype"] if base_storage else "fp32"
    return base_storage["quantize"] + (" (bf16 rest)" if base_storage["base_dtype"] == "bf16" else "")


def _planned(experiment: dict[str, Any]) -> dict[str, list[float] | None]:
    """The learning rates each method's plan sweeps (None: not a sweep)."""
    return {m["name"]: m["lr"] if isinstance(m.get("lr"), list) else None for m in experiment.get("methods", [])}


def choose_learning_rates(runs: list[dict[str, Any]], experiment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per swept method: every value's statistics and the chosen one (on validation only; see the module doc)."""
    planned = _planned(experiment)
    seeds = experiment.get("seeds", [])
    sweeps = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        rates = sorted({r["learning_rate"] for r in mine})
        if planned.get(method) is None and len(rates) == 1:
            continue
        values = []
        for lr in rates:
            at = [r for r in mine if r["learning_rate"] == lr]
            values.append(
                {
                    "learning_rate": lr,
                    "seeds": sorted(r["seed"] for r in at),
                    "validation_accuracy": _mean_std([r["validation_accuracy"] for r in at]),
                    "validation_loss": _mean_std([r["validation_loss"] for r in at]),
                    "test_accuracy": _mean_std([r["test_accuracy"] for r in at]),
                }
            )
        best = max(
            values,
            key=lambda v: (v["validation_accuracy"]["mean"], -v["validation_loss"]["mean"], -v["learning_rate"]),
        )
        for value in values:
            value["chosen"] = value is best
        wanted = planned.get(method) or rates
        complete = all(any(math.isclose(v["learning_rate"], lr) for v in values) for lr in wanted) and all(
            len(v["seeds"]) == len(seeds) for v in values
        )
        sweeps[method] = {
            "chosen_learning_rate": best["learning_rate"],
            "chosen_on": CHOSEN_ON,
            "planned": wanted,
            "complete": complete,
            "values": values,
        }
    return sweeps


def summarize(runs: list[dict[str, Any]], sweeps: dict[str, dict[str, Any]] | None = None) -> dict[str, dict]:
    """Mean and standard deviation over seeds per method (the chosen learning rate's runs for a sweep), plus
    "N x fewer" trainable parameters than full fine-tuning and the counted memory."""
    sweeps = sweeps or {}
    full = [r["parameters"]["trainable"] for r in runs if r["method"] == "full"]
    base = runs[0]["parameters"]["base"] if runs else 0
    full_count = full[0] if full else base
    summary = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        if method in sweeps:
            mine = [r for r in mine if r["learning_rate"] == sweeps[method]["chosen_learning_rate"]]
        trainable = mine[0]["parameters"]["trainable"]
        memory_key = (
            "cuda_max_allocated_bytes" if "cuda_max_allocated_bytes" in mine[0]["memory"] else "peak_cpu_rss_bytes"
        )
        summary[method] = {
            "learning_rate": mine[0]["learning_rate"],
            "learning_rate_chosen_on_validation": method in sweeps,
            "seeds": [r["seed"] for r in mine],
            "test_accuracy": _mean_std([r["test_accuracy"] for r in mine]),
            "test_metric": {"name": _metric_name(mine), **_mean_std([_metric_value(r) for r in mine])},
            "validation_accuracy": _mean_std([r["validation_accuracy"] for r in mine]),
            "trainable_parameters": trainable,
            "trainable_percent": mine[0]["parameters"]["trainable_percent"],
            "fewer_parameters_than_full": full_count / trainable if trainable else None,
            "counted_memory_bytes": counted_memory(mine[0]["parameters"], mine[0].get("base_storage")),
            "base_precision": base_precision(mine[0].get("base_storage")),
            "peak_memory_bytes": _mean_std([r["memory"][memory_key] for r in mine]),
            "peak_memory_kind": memory_key,
            "training_seconds": _mean_std([r["training"]["seconds"] for r in mine]),
            "examples_per_s": _mean_std([r["training"]["examples_per_s"] for r in mine]),
            "tokens_per_s": _mean_std([r["training"]["tokens_per_s"] for r in mine]),
            "evaluation_seconds": _mean_std([r["evaluation_seconds"] for r in mine]),
            "adapter_file_bytes": mine[0]["adapter_file_bytes"],
            "device_share": method_share(mine),
        }
    return summary


def _metric_value(run: dict[str, Any]) -> float:
    return run.get("test_metric", {}).get("value", run["test_accuracy"])


def _metric_name(runs: list[dict[str, Any]]) -> str:
    names = {r.get("test_metric", {}).get("name", "accuracy") for r in runs}
    return names.pop() if len(names) == 1 else "mixed"


def _named_task(run: dict[str, Any], folder_name: str, experiment: dict[str, Any]) -> dict[str, Any]:
    """In a comparison over several tasks, a run's task is the plan's name for it (``[tasks.reviews]`` may be the
    built-in imdb task on other data), read from its folder name ``<task>-<method>-...``; the built-in task it ran
    is kept as ``builtin_task``."""
    names = sorted((t["name"] for t in experiment.get("tasks") or []), key=len, reverse=True)
    for name in names:
        if folder_name.startswith(f"{name}-"):
            return {**run, "task": name, "builtin_task": run["task"]}
    return run


def by_task(runs: list[dict[str, Any]], experiment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task (in the order the runs came): its sweeps, chosen on its own validation split, and its summary."""
    tasks: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(r.get("task", OLD_TASK) for r in runs):
        mine = [r for r in runs if r.get("task", OLD_TASK) == task]
        sweeps = choose_learning_rates(mine, experiment)
        tasks[task] = {"sweeps": sweeps, "summary": summarize(mine, sweeps)}
    return tasks


def mean_over_tasks(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method run on every task: the mean over tasks of its mean test accuracy and metric of record."""
    methods = [m for m in next(iter(tasks.values()))["summary"] if all(m in t["summary"] for t in tasks.values())]
    return {
        method: {
            "tasks": list(tasks),
            "test_accuracy": statistics.fmean(t["summary"][method]["test_accuracy"]["mean"] for t in tasks.values()),
            "test_metric": statistics.fmean(t["summary"][method]["test_metric"]["mean"] for t in tasks.values()),
        }
        for method in methods
    }


def collect_results(
    experiment: dict[str, Any], run_folders: list[Path], missing: list[str] | None = None, root: Path | None = None
) -> dict[str, Any]:
    """The results file: the plan, every finished run, learning-rate sweeps and the summary per task."""
    runs = [_named_task(run_record(folder, root), Path(folder).name, experiment) for folder in run_folders]
    weights = sorted({r["weights"] for r in runs})
    tasks = by_task(runs, experiment)
    first = next(iter(tasks.values()), {"sweeps": {}, "summary": {}})
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "weights": weights[0] if len(weights) == 1 else "mixed",
        "environment": runs[0]["environment"] if runs else None,
        "runs": runs,
        "not_finished": list(missing or []),
        "sweeps": first["sweeps"],
        "summary": first["summary"],
        "tasks": tasks,
        "mean_over_tasks": mean_over_tasks(tasks) if len(tasks) > 1 else {},
    }


def upgrade(results: dict[str, Any]) -> dict[str, Any]:
    """A schema 2 file as schema 3 reads it: every run IMDb, one task."""
    runs = [{"task": OLD_TASK, **run} for run in results["runs"]]
    for run in runs:
        run.setdefault("test_metric", {"name": "accuracy", "value": run["test_accuracy"]})
    summary = {
        method: {**s, "test_metric": s.get("test_metric", {"name": "accuracy", **s["test_accuracy"]})}
        for method, s in results["summary"].items()
    }
    tasks = {OLD_TASK: {"sweeps": results.get("sweeps", {}), "summary": summary}}
    return {**results, "runs": runs, "summary": summary, "tasks": tasks, "mean_over_tasks": {}}


def read_results(results_path: str | Path) -> dict[str, Any]:
    """A results file read back, refusing a missing file, bad JSON and another schema version in one line."""
    results_path = Path(results_path)
    if results_path.is_dir():  # a comparison folder: its results file
        if not (results_path / RESULTS_FILE).is_file():
            raise ReportError(f"{results_path}: a folder without {RESULTS_FILE}; give a comparison's results file")
        results_path = results_path / RESULTS_FILE
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{results_path}: no such results file") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{results_path}: not valid JSON ({err})") from None
    if isinstance(results, dict) and "schema_version" not in results and {"method", "test", "config"} <= set(results):
        raise ReportError(
            f"{results_path}: the results of one `t5peft train` run (its summary is printed at the end of training); "
            f"report renders the {RESULTS_FILE} of a `t5peft compare`"
        )
    version = results.get("schema_version") if isinstance(results, dict) else None
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise ReportError(
            f"{results_path}: schema_version {version!r}, this t5peft reads {readable}; run `t5peft compare` "
            "into the same folder again to rewrite it (finished runs are reused)"
        )
    if not results["runs"]:
        raise ReportError(f"{results_path}: no finished runs to report")
    return upgrade(results) if version == 2 else results
