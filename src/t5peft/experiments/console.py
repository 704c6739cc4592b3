"""What ``compare`` prints: the plan's progress bars, one line per finished, failed or interrupted run, and the
closing table with the paths of the outputs.

The lines go through :mod:`logging` (the logger ``t5peft.compare``): finished runs, the table and the outputs at
INFO, failed and interrupted runs at WARNING, each launch at DEBUG; a caller may pass its own ``say`` instead.
The command line sends the logger to standard output through :class:`BarSafeHandler`, so a message is written
above the progress bars instead of through them, and picks the level with ``-v`` (DEBUG) / ``-q`` (WARNING).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .layout import EXPERIMENT_FILE, FIGURE_FILE, MEMORY_FIGURE_FILE, RESULTS_FILE, RUNS, TABLE_FILE
from .plan import Leftover, Request
from .pool import Launch, RunOutcome

Say = Callable[[str], None]
log = logging.getLogger("t5peft.compare")


class BarSafeHandler(logging.StreamHandler):
    """Writes each record with ``tqdm.write``: above the progress bars, which are redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging.StreamHandler does: never let a log line end the program
            self.handleError(record)


def configure_logging(level: int, stream: TextIO | None = None) -> logging.Logger:
    """Send ``compare``'s lines to ``stream`` (standard output) as plain lines, from ``level`` up."""
    handler = BarSafeHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False  # the root logger's "LEVEL message" format is for the other commands
    return log


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class Console:
    """One bar for the plan and, on a terminal, one line per running job (the worker's own latest output);
    messages print above them. Without a terminal the job lines are left out (each redraw would be a line)."""

    def __init__(self, title: str, total: int, done: int, jobs: int, progress: bool, say: Say | None) -> None:
        """``say``: where a line goes (None: the logger, at INFO, or WARNING for a failed run)."""
        self.progress, self.own_say = progress, say
        self.say: Say = say or log.info
        self.warn: Say = say or log.warning
        self.live = progress and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=done, desc=title, unit="run", disable=not progress, position=0)
        self.slots = [
            tqdm(total=0, bar_format="{desc}", disable=not self.live, position=i + 1, leave=False) for i in range(jobs)
        ]
        self.shown = [""] * jobs

    def message(self, text: str, warning: bool = False) -> None:
        if self.own_say is not None and self.progress:  # a caller's own say, with bars up
            tqdm.write(text, file=sys.stdout)
        else:
            (self.warn if warning else self.say)(text)

    def show(self, slot: int, text: str) -> None:
        if not self.live:
            return
        text = text[: max(20, shutil.get_terminal_size().columns - 1)]
        if text != self.shown[slot]:
            self.shown[slot] = text
            self.slots[slot].set_description_str(text, refresh=True)

    def running(self, launch: Launch) -> None:
        self.show(launch.slot, f"  {launch.request.name}: {launch.pump.latest}")

    def ended(self, launch: Launch, outcome: RunOutcome) -> None:
        if outcome.status == "finished":
            self.message(finished_line(launch.request, outcome.finished - outcome.started))
        else:
            self.message(failed_line(launch, outcome.exit_code), warning=True)
        self.bar.update(1)

    def close(self) -> None:
        for bar in self.slots:
            bar.close()
        self.bar.close()


def finished_line(request: Request, seconds: float) -> str:
    results = json.loads(request.folder.results.read_text(encoding="utf-8"))
    test, training = results["test"], results["training"]
    return (
        f"done {request.describe()}: test accuracy {test['accuracy']:.4f} on {test['n']:,} reviews, "
        f"validation {results['validation']['accuracy']:.4f}, {training['seconds']:.1f} s training, "
        f"{seconds:.1f} s in all -> {shown(request.folder.root)}"
    )


def failed_line(launch: Launch, code: int | None) -> str:
    cause = launch.pump.last_line[:300] or "no output"
    return f"FAILED {launch.request.describe()} (exit {code}): {cause} -- log: {shown(launch.request.folder.log)}"


def interrupted_line(request: Request, left: Leftover) -> str:
    """What an interrupted run left, and what the next compare will do with it."""
    at = f" (last log point: step {left.last_step})" if left.last_step is not None else ""
    if left.kind == "finished":
        return f"{request.describe()} had finished before it stopped; its results are kept"
    if left.kind == "checkpoint":
        return (
            f"interrupted {request.describe()}{at}: its checkpoint after epoch {left.epochs_done} of "
            f"{request.config.epochs} will be resumed ({shown(request.folder.checkpoint)})"
        )
    if left.kind == "partial":
        return f"interrupted {request.describe()}{at}: no checkpoint yet (it saves one per epoch), it starts again"
    if left.kind == "removed":
        return f"interrupted {request.describe()} before it began training; its folder was removed"
    return f"interrupted {request.describe()} before it began training; it starts again"


OUTPUTS = (
    (RESULTS_FILE, "every run, the sweeps and the summary"),
    (TABLE_FILE, "this table"),
    (FIGURE_FILE, "figure 1: curves, accuracy vs parameters, time and memory"),
    (MEMORY_FIGURE_FILE, "figure 2: memory per method"),
    (EXPERIMENT_FILE, "the plan"),
)


def print_summary(output: Path, say: Say, tensorboard: Path | None = None) -> list[Path]:
    """The table and the paths of the outputs (with the runs' TensorBoard folder when they write one); returns
    those paths."""
    say("")
    say((output / TABLE_FILE).read_text(encoding="utf-8").rstrip())
    say("")
    say("outputs:")
    for name, text in OUTPUTS:
        say(f"  {output / name}: {text}")
    for extra in sorted(output.glob("t5_peft_*-*.png")):  # the figures of the further tasks of a comparison
        say(f"  {extra}: a figure of task {extra.stem.split('-', 1)[1]}")
    say(f"  {output / RUNS}/: one folder per run, with its run.log")
    if tensorboard is not None:
        say(f"  {shown(tensorboard)}/: TensorBoard events, one run per run (tensorboard --logdir {shown(tensorboard)})")
    return [output / name for name, _ in OUTPUTS]
