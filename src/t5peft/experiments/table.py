"""The comparison's table, ``results.md``, from a results file alone (one row per method, the sweeps below; over
several tasks, one block per task and the mean over tasks)."""

from __future__ import annotations

from typing import Any

from .layout import FIGURE_FILE, MEMORY_FIGURE_FILE, task_figure_files
from .results import BYTES_PER_ADAMW_STATE, BYTES_PER_GRADIENT, BYTES_PER_WEIGHT, CHOSEN_ON
from .share import describe_share, shared

SHARED_MARK = "†"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def _pm(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    if stat["n"] > 1:
        return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f}"


def _lr_cell(s: dict[str, Any]) -> str:
    return f"{s['learning_rate']:g}{'*' if s['learning_rate_chosen_on_validation'] else ''}"


def task_view(results: dict[str, Any], task: str) -> dict[str, Any]:
    """The results of one task of a comparison over several, laid out as a comparison of that task alone."""
    entry = results["tasks"][task]
    runs = [r for r in results["runs"] if r.get("task") == task]
    return {**results, "runs": runs, "summary": entry["summary"], "sweeps": entry["sweeps"], "tasks": {task: entry}}


def markdown_table(results: dict[str, Any]) -> str:
    tasks = list(results.get("tasks") or {})
    if len(tasks) <= 1:
        return _one_task_table(results)
    blocks = [f"# T5 PEFT comparison: {results['experiment'].get('name', '')}\n"]
    for index, task in enumerate(tasks):
        figures = task_figure_files(task, index == 0)
        blocks.append(_one_task_table(task_view(results, task), heading=f"## Task {task}", figures=figures))
    return "\n".join([*blocks, *_mean_lines(results, tasks)]) + "\n"


def _mean_lines(results: dict[str, Any], tasks: list[str]) -> list[str]:
    """The mean over tasks of each method's mean test accuracy and metric of record, as GLUE reports."""
    metrics = {task: next(iter(results["tasks"][task]["summary"].values()))["test_metric"]["name"] for task in tasks}
    lines = [
        "## Mean over tasks",
        "",
        "Per task: the mean test accuracy over seeds, and the task's metric of record where it is not accuracy. "
        "Mean: the mean over tasks of each task's metric of record (accuracy unless the task names another).",
        "",
        "| Method | " + " | ".join(f"{t} ({metrics[t]}, %)" for t in tasks) + " | Mean (%) |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]
    for method, mean in results.get("mean_over_tasks", {}).items():
        cells = [f"{results['tasks'][t]['summary'][method]['test_metric']['mean'] * 100:.2f}" for t in tasks]
        lines.append(f"| {method} | {' | '.join(cells)} | {mean['test_metric'] * 100:.2f} |")
    return lines


def _one_task_table(
    results: dict[str, Any], heading: str | None = None, figures: tuple[str, str] = (FIGURE_FILE, MEMORY_FIGURE_FILE)
) -> str:
    env = results.get("environment") or {}
    runs, sweeps = results["runs"], results.get("sweeps", {})
    test_n = sorted({r["test_n"] for r in runs})
    measured = "peak CUDA allocated memory on GPU, peak process resident memory (RSS) on CPU"
    title = f"# T5 PEFT comparison: {results['experiment'].get('name', '')}"
    lines = [
        heading or title,
        "",
        f"Weights: **{results['weights']}**. Machine: {env.get('device_name', '?')}. Date: {env.get('date', '?')}. "
        f"Commit: {env.get('git_commit', '?')}. Test reviews per run: {', '.join(map(str, test_n))}.",
        "Accuracy: mean ± standard deviation over seeds (n seeds). "
        + (
            "LR: learning rate; * chosen per method on validation accuracy (see below), never on test. "
            if sweeps
            else ""
        )
        + f"Training state: counted, {BYTES_PER_WEIGHT + BYTES_PER_GRADIENT + BYTES_PER_ADAMW_STATE} bytes per "
        f"trainable parameter (fp32 weight, gradient, AdamW moments). Peak memory: measured, {measured}.",
        f"Figure 1 (`{figures[0]}`): loss, validation accuracy, accuracy vs parameters, time and memory. "
        f"Figure 2 (`{figures[1]}`): memory per method.",
        "",
        "| Method | LR | Test acc. (%) | Val. acc. (%) | Trainable params | % of base | Fewer than full "
        "| Training state | Peak memory | Train time (s) | Examples/s | Adapter file | Seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in results["summary"].items():
        fewer = s["fewer_parameters_than_full"]
        mark = f" {SHARED_MARK}" if shared(s.get("device_share")) else ""
        lines.append(
            f"| {method} | {_lr_cell(s)} | {_pm(s['test_accuracy'], 100)} | {_pm(s['validation_accuracy'], 100)} "
            f"| {s['trainable_parameters']:,} | {s['trainable_percent']:.3f} | "
            f"{'1 x' if method == 'full' else f'{fewer:,.0f} x' if fewer else '-'} "
            f"| {human_bytes(s['counted_memory_bytes']['training_state'])} "
            f"| {_mib(s['peak_memory_bytes']['mean'])} | {_pm(s['training_seconds'], 1, 1)}{mark} "
            f"| {_pm(s['examples_per_s'], 1, 1)}{mark} | {s['adapter_file_bytes'] / 1024:,.0f} KiB "
            f"| {len(s['seeds'])} |"
        )
    lines += ["", _sharing_note(results["summary"])]
    lines += _storage_lines(results["summary"])
    if sweeps:
        lines += _sweep_lines(sweeps)
    if results.get("not_finished"):
        lines += ["", f"Not finished, so not in this report: {', '.join(results['not_finished'])}."]
    ranks = [r for r in runs if r["method_report"].get("final_ranks")]
    if ranks:
        lines += ["", "AdaLoRA final ranks (sum over modules):"]
        lines += [
            f"- seed {r['seed']}, lr {r['learning_rate']:g}: {sum(r['method_report']['final_ranks'].values())}"
            for r in ranks
        ]
    return "\n".join(lines) + "\n"


def _storage_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Rows on a stored base (``lora@nf4``): how the base was stored and the bytes its weights are counted at."""
    stored = {m: s for m, s in summary.items() if s.get("base_precision", "fp32") != "fp32"}
    if not stored:
        return []
    lines = ["", "Base precision of every row is fp32 but (frozen weights counted at the bytes they are stored in):"]
    lines += [
        f"- {m}: {s['base_precision']}, all weights counted {human_bytes(s['counted_memory_bytes']['weights'])}"
        for m, s in stored.items()
    ]
    return lines


def _sweep_lines(sweeps: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Learning rates chosen on validation",
        "",
        f"Per method, the learning rate with the best {CHOSEN_ON}. The test accuracy of every value is shown "
        "for the record; it played no part in the choice.",
        "",
        "| Method | LR | Val. acc. (%) | Val. loss | Test acc. (%) | Seeds | Chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, sweep in sweeps.items():
        for v in sweep["values"]:
            lines.append(
                f"| {method} | {v['learning_rate']:g} | {_pm(v['validation_accuracy'], 100)} "
                f"| {_pm(v['validation_loss'], 1, 4)} | {_pm(v['test_accuracy'], 100)} "
                f"| {', '.join(map(str, v['seeds']))} | {'yes' if v['chosen'] else ''} |"
            )
    incomplete = [m for m, s in sweeps.items() if not s["complete"]]
    if incomplete:
        lines += ["", f"Sweep not complete yet (chosen among the runs that finished): {', '.join(incomplete)}."]
    return lines


def _sharing_note(summary: dict[str, dict[str, Any]]) -> str:
    """Whether the times in the table were measured with the device to each run alone (see ``share``)."""
    shares = {method: s.get("device_share") for method, s in summary.items()}
    unrecorded = [m for m, share in shares.items() if share is None or share["unrecorded"]]
    sharing: dict[str, list[str]] = {}
    for method, share in shares.items():
        if shared(share):
            sharing.setdefault(describe_share(share), []).append(method)
    parts = []
    if sharing:
        how = "; ".join(f"{', '.join(methods)}: {text}" for text, methods in sharing.items())
        parts.append(
            f"{SHARED_MARK} Timed while other runs of the plan trained on the same device ({how}): these times and "
            "rates show the device's load as much as the method; compare them only with times taken under the "
            "same load."
        )
    if unrecorded and len(unrecorded) == len(shares):
        parts.append(
            "Whether runs shared the device while they were timed is not recorded (results made before t5peft "
            "recorded it): compare the times with care."
        )
    elif unrecorded:
        parts.append(f"Whether runs shared the device is not recorded for: {', '.join(unrecorded)}.")
    if not sharing and not unrecorded:
        parts.append("Every run was timed with its device to itself (no other run of the plan on it at the time).")
    return " ".join(parts)
