"""Scaffolding shared by the tests (t5peft only; the transformers/PEFT side is in ``oracles.py``, the method cases in
``method_cases.py``): tiny random models and their checkpoints, random batches, eval logits, random values for trained
tensors, errors, and a few training steps through the one training step."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from t5peft import T5Config, T5ForConditionalGeneration
from t5peft.data.text2text import Batch
from t5peft.engine.step import TrainStep

REPO = Path(__file__).resolve().parent.parent
# TINY is the tiny architecture shipped in configs/models/t5-tiny, which the training, CLI and pretraining tests run
# (with random weights); tests that name it take it from here
TINY = REPO / "configs" / "models" / "t5-tiny"
# TINY_T5, the random T5 of the method tests: encoder and decoder differ in depth (a formula that mixes them up is
# caught) and a small vocabulary keeps the embedding and LM head cheap
TINY_T5 = dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=3, num_heads=4)


def tiny_config(**overrides) -> T5Config:
    """The config of :data:`TINY_T5`, with ``overrides``."""
    return T5Config(**{**TINY_T5, **overrides})


def save_tiny_base(directory: Path, seed: int = 0, **overrides) -> Path:
    """A tiny T5 with t5peft's random initialisation (drawn from ``seed``), saved as a checkpoint folder."""
    torch.manual_seed(seed)
    T5ForConditionalGeneration(tiny_config(**overrides)).save_pretrained(directory)
    return directory


def t5_small_meta(t5_small_dir: Path) -> T5ForConditionalGeneration:
    """t5-small's architecture (the shared config.json) on the meta device: shapes and counts, no memory."""
    with torch.device("meta"):
        return T5ForConditionalGeneration(T5Config.from_json_file(t5_small_dir / "config.json"))


def random_batch(seed: int = 0, vocab: int = 32000) -> dict[str, torch.Tensor]:
    """Three rows of random ids (two of them padded) and random labels, for the method tests."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    labels = torch.randint(2, vocab, (3, 5), generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`random_batch` with ids inside the vocabulary of :data:`TINY_T5`."""
    return random_batch(seed, TINY_T5["vocab_size"])


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eval-mode logits of a t5peft or a transformers/PEFT model, teacher-forced on ``batch["labels"]``.

    The decoder input is given explicitly (labels shifted right after decoder start 0) rather than as ``labels``:
    PEFT's AdaLoRA model adds its orthogonality penalty to a loss computed from labels, which fails in inference.
    """
    labels = batch["labels"]
    decoder_input_ids = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
    model.eval()
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            decoder_input_ids=decoder_input_ids,
        ).logits


def perturb(model: nn.Module, seed: int = 1, scale: float = 0.2) -> None:
    """Add ``N(0, scale^2)`` noise to every trainable tensor, so none keeps its initial value (LoRA's B and
    AdaLoRA's E start at zero, (IA)^3's vectors at one), every one gets a gradient, and no equality of logits
    passes by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * scale)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def as_batch(tensors: dict[str, torch.Tensor]) -> Batch:
    return Batch.from_tensors(tensors["input_ids"], tensors["attention_mask"], tensors["labels"])


def train_steps(
    model,
    batch_of_step: Callable[[int], dict[str, torch.Tensor]],
    steps: int,
    *,
    lr: float | None = None,
    weight_decay: float = 0.01,
    total_steps: int | None = None,
    max_grad_norm: float | None = 1.0,
) -> list[float]:
    """``steps`` training steps of the loop (method hooks included) with AdamW at ``lr`` (default: the method's)."""
    method = model.peft.method
    total = steps if total_steps is None else total_steps
    optimizer = torch.optim.AdamW(method.param_groups(model, lr or method.default_lr, weight_decay))
    method.on_train_begin(model, total)
    model.train()
    runner = TrainStep(model, optimizer, total_steps=total, max_grad_norm=max_grad_norm)
    losses = []
    for step in range(steps):
        runner(as_batch(batch_of_step(step)))
        losses.append(runner.read_loss()[0])
        runner.reset_loss()
    return losses


def interrupt(process: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Ctrl-C to ``process`` (one SIGINT) and its output once it has ended; killed if it outlives ``timeout``."""
    try:
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
