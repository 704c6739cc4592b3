"""The comparison's outputs: ``t5_peft_results.json``, two figures and ``results.md``.

The JSON is built from the run folders (:mod:`.results`); the table (:mod:`.table`) and the figures
(:mod:`.figures`) are rendered from the JSON alone (:func:`render_report`), so ``t5peft report`` can redo
them anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .figures import render_figure, render_memory_figure
from .layout import FIGURE_FILE, MEMORY_FIGURE_FILE, RESULTS_FILE, TABLE_FILE, task_figure_files
from .results import collect_results, read_results
from .table import markdown_table, task_view


def render_report(results_path: str | Path, output: str | Path | None = None, *, html: bool = False) -> list[Path]:
    """Write the two figures and the markdown table from a results JSON alone; ``html``: also the page
    (:mod:`.html`, ``report.html``)."""
    results_path = Path(results_path)
    results = read_results(results_path)
    folder = Path(output) if output else (results_path if results_path.is_dir() else results_path.parent)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / TABLE_FILE
    table.write_text(markdown_table(results), encoding="utf-8")
    tasks = list(results.get("tasks") or {})
    if len(tasks) <= 1:
        written = [
            render_figure(results, folder / FIGURE_FILE),
            render_memory_figure(results, folder / MEMORY_FIGURE_FILE),
            table,
        ]
    else:
        written = []
        for index, task in enumerate(tasks):  # each task's figures, titled with the task
            figure, memory = task_figure_files(task, index == 0)
            view = task_view(results, task)
            written += [render_figure(view, folder / figure), render_memory_figure(view, folder / memory)]
        written.append(table)
    if html:
        from .html import HTML_FILE, write_html

        written.append(write_html(results, folder / HTML_FILE))
    return written


def write_report(
    experiment: dict[str, Any], output: Path, run_folders: list[Path], missing: list[str] | None = None
) -> Path:
    """Rewrite the results JSON from finished run folders, then the table and the figures from it."""
    results = collect_results(experiment, run_folders, missing=missing, root=output)
    path = output / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    render_report(path, output)
    return path
