"""The comparison's figures, from a results file alone (matplotlib, drawn off-screen).

* Figure 1, ``t5_peft_comparison.png``: training loss, validation accuracy during training, test accuracy
  against trainable parameters, and training time / measured peak memory relative to full fine-tuning (a
  method whose runs shared their device while timed is marked there, and the panel says so).
* Figure 2, ``t5_peft_memory.png``: memory per method counted from the parameter counts (fp32 weights, and
  gradients + AdamW moments of the trainable ones), which separates the methods even where the measured peak
  (process RSS on a CPU) does not, beside CUDA's allocator peak where the runs report one.
"""

from __future__ import annotations

import itertools
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any

from .results import BYTES_PER_ADAMW_STATE, BYTES_PER_GRADIENT, BYTES_PER_WEIGHT
from .share import describe_share, shared
from .table import SHARED_MARK, human_bytes

# tab10 without its grey (the bar panels use greys for quantities that are not methods), then four dark tab20b
# hues, so that each of the 13 registered methods has a colour and a marker of its own
METHOD_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#393b79", "#8c6d31", "#637939", "#7b4173",
)  # fmt: skip
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8")
METHOD_DASHES = ("-", "--", "-.", ":", (0, (6, 2)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2, 2, 2)))
QUANTITY_GREYS = ("0.25", "0.55", "0.8")


def method_styles(methods: list[str]) -> dict[str, dict[str, Any]]:
    """One colour, marker and dash pattern per method, the same in every panel and figure."""
    return {
        m: {
            "color": METHOD_COLORS[i % len(METHOD_COLORS)],
            "marker": METHOD_MARKERS[i % len(METHOD_MARKERS)],
            "linestyle": METHOD_DASHES[i % len(METHOD_DASHES)],
        }
        for i, m in enumerate(methods)
    }


def _chosen_runs(results: dict[str, Any], method: str) -> list[dict[str, Any]]:
    lr = results["summary"][method]["learning_rate"]
    return [r for r in results["runs"] if r["method"] == method and r["learning_rate"] == lr]


def _seed_band(runs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Epochs and the mean, min and max over seeds of ``key`` at each logged step."""
    by_step: dict[int, list[float]] = {}
    epochs: dict[int, float] = {}
    for run in runs:
        for point in run["curve"]:
            by_step.setdefault(point["step"], []).append(point[key])
            epochs[point["step"]] = point["epoch"]
    steps = sorted(by_step)
    return (
        [epochs[s] for s in steps],
        [statistics.fmean(by_step[s]) for s in steps],
        [min(by_step[s]) for s in steps],
        [max(by_step[s]) for s in steps],
    )


def _label(method: str, summary: dict[str, Any]) -> str:
    s = summary[method]
    return f"{method} (lr {s['learning_rate']:g}*)" if s["learning_rate_chosen_on_validation"] else method


def _dodge(results: dict[str, Any], methods: list[str]) -> float:
    """Sideways step between methods' markers in the validation panel, in epochs (0 for a single method)."""
    epochs = sorted({p["epoch"] for r in results["runs"] for p in r["curve"]})
    if len(methods) < 2 or len(epochs) < 2:
        return 0.0
    spacing = min(b - a for a, b in itertools.pairwise(epochs) if b > a)
    spread = min(0.7 * spacing, 0.12 * (epochs[-1] - epochs[0]))
    return spread / (len(methods) - 1)


def _curve_panel(ax, results, methods, styles, key: str, scale: float, dodge: float) -> None:
    summary = results["summary"]
    for i, method in enumerate(methods):
        x, mean, low, high = _seed_band(_chosen_runs(results, method), key)
        shift = (i - (len(methods) - 1) / 2) * dodge
        x = [v + shift for v in x]
        style = styles[method]
        if len(summary[method]["seeds"]) > 1:
            ax.fill_between(x, [scale * v for v in low], [scale * v for v in high], color=style["color"], alpha=0.12)
        ax.plot(
            x,
            [scale * v for v in mean],
            label=_label(method, summary),
            color=style["color"],
            linestyle=style["linestyle"],
            marker=style["marker"],
            markersize=6,
            markerfacecolor="none",
            markeredgewidth=1.3,
            linewidth=1.3,
        )


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 9) -> list:
    """Annotate each point with its label where it overlaps no other label, no marker and stays in the axes;
    labels moved away from their point get a thin leader line. Call once the axes' layout is final."""
    import matplotlib.patheffects as effects
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    shown = [ax.transData.transform(p) for p in points]
    pad = 5.0 * fig.dpi / 72
    taken = [Bbox.from_extents(x - pad, y - pad, x + pad, y + pad) for x, y in shown]
    candidates = [
        (radius * math.cos(math.radians(angle)), radius * math.sin(math.radians(angle)))
        for radius in (7, 16, 28, 42, 58)
        for angle in (20, -20, 160, -160, 90, -90, 55, -55, 125, -125)
    ]
    texts = []
    order = sorted(range(len(points)), key=lambda i: (-shown[i][1], shown[i][0]))
    for i in order:
        best = None
        for dx, dy in candidates:
            text = ax.annotate(
                labels[i],
                points[i],
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha="left" if dx > 1 else "right" if dx < -1 else "center",
                va="bottom" if dy > 1 else "top" if dy < -1 else "center",
            )
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            overlap = sum(_area(box, other) for other in taken) + _outside(box, inside)
            if best is None or overlap < best[0]:
                if best is not None:
                    best[1].remove()
                best = (overlap, text, box, math.hypot(dx, dy))
            else:
                text.remove()
            if overlap == 0:
                break
        _, text, box, distance = best
        if distance > 10:
            ax.annotate(
                "",
                points[i],
                xytext=_nearest_point(box, shown[i], ax),
                textcoords="data",
                arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3},
            )
        text.set_path_effects([effects.withStroke(linewidth=2.5, foreground="white")])
        taken.append(box)
        texts.append(text)
    return texts


def _area(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _outside(box, inside) -> float:
    return box.width * box.height - _area(box, inside)


def _nearest_point(box, point, ax) -> tuple[float, float]:
    x = min(max(point[0], box.x0), box.x1)
    y = min(max(point[1], box.y0), box.y1)
    return tuple(ax.transData.inverted().transform((x, y)))


def build_figure(results: dict[str, Any]):
    """Figure 1: loss and validation accuracy during training, test accuracy vs trainable parameters, and
    training time / measured peak memory relative to full fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    methods = list(summary)
    styles = method_styles(methods)
    fig, axes = plt.subplots(2, 2, figsize=(15, 11))
    (loss_ax, acc_ax), (params_ax, cost_ax) = axes
    several = any(len(s["seeds"]) > 1 for s in summary.values())
    band = "; band: min to max over seeds" if several else ""
    _curve_panel(loss_ax, results, methods, styles, "train_loss", 1.0, 0.0)
    loss_ax.set(
        title=f"(a) Training loss, mean over seeds{band}\n"
        "teacher-forced cross-entropy per target token (label word + </s>), averaged since the last log point",
        xlabel="epoch",
        ylabel="training loss (nats per target token)",
    )
    dodge = _dodge(results, methods)
    _curve_panel(acc_ax, results, methods, styles, "val_accuracy", 100.0, dodge)
    shifted = (
        f"\nmarkers shifted sideways by up to ±{dodge * (len(methods) - 1) / 2:.2g} epoch so that equal values "
        "stay visible"
        if dodge
        else ""
    )
    acc_ax.set(
        title=f"(b) Validation accuracy during training, mean over seeds{band}{shifted}",
        xlabel="epoch",
        ylabel="validation accuracy (%)",
    )
    for ax in (loss_ax, acc_ax):
        ax.title.set_fontsize(9.5)
        ax.grid(alpha=0.3)
    handles, names = acc_ax.get_legend_handles_labels()  # one legend: each method looks the same in every panel
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=min(len(names), 8), fontsize=9)
    xs, ys = _params_panel(params_ax, summary, methods, styles)
    _cost_panel(cost_ax, summary, methods)
    fig.suptitle(_title("Figure 1", results), fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 0.945 if len(methods) <= 8 else 0.92))
    fig.canvas.draw()
    place_labels(params_ax, list(zip(xs, ys, strict=True)), [_label(m, summary) for m in methods])
    if any(s["learning_rate_chosen_on_validation"] for s in summary.values()):
        fig.text(
            0.01,
            0.005,
            "* learning rate chosen per method on mean validation accuracy over seeds (never on test); "
            "every value is in the JSON and the table",
            fontsize=8,
        )
    return fig


def _task_title(results: dict[str, Any]) -> str:
    tasks = list(results.get("tasks") or {"imdb": None})
    return ", ".join("IMDb" if task == "imdb" else task for task in tasks)


def _title(figure: str, results: dict[str, Any]) -> str:
    env = results.get("environment") or {}
    return (
        f"{figure} — T5 PEFT on {_task_title(results)} — {results['experiment'].get('name', '')} — "
        f"weights: {results['weights']} — "
        f"{env.get('device_name', '')} — {(env.get('date') or '')[:10]}"
    )


def _params_panel(ax, summary, methods, styles) -> tuple[list[float], list[float]]:
    xs = [summary[m]["trainable_parameters"] for m in methods]
    ys = [100 * summary[m]["test_accuracy"]["mean"] for m in methods]
    for method, x, y in zip(methods, xs, ys, strict=True):
        style = styles[method]
        ax.errorbar(
            x,
            y,
            yerr=100 * summary[method]["test_accuracy"]["std"],
            fmt=style["marker"],
            color=style["color"],
            markersize=8,
            capsize=3,
        )
    ax.set(
        title="(c) Test accuracy vs trainable parameters (error bar: std over seeds)",
        xlabel="trainable parameters (log scale)",
        ylabel="test accuracy (%)",
        xscale="log",
    )
    ax.margins(x=0.25, y=0.35)
    ax.grid(alpha=0.3, which="both")
    return xs, ys


def _cost_panel(ax, summary: dict, methods: list[str]) -> None:
    """Training time and measured peak memory per method, relative to full fine-tuning (or the slowest)."""
    reference_name = "full" if "full" in summary else max(summary, key=lambda m: summary[m]["training_seconds"]["mean"])
    reference = summary[reference_name]
    kind = next(iter(summary.values()))["peak_memory_kind"]
    memory_label = "peak CUDA allocated (measured)" if kind == "cuda_max_allocated_bytes" else "peak RSS (measured)"
    width = 0.38
    xs = list(range(len(methods)))
    time = [summary[m]["training_seconds"]["mean"] / reference["training_seconds"]["mean"] for m in methods]
    memory = [summary[m]["peak_memory_bytes"]["mean"] / reference["peak_memory_bytes"]["mean"] for m in methods]
    ax.bar([x - width / 2 for x in xs], time, width, label="training time", color=QUANTITY_GREYS[0])
    ax.bar(
        [x + width / 2 for x in xs],
        memory,
        width,
        label=memory_label,
        color=QUANTITY_GREYS[2],
        hatch="//",
        edgecolor="0.35",
    )
    ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xticks(xs, methods, rotation=30, ha="right")
    sharing = _sharing_title(summary, methods)
    ax.set(
        title=f"(d) Training time and measured peak memory, relative to {reference_name}{sharing}",
        ylabel=f"x {reference_name} (dashed line = 1)",
    )
    if sharing:
        ax.title.set_fontsize(9.5)
    finite = [v for v in time + memory if math.isfinite(v)]
    ax.set_ylim(0, max([*finite, 1.0]) * 1.25)
    for x, method, value in zip(xs, methods, time, strict=True):
        if shared(summary[method].get("device_share")) and math.isfinite(value):
            ax.annotate(
                SHARED_MARK,
                (x - width / 2, value),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=10,
            )
    ax.legend(fontsize=8, loc="upper right")
    if kind == "peak_cpu_rss_bytes":
        ax.text(
            0.01,
            0.97,
            "On a CPU the process's peak RSS is dominated by the runtime\n"
            "and the data; figure 2 separates the methods.",
            transform=ax.transAxes,
            fontsize=7.5,
            color="0.3",
            va="top",
        )


def _sharing_title(summary: dict, methods: list[str]) -> str:
    """A second title line when some methods' runs were timed on a shared device (nothing otherwise)."""
    marked = [m for m in methods if shared(summary[m].get("device_share"))]
    if not marked:
        return ""
    most = max(summary[m]["device_share"]["runs_at_once"] for m in marked)
    threads = list(dict.fromkeys(t for m in marked for t in summary[m]["device_share"]["threads"]))
    how = describe_share({"runs_at_once": most, "threads": threads})
    which = "every method" if len(marked) == len(methods) else f"{SHARED_MARK}: {', '.join(marked)}"
    line = f"{which} timed while runs shared the device ({how}): times show the load, not only the method"
    return "\n" + textwrap.fill(line, 95)


def build_memory_figure(results: dict[str, Any]):
    """Figure 2: memory per method, counted from parameter counts, beside CUDA's measured peak where reported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    summary = results["summary"]
    methods = list(summary)
    styles = method_styles(methods)
    cuda = all(s["peak_memory_kind"] == "cuda_max_allocated_bytes" for s in summary.values())
    quantities = [
        ("trainable weights + gradients + AdamW moments (counted)", "", "training_state"),
        ("all weights + gradients + AdamW moments (counted)", "//", "total"),
    ]
    if cuda:
        quantities.append(("peak CUDA allocated (measured)", "..", "cuda"))
    height = 0.8 / len(quantities)
    fig, ax = plt.subplots(figsize=(12, 2.5 + 0.45 * len(methods) * len(quantities)))
    for row, method in enumerate(methods):
        s = summary[method]
        for k, (_, hatch, key) in enumerate(quantities):
            value = s["peak_memory_bytes"]["mean"] if key == "cuda" else s["counted_memory_bytes"][key]
            y = row + (k - (len(quantities) - 1) / 2) * height
            ax.barh(y, value, height * 0.9, color=styles[method]["color"], hatch=hatch, edgecolor="white", alpha=0.9)
            ax.text(value * 1.08, y, human_bytes(value), va="center", fontsize=8)
    ax.set_yticks(range(len(methods)), [_label(m, summary) for m in methods])
    ax.invert_yaxis()
    ax.set_xscale("log")
    low = min(s["counted_memory_bytes"]["training_state"] for s in summary.values())
    high = max(
        max(s["counted_memory_bytes"]["total"], s["peak_memory_bytes"]["mean"] if cuda else 0) for s in summary.values()
    )
    ax.set_xlim(low / 3, high * 6)
    ax.set_xlabel("bytes (log scale)")
    ax.grid(alpha=0.3, axis="x", which="both")
    handles = [Patch(facecolor="0.6", hatch=hatch, edgecolor="white", label=text) for text, hatch, _ in quantities]
    ax.legend(handles=handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(quantities))
    counted = (
        f"Counted from each method's parameter counts, in fp32: {BYTES_PER_WEIGHT} B per weight, and "
        f"{BYTES_PER_GRADIENT} B gradient + {BYTES_PER_ADAMW_STATE} B AdamW moments per trainable parameter"
        + (
            "; a row on a stored base (name@bf16, @nf4, @int8) counts its frozen weights at the bytes they are "
            "stored in (bf16: 2 B; NF4: 0.5 B + scales, 0.516 B per weight; int8: 1 B + a scale per row)."
            if any(s.get("base_precision", "fp32") != "fp32" for s in summary.values())
            else "."
        )
    )
    measured = (
        " Measured: the CUDA allocator's peak in each run (weights, training state, activations and workspace)."
        if cuda
        else " Activations are not counted: no allocator reports them on a CPU (figure 1 (d) has the measured peak "
        "RSS, which is about the same for every method)."
    )
    chosen = (
        " * learning rate chosen on mean validation accuracy over seeds."
        if any(s["learning_rate_chosen_on_validation"] for s in summary.values())
        else ""
    )
    fig.suptitle(_title("Figure 2", results) + "\nMemory per method (colour = method, as in figure 1)", fontsize=11)
    caption = textwrap.fill(counted + measured + chosen, 160)
    fig.text(0.01, 0.01, caption, fontsize=8, va="bottom")
    caption_inches = 0.15 * (caption.count("\n") + 1) + 0.15
    fig.tight_layout(rect=(0, caption_inches / fig.get_figheight(), 1, 1))
    return fig


def render_figure(results: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = build_figure(results)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_memory_figure(results: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = build_memory_figure(results)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
