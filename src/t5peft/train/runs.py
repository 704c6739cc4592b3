"""Reopen a finished run folder: its settings, its trained model, and predictions with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.text2text import TaskFormat, label_token_ids
from ..methods import get_method_class, load_adapter
from ..model.checkpoint import load_pretrained
from ..model.t5 import T5ForConditionalGeneration
from ..tokenizer import T5Tokenizer, load_tokenizer
from .loop import BASE, FINAL, RUN_CONFIG, TrainConfig, TrainError


@dataclass
class TrainedRun:
    config: TrainConfig
    model: T5ForConditionalGeneration
    tokenizer: T5Tokenizer
    task: TaskFormat


def load_run(run_dir: str | Path, device: str = "cpu") -> TrainedRun:
    run_dir = Path(run_dir)
    config_path = run_dir / RUN_CONFIG
    if not config_path.is_file():
        raise TrainError(f"{run_dir}: not a run folder ({RUN_CONFIG} not found)")
    cfg = TrainConfig.from_dict(json.loads(config_path.read_text()), str(config_path))
    final = run_dir / FINAL
    if not final.is_dir():
        raise TrainError(f"{run_dir}: the run has not finished ({FINAL}/ not found); resume it with --resume")
    if get_method_class(cfg.method).saves_adapter:
        base = run_dir / BASE if cfg.init == "random" else cfg.model
        model = load_adapter(load_pretrained(base), final)
    else:
        model = load_pretrained(final)
    task = TaskFormat(cfg.prefix, cfg.label_words, cfg.max_source_length, cfg.truncation_side, cfg.strip_html)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    return TrainedRun(cfg, model.to(device).eval(), tokenizer, task)


@torch.no_grad()
def predict(run: TrainedRun, texts: list[str]) -> list[tuple[str, float]]:
    """Label word and its probability (over the two label words) for each review."""
    ids = run.tokenizer.encode(
        [run.task.source_text(t) for t in texts], run.task.max_source_length, run.task.truncation_side
    )
    input_ids, mask = run.tokenizer.pad(ids)
    first = [t[0] for t in label_token_ids(run.tokenizer, run.task)]
    start = torch.full((len(texts), 1), run.model.config.decoder_start_token_id)
    device = run.model.device
    logits = run.model(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), decoder_input_ids=start.to(device)
    ).logits
    pair = logits[:, 0, first].float().softmax(-1)
    return [(run.task.label_words[int(p.argmax())], float(p.max())) for p in pair]
