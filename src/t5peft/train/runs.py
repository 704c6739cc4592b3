"""Reopen a finished run folder: its settings, its trained model, evaluation and predictions with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.sources import load_split, split_validation
from ..data.text2text import TaskFormat, encode_split, label_token_ids
from ..methods import load_trained
from ..model.t5 import T5ForConditionalGeneration
from ..tokenizer import T5Tokenizer, load_tokenizer
from .evaluate import evaluate, generation_predictions, label_pair_probabilities
from .layout import RunFolder
from .loop import TrainConfig, TrainError, resolve_device


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
    task = TaskFormat(cfg.prefix, cfg.label_words, cfg.max_source_length, cfg.truncation_side, cfg.strip_html)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    return TrainedRun(cfg, model.to(resolve_device(device)).eval(), tokenizer, task)


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    size: int | None = None,
    batch_size: int = 64,
    generate: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Re-evaluate a finished run on ``split`` of ``data`` (default: the run's test data); a report dict."""
    run = load_run(run_dir, device)
    source = data or run.config.test_data or run.config.data
    texts = load_split(source, split)
    if size is not None and size < len(texts):
        origin = texts.origin
        texts = split_validation(texts, size=size, seed=0)[1]  # stratified: the splits are sorted by label
        texts.origin = f"{origin} [class-balanced sample of {size}, seed 0]"
    encoded = encode_split(texts, run.tokenizer, run.task)
    result = evaluate(run.model, encoded, run.tokenizer.pad_token_id, batch_size, run.task.label_words)
    report = {"run": str(run_dir), "split": split, "source": texts.origin, **result.summary()}
    if generate:
        generated = generation_predictions(run.model, encoded, run.tokenizer, run.task.label_words, batch_size)
        labels = encoded.labels
        report["generation_accuracy"] = sum(g == t for g, t in zip(generated, labels, strict=True)) / len(encoded)
        report["agreement_with_fast_path"] = sum(
            g == p for g, p in zip(generated, result.predictions, strict=True)
        ) / len(encoded)
    return report


@torch.no_grad()
def predict(run: TrainedRun, texts: list[str]) -> list[tuple[str, float]]:
    """Label word and its probability (over the two label words) for each review."""
    ids = run.tokenizer.encode(
        [run.task.source_text(t) for t in texts], run.task.max_source_length, run.task.truncation_side
    )
    input_ids, mask = run.tokenizer.pad(ids)
    device = run.model.device
    first = torch.tensor([t[0] for t in label_token_ids(run.tokenizer, run.task)], device=device)
    start = torch.full((len(texts), 1), run.model.config.decoder_start_token_id)
    logits = run.model(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), decoder_input_ids=start.to(device)
    ).logits
    pair = label_pair_probabilities(logits[:, 0], first).cpu()
    return [(run.task.label_words[int(p.argmax())], float(p.max())) for p in pair]
