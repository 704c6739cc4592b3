"""Scaffolding shared by the method tests: batches, and a few training steps through the one training step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from t5peft.data.text2text import Batch
from t5peft.train.step import TrainStep


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
