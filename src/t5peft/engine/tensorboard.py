"""TensorBoard: one more metrics sink of the run skeleton (``--tensorboard [DIR]``), in this one module.

Every log point's record (what ``metrics.jsonl`` gets) becomes scalars, one per numeric key, under the key's own
name (``train_loss``, ``val_accuracy``, ``lr``...), at the record's ``step``; beside them, the throughput and memory
of the run so far (``throughput/examples_per_s``, ``throughput/tokens_per_s``, ``memory/...``), which the
metrics log leaves out because they depend on the machine. At the end of the run the run's settings and its final
metrics go into TensorBoard's HParams table, written into the run's own event file (not a sub-run, which is what
``SummaryWriter.add_hparams`` would make), so ``tensorboard --logdir`` over a ``compare`` shows one row per run.

The events are written with ``torch.utils.tensorboard``, which needs the ``tensorboard`` package: the optional
extra ``t5peft[tensorboard]``; without it, asking for ``--tensorboard`` is a one-line error naming the extra.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import T5PeftError

EXTRA_HINT = "pip install 't5peft[tensorboard]'"
FINAL_PREFIX = "final/"
Measures = Callable[[], Mapping[str, float | None]]


class TensorBoardUnavailable(T5PeftError, ImportError):
    """``--tensorboard`` without the ``tensorboard`` package."""


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises ImportError naming tensorboard when the package is missing
        raise TensorBoardUnavailable(
            f"--tensorboard needs the tensorboard package, which is not installed ({err}); install it with {EXTRA_HINT}"
        ) from None
    return SummaryWriter


def check_available() -> None:
    """Fail now (before a run is set up) when the package is missing."""
    _summary_writer()


def _number(value: Any) -> float | None:
    """A record value TensorBoard can plot: a finite int or float (not a bool); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def flat_hparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Settings as HParams values: nested dicts flattened (``method_options.r``), lists and tuples as text, None
    left out (a column of one type per hparam: TensorBoard cannot compare a missing value with a number)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ", ".join(str(v) for v in value)
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


class TensorBoardSink:
    """Writes a run's log points and, at the end, its HParams entry into ``directory``."""

    def __init__(self, directory: str | Path, measures: Measures | None = None, purge_step: int | None = None) -> None:
        writer_class = _summary_writer()
        self.directory = Path(directory)
        # purge_step: a resumed run's events from this step on replace those the interrupted run had written
        self.writer = writer_class(log_dir=str(self.directory), purge_step=purge_step)
        self.measures = measures
        self.last_step = 0

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", self.last_step))
        self.last_step = step
        for key, value in record.items():
            number = _number(value)
            if key != "step" and number is not None:
                self.writer.add_scalar(key, number, step)
        for key, value in (self.measures() if self.measures else {}).items():
            number = _number(value)
            if number is not None:
                self.writer.add_scalar(key, number, step)
        self.writer.flush()

    def finish(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """The HParams entry: ``hparams`` (flattened) and the final ``metrics``, each also a scalar ``final/KEY``."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        values = {f"{FINAL_PREFIX}{k}": float(v) for k, v in metrics.items() if _number(v) is not None}
        experiment, start, end = hparams_summary(flat_hparams(hparams), values)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary, self.last_step)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, self.last_step)
        self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def write_events(
    directory: str | Path, records: list[dict[str, Any]], hparams: Mapping[str, Any], metrics: Mapping[str, Any]
) -> None:
    """A finished run's events written afterwards, from its log points and final numbers."""
    sink = TensorBoardSink(directory)
    try:
        for record in records:
            sink.write(record)
        sink.finish(hparams, metrics)
    finally:
        sink.close()
