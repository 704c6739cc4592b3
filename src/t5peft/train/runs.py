"""Reopen a finished run folder: its settings, its trained model, evaluation and predictions with it."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from ..data.sources import DataError, LabeledTexts, shared_rows, source_kind
from ..data.text2text import TaskFormat, encode_split
from ..engine.layout import RunFolder, located
from ..engine.precision import store_base
from ..engine.runtime import resolve_device
from ..methods import load_trained
from ..model.t5 import T5ForConditionalGeneration
from ..tokenizer import TOKENIZER_FILES, T5Tokenizer, load_run_tokenizer, load_tokenizer
from .evaluate import evaluate, generation_predictions
from .rows import sample
from .settings import PATH_SETTINGS, TrainConfig, TrainError

log = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    config: TrainConfig
    model: T5ForConditionalGeneration
    tokenizer: T5Tokenizer
    task: TaskFormat


def load_run(run_dir: str | Path, device: str = "cpu") -> TrainedRun:
    folder = RunFolder(Path(run_dir))
    if not folder.run_config.is_file():
        raise TrainError(f"{run_dir}: not a run folder ({folder.run_config.name} not found)")
    cfg = TrainConfig.from_dict(json.loads(folder.run_config.read_text()), str(folder.run_config))
    if not folder.final.is_dir():
        missing = f"{folder.final.name}/ not found"
        raise TrainError(f"{run_dir}: the run has not finished ({missing}); resume it with --resume")
    paths = json.loads(folder.paths.read_text(encoding="utf-8")) if folder.paths.is_file() else {}
    cfg = relocated(cfg, paths)
    base = folder.base if folder.base.is_dir() else cfg.model
    model = load_trained(folder.final, base)
    carried = any((folder.final / name).is_file() for name in TOKENIZER_FILES)  # since 0.2: copied at the end
    tokenizer = load_tokenizer(folder.final) if carried else load_run_tokenizer(cfg.tokenizer, cfg.model)
    resolved = resolve_device(device, TrainError)
    model.to(resolved)
    if model.peft is not None:  # the base stored as the run trained on it (a QLoRA adapter meets its NF4 base)
        store_base(model, cfg.base_dtype, cfg.quantize, resolved, TrainError)
    return TrainedRun(cfg, model.eval(), tokenizer, cfg.task_format())


def relocated(cfg: TrainConfig, paths: dict[str, Any]) -> TrainConfig:
    """The run's settings with each input path where it is now (``layout.located``): the absolute path recorded
    when the run started, so a run folder reopened from another working directory finds what it was trained on."""
    moved = {name: located(paths, name, getattr(cfg, name)) for name in PATH_SETTINGS}
    return dataclasses.replace(cfg, **moved)


def evaluation_texts(run: TrainedRun, data: str | None, split: str | None, size: int | None) -> LabeledTexts:
    """What ``evaluate`` scores: the run's own test set unless a source, split or size says otherwise.

    ``size`` draws a sample as the run drew its test set (stratified, the run's test seed), so a size equal to
    the run's ``test_size`` gives the run's own test set.
    """
    rows = run.config.rows()
    own_test = data is None and split in (None, "test")
    if data is None:
        check_data_is_here(run.config)
    if own_test and size is None:
        texts = rows.test_set()
        texts.origin = f"the run's test set: {texts.origin}"
        return texts
    texts = rows.test_split() if own_test else rows.load(data or rows.data, split or rows.test_split_name)
    return sample(texts, size, rows.test_seed, "--size")


def check_data_is_here(cfg: TrainConfig) -> None:
    """The run's own test set needs the run's data: where it was trained, or with the same absolute paths."""
    for name in ("data", "test_data"):
        value = getattr(cfg, name)
        if value is None:
            continue
        try:
            source_kind(value)
        except DataError:
            raise TrainError(
                f"the run's {name} {value!r} is not here (trained in another folder or on another machine?); "
                "give the data with --data (and --split)"
            ) from None


def overlap_with_training(run: TrainedRun, texts: LabeledTexts) -> dict[str, int] | None:
    """How many of the scored reviews also occur in the run's training and validation reviews, as ``train`` counts
    them for its test set (exact text; counted, never removed): another source or split can hold them too. None
    (with a warning) when the run's own data is not here to count against."""
    try:
        check_data_is_here(run.config)
    except TrainError as err:
        log.warning("overlap with the run's training reviews not counted: %s", err)
        return None
    trained = run.config.rows().texts()
    overlap = {"in_train": shared_rows(texts, trained.train), "in_validation": shared_rows(texts, trained.validation)}
    if overlap["in_train"] or overlap["in_validation"]:
        log.warning(
            "%s of the %s reviews scored also occur in the run's training reviews, %s in its validation reviews",
            f"{overlap['in_train']:,}",
            f"{len(texts):,}",
            f"{overlap['in_validation']:,}",
        )
    return overlap


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str | None = None,
    size: int | None = None,
    batch_size: int = 64,
    generate: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Re-evaluate a finished run; a report dict.

    By default on the run's own test set (same source, size and seed as in training, or the same hold-out);
    ``data`` / ``split`` pick another source or split, ``size`` a seeded sample of it, stratified by label.
    """
    if batch_size < 1:
        raise TrainError(f"batch size must be >= 1, got {batch_size}")
    if size is not None and size < 2:
        raise TrainError(f"--size must be at least 2 (a review of each class), got {size}")
    run = load_run(run_dir, device)
    texts = evaluation_texts(run, data, split, size)
    encoded = encode_split(texts, run.tokenizer, run.task)
    task = run.task.task
    result = evaluate(
        run.model, encoded, run.tokenizer.pad_token_id, batch_size, task.classes, progress=progress, metric=task.metric
    )
    report = {
        "run": str(run_dir),
        "task": task.name,
        "split": split or run.config.rows().test_split_name,
        "source": texts.origin,
        **result.summary(),
    }
    report["overlap"] = overlap_with_training(run, texts)
    if generate:
        generated = generation_predictions(run.model, encoded, run.tokenizer, run.task.label_words, batch_size)
        labels = encoded.labels
        report["generation_accuracy"] = sum(g == t for g, t in zip(generated, labels, strict=True)) / len(encoded)
        report["agreement_with_fast_path"] = sum(
            g == p for g, p in zip(generated, result.predictions, strict=True)
        ) / len(encoded)
    return report


def _read_stdin(stream: TextIO) -> str:
    """Standard input decoded as UTF-8 (strictly: the terminal's locale may let bad bytes through as surrogates)."""
    buffer = getattr(stream, "buffer", None)
    raw = buffer.read() if buffer is not None else stream.read().encode("utf-8", "surrogateescape")
    return raw.decode("utf-8")


@dataclass
class ReviewLines:
    """Reviews read one per line, each with the number of the line it came from; blank lines passed over."""

    numbers: list[int]
    texts: list[str]
    blank_lines: int
    source: str = "standard input"  # the file, or standard input, for messages


def split_review_lines(text: str) -> ReviewLines:
    """Lines at ``\n`` (and ``\r\n``) only: ``str.splitlines`` also breaks at U+0085, U+2028, a lone ``\r``,
    ..., which real reviews contain inside one review."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    numbers, texts = [], []
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if line.strip():
            numbers.append(number)
            texts.append(line)
    return ReviewLines(numbers, texts, len(lines) - len(texts))


def read_texts(path: str, stdin: TextIO | None = None) -> ReviewLines:
    """Reviews to label, one per line, from a file or (``-``) standard input; blank lines are passed over."""
    where = "standard input" if path == "-" else path
    try:
        text = _read_stdin(stdin or sys.stdin) if path == "-" else Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise TrainError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except FileNotFoundError:
        raise TrainError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise TrainError(f"{where}: is a folder; expected a text file with one review per line") from None
    reviews = split_review_lines(text)
    reviews.source = where
    if not reviews.texts:
        raise TrainError(f"{where}: no reviews (one review per line)")
    return reviews


def check_texts(texts: list[str]) -> None:
    """Reviews to label: at least one, none empty."""
    if not texts:
        raise TrainError("no reviews to label")
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise TrainError(f"text {number} is empty: give the review to label")


@torch.no_grad()
def predict(run: TrainedRun, texts: list[str], batch_size: int = 64) -> list[tuple[str, float]]:
    """Class name and its probability (over the task's classes) for each text.

    Scored as evaluation scores them (the task's scoring: first token or whole label sequences): the texts go
    through ``evaluate`` with a placeholder label, which changes only the loss, never the class scores. A task
    with several text columns takes each text as its columns joined by a tab, in the task's column order.
    """
    check_texts(texts)
    if batch_size < 1:
        raise TrainError(f"batch size must be >= 1, got {batch_size}")
    task = run.task.task
    columns = [_columns_of(text, number, task.text_columns) for number, text in enumerate(texts, start=1)]
    more = {name: [row[k] for row in columns] for k, name in enumerate(task.text_columns[1:], start=1)}
    unlabelled = LabeledTexts([row[0] for row in columns], [0] * len(texts), "texts to label", more=more)
    split = encode_split(unlabelled, run.tokenizer, run.task)
    result = evaluate(run.model, split, run.tokenizer.pad_token_id, batch_size, task.classes)
    return [
        (task.classes[guess], row[guess]) for guess, row in zip(result.predictions, result.probabilities, strict=True)
    ]


def _columns_of(text: str, number: int, columns: tuple[str, ...]) -> list[str]:
    """A text to label split into the task's text columns (tab-separated when there are several)."""
    if len(columns) == 1:
        return [text]
    parts = text.split("\t")
    if len(parts) != len(columns) or not all(part.strip() for part in parts):
        raise TrainError(
            f"text {number}: this task reads {len(columns)} texts ({', '.join(columns)}), given as one line "
            f"separated by tabs; got {len(parts)} part(s)"
        )
    return parts
