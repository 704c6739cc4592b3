"""The comparison's outputs: ``t5_peft_results.json``, ``t5_peft_comparison.png`` and ``results.md``.

The JSON is built from the run folders (:func:`collect_results`); the figure and the table are rendered
from the JSON alone (:func:`render_report`), so ``t5peft report`` can redo them anywhere. The JSON schema is
``results.schema.json`` beside this module (documented in the README).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..train.layout import RunFolder

RESULTS_FILE = "t5_peft_results.json"
FIGURE_FILE = "t5_peft_comparison.png"
TABLE_FILE = "results.md"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")


# --------------------------------------------------------------------------------------------------
# Collecting


def _curve(run_folder: Path) -> list[dict[str, float]]:
    keys = ("step", "epoch", "train_loss", "val_loss", "val_accuracy")
    lines = RunFolder(run_folder).metrics.read_text(encoding="utf-8").splitlines()
    return [{k: json.loads(line)[k] for k in keys} for line in lines if line.strip()]


def run_record(run_folder: Path) -> dict[str, Any]:
    """The facts of one finished run, as the results file records them."""
    r = json.loads(RunFolder(run_folder).results.read_text(encoding="utf-8"))
    params = r["parameters"]
    return {
        "method": r["method"],
        "seed": r["seed"],
        "folder": str(run_folder),
        "weights": r["weights"],
        "pretraining": r.get("pretraining"),  # what a pretrained-here backbone is (data, steps, time, machine)
        "learning_rate": r["learning_rate"],
        "method_options": r["method_options"],
        "test_accuracy": r["test"]["accuracy"],
        "test_loss": r["test"]["loss"],
        "test_n": r["test"]["n"],
        "test_confusion": r["test"]["confusion"],
        "test_per_class": r["test"]["per_class"],
        "validation_accuracy": r["validation"]["accuracy"],
        "curve": _curve(run_folder),
        "parameters": {
            "trainable": params["trainable"],
            "base": params["base"],
            "trainable_percent": params["trainable_percent"],
        },
        "memory": r["memory"],
        "training": r["training"],
        "evaluation_seconds": r["test"]["seconds"],
        "adapter_file_bytes": r["adapter_file_bytes"],
        "method_report": r["method_report"],
        "data": r["data"],
        "environment": r["environment"],
    }


def _mean_std(values: list[float]) -> dict[str, float | int]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation over seeds, per method, plus "N x fewer" trainable parameters than full."""
    full = [r["parameters"]["trainable"] for r in runs if r["method"] == "full"]
    base = runs[0]["parameters"]["base"] if runs else 0
    full_count = full[0] if full else base
    summary = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        trainable = mine[0]["parameters"]["trainable"]
        memory_key = (
            "cuda_max_allocated_bytes" if "cuda_max_allocated_bytes" in mine[0]["memory"] else "peak_cpu_rss_bytes"
        )
        summary[method] = {
            "seeds": [r["seed"] for r in mine],
            "test_accuracy": _mean_std([r["test_accuracy"] for r in mine]),
            "validation_accuracy": _mean_std([r["validation_accuracy"] for r in mine]),
            "trainable_parameters": trainable,
            "trainable_percent": mine[0]["parameters"]["trainable_percent"],
            "fewer_parameters_than_full": full_count / trainable if trainable else None,
            "peak_memory_bytes": _mean_std([r["memory"][memory_key] for r in mine]),
            "peak_memory_kind": memory_key,
            "training_seconds": _mean_std([r["training"]["seconds"] for r in mine]),
            "examples_per_s": _mean_std([r["training"]["examples_per_s"] for r in mine]),
            "tokens_per_s": _mean_std([r["training"]["tokens_per_s"] for r in mine]),
            "evaluation_seconds": _mean_std([r["evaluation_seconds"] for r in mine]),
            "adapter_file_bytes": mine[0]["adapter_file_bytes"],
        }
    return summary


def collect_results(experiment: dict[str, Any], run_folders: list[Path]) -> dict[str, Any]:
    runs = [run_record(folder) for folder in run_folders]
    weights = sorted({r["weights"] for r in runs})
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "weights": weights[0] if len(weights) == 1 else "mixed",
        "environment": runs[0]["environment"] if runs else None,
        "runs": runs,
        "summary": summarize(runs),
    }


# --------------------------------------------------------------------------------------------------
# Rendering


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _pm(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    if stat["n"] > 1:
        return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    env = results.get("environment") or {}
    runs = results["runs"]
    test_n = sorted({r["test_n"] for r in runs})
    lines = [
        f"# T5 PEFT comparison: {results['experiment'].get('name', '')}",
        "",
        f"Weights: **{results['weights']}**. Machine: {env.get('device_name', '?')}. Date: {env.get('date', '?')}. "
        f"Commit: {env.get('git_commit', '?')}. Test reviews per run: {', '.join(map(str, test_n))}.",
        "Accuracy: mean ± standard deviation over seeds (n seeds). Memory: peak CUDA allocated memory on GPU, "
        "peak process resident memory (RSS) on CPU.",
        "",
        "| Method | Test acc. (%) | Val. acc. (%) | Trainable params | % of base | Fewer than full | Peak memory "
        "| Train time (s) | Examples/s | Adapter file | Seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in results["summary"].items():
        fewer = s["fewer_parameters_than_full"]
        lines.append(
            f"| {method} | {_pm(s['test_accuracy'], 100)} | {_pm(s['validation_accuracy'], 100)} "
            f"| {s['trainable_parameters']:,} | {s['trainable_percent']:.3f} | "
            f"{'1 x' if method == 'full' else f'{fewer:,.0f} x' if fewer else '-'} "
            f"| {_mib(s['peak_memory_bytes']['mean'])} | {_pm(s['training_seconds'], 1, 1)} "
            f"| {_pm(s['examples_per_s'], 1, 1)} | {s['adapter_file_bytes'] / 1024:,.0f} KiB | {len(s['seeds'])} |"
        )
    ranks = [r for r in runs if r["method_report"].get("final_ranks")]
    if ranks:
        lines += ["", "AdaLoRA final ranks (sum over modules):"]
        lines += [f"- seed {r['seed']}: {sum(r['method_report']['final_ranks'].values())}" for r in ranks]
    return "\n".join(lines) + "\n"


def _mean_curve(runs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    by_step: dict[int, list[float]] = {}
    epochs: dict[int, float] = {}
    for run in runs:
        for point in run["curve"]:
            by_step.setdefault(point["step"], []).append(point[key])
            epochs[point["step"]] = point["epoch"]
    steps = sorted(by_step)
    return [epochs[s] for s in steps], [statistics.fmean(by_step[s]) for s in steps]


def render_figure(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, runs = results["summary"], results["runs"]
    methods = list(summary)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    (loss_ax, acc_ax), (params_ax, cost_ax) = axes
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        x, y = _mean_curve(mine, "train_loss")
        loss_ax.plot(x, y, label=method, color=colors[method])
        x, y = _mean_curve(mine, "val_accuracy")
        acc_ax.plot(x, [100 * v for v in y], label=method, color=colors[method], marker=".")
        s = summary[method]
        params_ax.errorbar(
            s["trainable_parameters"],
            100 * s["test_accuracy"]["mean"],
            yerr=100 * s["test_accuracy"]["std"],
            fmt="o",
            color=colors[method],
            capsize=3,
        )
        params_ax.annotate(
            method,
            (s["trainable_parameters"], 100 * s["test_accuracy"]["mean"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=9,
        )
    loss_ax.set(title="Training loss (mean over seeds)", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="Validation accuracy during training", xlabel="epoch", ylabel="accuracy (%)")
    params_ax.set(
        title="Test accuracy vs trainable parameters",
        xlabel="trainable parameters (log scale)",
        ylabel="test accuracy (%)",
        xscale="log",
    )
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    params_ax.grid(alpha=0.3, which="both")
    _cost_panel(cost_ax, summary, methods)
    env = results.get("environment") or {}
    fig.suptitle(
        f"T5 PEFT on IMDb — {results['experiment'].get('name', '')} — weights: {results['weights']} — "
        f"{env.get('device_name', '')} — {env.get('date', '')[:10]}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cost_panel(ax, summary: dict, methods: list[str]) -> None:
    """Accuracy, memory and time per method, memory and time relative to full fine-tuning (or the largest)."""
    reference = summary.get("full") or max(summary.values(), key=lambda s: s["training_seconds"]["mean"])
    width = 0.27
    xs = range(len(methods))
    accuracy = [100 * summary[m]["test_accuracy"]["mean"] for m in methods]
    memory = [summary[m]["peak_memory_bytes"]["mean"] / reference["peak_memory_bytes"]["mean"] for m in methods]
    time = [summary[m]["training_seconds"]["mean"] / reference["training_seconds"]["mean"] for m in methods]
    ax.bar([x - width for x in xs], accuracy, width, label="test accuracy (%)", color="tab:green")
    twin = ax.twinx()
    twin.bar(list(xs), memory, width, label="peak memory (x full)", color="tab:blue")
    twin.bar([x + width for x in xs], time, width, label="training time (x full)", color="tab:orange")
    ax.set_xticks(list(xs), methods, rotation=30, ha="right")
    ax.set(title="Accuracy, memory and time per method", ylabel="test accuracy (%)")
    twin.set_ylabel("relative to full fine-tuning")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center", ncol=3)
    ax.set_ylim(0, max(accuracy) * 1.3)
    finite = [v for v in memory + time if math.isfinite(v)]
    twin.set_ylim(0, max([*finite, 1.0]) * 1.3)


def render_report(results_path: str | Path, output: str | Path | None = None) -> list[Path]:
    """Write the figure and the markdown table from a results JSON alone."""
    results_path = Path(results_path)
    results = json.loads(results_path.read_text(encoding="utf-8"))
    if results.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{results_path}: schema_version {results.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    folder = Path(output) if output else results_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if not results["runs"]:
        raise ValueError(f"{results_path}: no finished runs to report")
    table = folder / TABLE_FILE
    table.write_text(markdown_table(results), encoding="utf-8")
    return [render_figure(results, folder / FIGURE_FILE), table]
