"""``t5peft report RESULTS.json --html``: the comparison as one self-contained HTML page, viewable offline.

From the results file alone, as the table and the figures are: the table (:mod:`.table`'s markdown, turned into
HTML here, so the page and ``results.md`` say the same), the two figures (:mod:`.figures`) and one small figure of
curves per method (training loss and validation accuracy of each seed, on axes shared by every method), each
embedded as a base64 PNG; every run's settings, results and data origins in a ``<details>`` element (open on a
click); the environment. No script, no external style sheet, font or image: the file can be mailed or opened
from a disk without a network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from .figures import build_figure, build_memory_figure, method_styles
from .table import markdown_table

HTML_FILE = "report.html"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 1.5em; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; white-space: normal; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; } img { max-width: 100%; height: auto; }
.methods { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; }
.method { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.9em; }
.method h3 { margin: 0.2em 0; } .swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
  border-radius: 2px; vertical-align: -0.1em; }
details { margin: 0.3em 0; } summary { cursor: pointer; } pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto;
  font-size: 0.8em; } .note { color: #555; font-size: 0.92em; } .warn { background: #fff4d6; padding: 0.5em 0.8em; }
"""


def _png(figure: Any, dpi: int) -> str:
    """A matplotlib figure as a ``data:`` URI (and closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _inline(text: str) -> str:
    """Markdown's inline code and bold in escaped text."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _table_html(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    head, body = cells[0], [r for r in cells[2:]]  # cells[1] is the |---| line
    out = ["<div class='scroll'><table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join([*out, "</table></div>"])


def markdown_to_html(text: str) -> str:
    """The markdown :func:`.table.markdown_table` writes (headings, paragraphs, lists, pipe tables) as HTML."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            out.append(_table_html(lines[start:i]))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)  # the page's own h1 is above
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p class='note'>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Per-method curves


def _curve_limits(runs: list[dict[str, Any]]) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Shared y-limits of the loss and accuracy panels, and the last epoch, over every run."""
    losses = [p["train_loss"] for r in runs for p in r["curve"] if p.get("train_loss") is not None]
    accuracies = [100 * p["val_accuracy"] for r in runs for p in r["curve"]]
    epochs = [p["epoch"] for r in runs for p in r["curve"]] or [1.0]
    pad = lambda lo, hi: (lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1))  # noqa: E731
    return (
        pad(min(losses, default=0.0), max(losses, default=1.0)),
        pad(min(accuracies, default=0.0), max(accuracies, default=100.0)),
        max(epochs),
    )


def method_curves(results: dict[str, Any], method: str, style: dict[str, Any], limits) -> Any:
    """Training loss and validation accuracy of each run of ``method`` (every seed and learning rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_limits, accuracy_limits, last_epoch = limits
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(7.2, 2.5))
    runs = [r for r in results["runs"] if r["method"] == method]
    several_lrs = len({r["learning_rate"] for r in runs}) > 1
    color = style["color"]
    for run in runs:  # the method's colour, a lighter shade for each further run
        label = f"seed {run['seed']}" + (f", lr {run['learning_rate']:g}" if several_lrs else "")
        epochs = [p["epoch"] for p in run["curve"]]
        kwargs = dict(color=color, marker=style["marker"], markersize=3, linewidth=1.2, label=label)
        loss_ax.plot(epochs, [p["train_loss"] for p in run["curve"]], **kwargs)
        acc_ax.plot(epochs, [100 * p["val_accuracy"] for p in run["curve"]], **kwargs)
        color = _lighter(color)
    loss_ax.set(ylim=loss_limits, xlim=(0, last_epoch * 1.02), xlabel="epoch", ylabel="training loss")
    acc_ax.set(ylim=accuracy_limits, xlim=(0, last_epoch * 1.02), xlabel="epoch", ylabel="val. accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
    if len(runs) > 1:
        acc_ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def _lighter(color: str) -> str:
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{int(c + 0.35 * (255 - c)):02x}" for c in (red, green, blue))


# --------------------------------------------------------------------------------------------------
# Runs and environment


def _run_settings(run: dict[str, Any]) -> str:
    shown = {
        "folder": run["folder"],
        "config": run["config"],
        "method_options": run["method_options"],
        "parameters": run["parameters"],
        "training": run["training"],
        "memory": run["memory"],
        "data": run["data"],
        "device_share": run.get("device_share"),
        "method_report": run["method_report"],
    }
    summary = (
        f"{run['method']} seed {run['seed']}, lr {run['learning_rate']:g}: test accuracy "
        f"{100 * run['test_accuracy']:.2f}% on {run['test_n']:,} reviews, "
        f"validation {100 * run['validation_accuracy']:.2f}%"
    )
    body = html.escape(json.dumps(shown, indent=2, default=str))
    return f"<details><summary>{html.escape(summary)}</summary><pre>{body}</pre></details>"


def _environment(results: dict[str, Any]) -> str:
    env = results.get("environment") or {}
    packages = env.get("packages") or {}
    rows = [(k, v) for k, v in env.items() if k != "packages"] + [(f"package {k}", v) for k, v in packages.items()]
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _method_section(results: dict[str, Any], method: str, style: dict[str, Any], limits) -> str:
    summary = results["summary"][method]
    accuracy = summary["test_accuracy"]
    swatch = f"<span class='swatch' style='background:{style['color']}'></span>"
    head = (
        f"<h3>{swatch}{html.escape(method)}</h3><p class='note'>test accuracy {100 * accuracy['mean']:.2f}% "
        f"(mean of {len(summary['seeds'])} seed(s)), lr {summary['learning_rate']:g}, "
        f"{summary['trainable_parameters']:,} trainable parameters</p>"
    )
    image = _png(method_curves(results, method, style, limits), dpi=90)
    alt = f"training loss and validation accuracy of {method}"
    runs = "".join(_run_settings(r) for r in results["runs"] if r["method"] == method)
    return f"<div class='method' id='method-{html.escape(method)}'>{head}<img src='{image}' alt='{alt}'>{runs}</div>"


def _without_title(markdown: str) -> str:
    """The table's markdown without its first heading (the page has its own)."""
    lines = markdown.splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines)


def render_html(results: dict[str, Any]) -> str:
    """The whole page of a results file."""
    experiment = results["experiment"]
    methods = list(results["summary"])
    styles = method_styles(methods)
    limits = _curve_limits(results["runs"])
    title = f"T5 PEFT comparison: {experiment.get('name', '')}"
    warning = ""
    if results["weights"] != "pretrained":
        warning = (
            f"<p class='warn'>Weights: <strong>{html.escape(results['weights'])}</strong>: these runs did not start "
            "from a published pretrained T5, so their accuracies say nothing about the methods on t5-small.</p>"
        )
    missing = results.get("not_finished") or []
    unfinished = f"<p class='warn'>Not finished: {html.escape(', '.join(missing))}</p>" if missing else ""
    figure = _png(build_figure(results), dpi=80)
    memory = _png(build_memory_figure(results), dpi=80)
    sections = "".join(_method_section(results, m, styles[m], limits) for m in methods)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(experiment.get('description', ''))}</p>",
        warning,
        unfinished,
        "<h2>Results</h2>",
        markdown_to_html(_without_title(markdown_table(results))),
        "<h2>Figures</h2>",
        f"<img src='{figure}' alt='Figure 1: curves, accuracy against parameters, time and memory'>",
        f"<img src='{memory}' alt='Figure 2: memory per method'>",
        "<h2>Per method: curves and every run's settings</h2>",
        "<p class='note'>Axes are the same for every method. Click a run to see its settings and results.</p>",
        f"<div class='methods'>{sections}</div>",
        "<h2>Environment</h2>",
        _environment(results),
        "<h2>The plan</h2>",
        f"<details><summary>experiment</summary><pre>{html.escape(json.dumps(experiment, indent=2))}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_html(results: dict[str, Any], path: Path) -> Path:
    path.write_text(render_html(results), encoding="utf-8")
    return path
