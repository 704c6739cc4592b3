"""Reopen a finished run folder: its settings, its trained model, evaluation and predictions with it."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from ..data.sources import LabeledTexts, load_split, split_validation
from ..data.text2text import TaskFormat, encode_split, label_token_ids
from ..engine.layout import RunFolder
from ..engine.runtime import resolve_device
from ..methods import load_trained
from ..model.t5 import T5ForConditionalGeneration
from ..tokenizer import T5Tokenizer, load_tokenizer
from .evaluate import evaluate, generation_predictions, label_pair_probabilities
from .settings import TrainConfig, TrainError

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
    base = folder.base if folder.base.is_dir() else cfg.model
    model = load_trained(folder.final, base)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    return TrainedRun(cfg, model.to(resolve_device(device, TrainError)).eval(), tokenizer, cfg.task_format())


def _evaluation_texts(run: TrainedRun, data: str | None, split: str | None, size: int | None) -> LabeledTexts:
    """What ``evaluate`` scores: the run's own test set unless a source, split or size says otherwise."""
    rows = run.config.rows()
    own_test = data is None and split in (None, "test")
    if own_test and size is None:
        texts = rows.test_set()
        texts.origin = f"the run's test set: {texts.origin}"
        return texts
    texts = rows.test_split() if own_test else load_split(data or run.config.data, split or "test")
    if size is None or size == len(texts):
        return texts
    if size > len(texts):
        log.warning(
            "--size %s is larger than the data (%s); using all %s", f"{size:,}", texts.origin, f"{len(texts):,}"
        )
        return texts
    sample = split_validation(texts, size=size, seed=0)[1]  # stratified: the splits are sorted by label
    sample.origin = f"{texts.origin} [stratified sample: {size:,} of {len(texts):,} rows, seed 0]"
    return sample


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
    texts = _evaluation_texts(run, data, split, size)
    encoded = encode_split(texts, run.tokenizer, run.task)
    result = evaluate(
        run.model, encoded, run.tokenizer.pad_token_id, batch_size, run.task.label_words, progress=progress
    )
    report = {"run": str(run_dir), "split": split or "test", "source": texts.origin, **result.summary()}
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


def read_texts(path: str, stdin: TextIO | None = None) -> list[str]:
    """Reviews to label, one per line, from a file or (``-``) standard input; an empty line is an error."""
    where = "standard input" if path == "-" else path
    try:
        text = _read_stdin(stdin or sys.stdin) if path == "-" else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TrainError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise TrainError(f"{where}: line {number} is empty (one review per line)")
    if not lines:
        raise TrainError(f"{where}: no reviews (one review per line)")
    return lines


def check_texts(texts: list[str]) -> None:
    """Reviews to label: at least one, none empty."""
    if not texts:
        raise TrainError("no reviews to label")
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise TrainError(f"text {number} is empty: give the review to label")


@torch.no_grad()
def predict(run: TrainedRun, texts: list[str], batch_size: int = 64) -> list[tuple[str, float]]:
    """Label word and its probability (over the two label words) for each review."""
    check_texts(texts)
    if batch_size < 1:
        raise TrainError(f"batch size must be >= 1, got {batch_size}")
    device = run.model.device
    first = torch.tensor([t[0] for t in label_token_ids(run.tokenizer, run.task)], device=device)
    labelled: list[tuple[str, float]] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        ids = run.tokenizer.encode(
            [run.task.source_text(t) for t in chunk], run.task.max_source_length, run.task.truncation_side
        )
        input_ids, mask = run.tokenizer.pad(ids)
        begin = torch.full((len(chunk), 1), run.model.config.decoder_start_token_id)
        logits = run.model(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), decoder_input_ids=begin.to(device)
        ).logits
        pair = label_pair_probabilities(logits[:, 0], first).cpu()
        labelled.extend((run.task.label_words[int(p.argmax())], float(p.max())) for p in pair)
    return labelled
