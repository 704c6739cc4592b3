"""Pretrain T5 with span corruption: :func:`pretrain` and ``t5peft pretrain``.

One call does the whole run: read the texts (an IMDb source gives ``unsupervised`` + ``train``, never
``test``; exact copies of test reviews are dropped from the unlabelled texts, see :func:`prepare_texts`), pack
them (:mod:`.data`), build the model (random weights drawn from the seed with the architecture of
``config.json``, or a checkpoint to continue pretraining), train with the project's one training step
(:class:`~t5peft.train.step.TrainStep`: compiled + CUDA graph on CUDA, eager on the CPU), validate on held-out
documents at intervals, checkpoint for an exact ``--resume``, and write a Hugging Face checkpoint
(``config.json``, weights, tokenizer files) with ``pretraining.json`` beside it, which fine-tuning reads so its
results say ``pretrained-here``.

Optimisation (the choices, and why):

* AdamW, no weight decay by default, gradient clipping at 1.0, dropout 0: nanoT5's settings for T5 from
  scratch (with at most a few passes over the data there is nothing for dropout to regularise; the exported
  config.json keeps the architecture's own rate for fine-tuning).
* Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak (nanoT5: warmup then cosine). A budget
  fixed in advance is what this command runs, and a schedule that anneals by the end gives a lower final loss
  for the same steps than the T5 paper's inverse square root, which never anneals (it was chosen for open-ended
  pretraining, and is available as ``schedule="inverse-sqrt"``).
* The schedule runs over ``max_steps``; with only ``max_minutes`` it runs over the training time instead
  (progress = training seconds / budget), so a time budget also ends annealed. A step budget makes the run,
  and a resume, exact; a time budget stops wherever the time runs out.
* bf16 autocast on CUDA, float32 on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.text2text import Batch
from ..engine.env import environment
from ..engine.layout import PRETRAINED_HERE, PretrainFolder
from ..engine.runtime import build_model
from ..engine.skeleton import Pause, RunSkeleton
from ..engine.step import TrainStep, autocast
from ..model.checkpoint import CheckpointError, plan_shards
from ..model.t5 import T5ForConditionalGeneration
from ..tokenizer import T5Tokenizer, copy_tokenizer_files, load_run_tokenizer
from .data import (
    PretrainBatch,
    PretrainData,
    batches_per_epoch,
    build_data,
    epoch_order,
    prepare_texts,
    train_batch,
    validation_batches,
)
from .settings import PretrainConfig, PretrainError

TORCH_EXPORT_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # settings.EXPORT_DTYPES; None: as trained (float32)
PREFETCH_BATCHES = 4  # per data worker


# --------------------------------------------------------------------------------------------------
# The learning-rate schedule


@dataclass
class LrSchedule:
    """The factor of the peak learning rate for optimizer step ``step`` (0-based); a ``LambdaLR`` lambda.

    Its fields are plain numbers so ``LambdaLR.state_dict`` (which stores them) goes into the JSON checkpoint.
    ``seconds`` is the training time so far, set by the loop before each scheduler step; it drives the decay
    only when there is no step budget.
    """

    kind: str
    warmup_steps: int
    total_steps: int | None
    max_seconds: float | None
    min_ratio: float
    seconds: float = 0.0

    def progress(self, step: int) -> float:
        """Fraction of the decay done, in [0, 1]."""
        if self.total_steps is not None:
            span = max(1, self.total_steps - self.warmup_steps)
            return min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return min(1.0, self.seconds / self.max_seconds) if self.max_seconds else 0.0

    def __call__(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "constant":
            return warmup
        if self.kind == "inverse-sqrt":
            return warmup * math.sqrt(max(1, self.warmup_steps) / max(step + 1, self.warmup_steps, 1))
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))
        return warmup * (self.min_ratio + (1.0 - self.min_ratio) * cosine)


# --------------------------------------------------------------------------------------------------
# Model


def _check_vocabulary(model: T5ForConditionalGeneration, data: PretrainData, tokenizer: T5Tokenizer) -> None:
    vocab = model.config.vocab_size
    largest = max(int(data.sentinels.max()), tokenizer.vocab_size - 1)
    if largest >= vocab:
        raise PretrainError(
            f"the tokenizer ({tokenizer.source}) uses ids up to {largest}, but the model's vocab_size is {vocab}"
        )


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: layer-norm scales are never decayed (as nanoT5)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if "layer_norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------
# Batches


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is the training batch of global step ``step``: a function of (seed, step) only, so any
    worker can build any step's batch and a resumed run sees the same batches."""

    def __init__(self, data: PretrainData, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = batches_per_epoch(data, batch_size)
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its chunk order), per worker

    def __getitem__(self, step: int) -> PretrainBatch:
        epoch, index = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.data.train), self.seed, epoch))
        return train_batch(self.data, self.batch_size, seed=self.seed, epoch=epoch, index=index, order=self._order[1])

    def __len__(self) -> int:
        return 2**62  # steps go on epoch after epoch; the loop stops at its budget


def batch_loader(
    data: PretrainData, batch_size: int, seed: int, start_step: int, workers: int, pin_memory: bool
) -> Iterator[PretrainBatch]:
    """Batches from ``start_step`` on, in step order; ``workers`` processes build them ahead of the step (span
    corruption is numpy work, which would otherwise keep a fast GPU waiting)."""
    loader = torch.utils.data.DataLoader(
        StepBatches(data, batch_size, seed),
        batch_size=None,
        sampler=range(start_step, 2**62),
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH_BATCHES if workers else None,
        persistent_workers=False,
    )
    return iter(loader)


def targets_for(batch: PretrainBatch, first_sentinel: bool) -> PretrainBatch:
    """The batch as trained on: without the leading ``<extra_id_0>`` of every target when ``first_sentinel`` is
    False (see :class:`PretrainConfig`)."""
    return batch if first_sentinel else PretrainBatch(batch.input_ids, batch.labels[:, 1:].contiguous())


@torch.no_grad()
def validation_loss(
    model: T5ForConditionalGeneration,
    data: PretrainData,
    batch_size: int,
    *,
    seed: int,
    bf16: bool,
    first_sentinel: bool = True,
) -> float:
    """Mean token cross-entropy over the validation examples of ``data`` (every target has the same length)."""
    was_training = model.training
    model.eval()
    device = model.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    rows = 0
    for batch in validation_batches(data, batch_size, seed=seed):
        batch = targets_for(batch, first_sentinel)
        input_ids, labels = batch.input_ids.to(device), batch.labels.to(device)
        with autocast(device, bf16):
            loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).loss
        total += loss.double() * len(input_ids)
        rows += len(input_ids)
    model.train(was_training)
    return float(total.item()) / rows


# --------------------------------------------------------------------------------------------------
# The run


class Pretraining(RunSkeleton):
    """A pretraining run on the shared run skeleton: data, model, optimizer, schedule, validation every
    ``eval_every`` steps, a checkpoint every ``checkpoint_every``, snapshots at ``export_steps``, the export."""

    folder_type = PretrainFolder
    kind = "a pretraining run"
    command = "t5peft pretrain"
    cfg: PretrainConfig
    folder: PretrainFolder

    def __init__(
        self, cfg: PretrainConfig, data: PretrainData | None = None, *, stop_at_step: int | None = None
    ) -> None:
        self.prebuilt_data = data
        self.stop_at_step = stop_at_step  # stop after this step's checkpoint, as a kill would (tests of --resume)
        super().__init__(cfg)

    def setup(self) -> None:
        cfg = self.cfg
        default_workers = min(4, max(1, (os.cpu_count() or 1) - 1)) if self.device.type == "cuda" else 0
        self.data_workers = default_workers if cfg.data_workers is None else cfg.data_workers
        self.started = time.time()
        self.load_at_start = _load_average()
        self.tokenizer = load_run_tokenizer(cfg.tokenizer, cfg.model)
        self.data = self._setup_data(self.prebuilt_data)
        self.model = build_model(cfg.model, cfg.init, cfg.seed, PretrainError)
        _check_vocabulary(self.model, self.data, self.tokenizer)
        self._check_export()
        self.config_dropout = self.model.config.dropout_rate  # written to the exported config.json
        self.model.set_dropout(cfg.dropout)
        self.model.set_activation_checkpointing(cfg.activation_checkpointing)
        self.runtime.place(self.model).train()
        self._setup_optimizer()

    def _check_export(self) -> None:
        """A tensor too large for --max-shard-mb is an error now, not after the training."""
        if self.cfg.max_shard_mb is None:
            return
        dtype = TORCH_EXPORT_DTYPES[self.cfg.export_dtype]
        shapes = {
            name: torch.empty(p.shape, dtype=dtype or p.dtype, device="meta")
            for name, p in self.model.named_parameters()
        }
        try:
            plan_shards(shapes, int(self.cfg.max_shard_mb * 2**20))
        except CheckpointError as err:
            raise PretrainError(f"--max-shard-mb {self.cfg.max_shard_mb:g}: {err}") from err

    def _setup_data(self, data: PretrainData | None) -> PretrainData:
        if data is None:
            data = build_data(self.cfg, self.tokenizer)
        elif data.info.get("built_for") != self.cfg.data_settings():
            raise PretrainError("the data passed in was built for other settings than this run's (build_data(cfg))")
        if batches_per_epoch(data, self.cfg.batch_size) == 0:
            raise PretrainError(f"{len(data.train)} training examples: not one batch of {self.cfg.batch_size}")
        if len(data.validation) == 0:
            raise PretrainError("no validation examples: raise validation_documents")
        limit = min(self.cfg.validation_examples, len(data.validation))
        self.validation_data = dataclasses.replace(data, validation=data.validation[:limit])
        return data

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        groups = optimizer_groups(self.model, cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=self.device.type == "cuda")
        self.schedule = LrSchedule(
            kind=cfg.schedule,
            warmup_steps=cfg.resolved_warmup_steps,
            total_steps=cfg.max_steps,
            max_seconds=None if cfg.max_minutes is None else 60.0 * cfg.max_minutes,
            min_ratio=cfg.min_lr_ratio,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.total_steps = cfg.max_steps
        self.step = TrainStep(
            self.model,
            self.optimizer,
            self.scheduler,
            total_steps=cfg.max_steps or 0,
            max_grad_norm=cfg.max_grad_norm,
            bf16=self.bf16,
            compile=self.compiled,
        )
        shape = (cfg.batch_size, self.data.input_length)
        self.attention_mask = torch.ones(shape, dtype=torch.long, device=self.device)

    # ----------------------------------------------------------------------------------------------
    # The loop's steps

    progress_label = "pretrain"

    @property
    def checkpoint_schedule(self) -> str:
        return f"one is written every {self.cfg.checkpoint_every:,} steps"

    def _out_of_budget(self, seconds: float) -> str | None:
        if self.cfg.max_steps is not None and self.position.global_step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_minutes is not None and seconds >= 60.0 * self.cfg.max_minutes:
            return "max_minutes"
        return None

    def budget_spent(self) -> str | None:
        return self._out_of_budget(self.position.train_seconds)

    def before_training(self) -> None:
        if self.position.global_step == 0 and not self.metrics.records:
            self.log_point(0)  # the loss of the initial weights: where the curve starts

    def batches(self) -> Iterator[Batch]:
        cfg = self.cfg
        loader = batch_loader(
            self.data,
            cfg.batch_size,
            cfg.seed,
            self.position.global_step,
            self.data_workers,
            self.device.type == "cuda",
        )
        try:
            for batch in loader:
                yield self._device_batch(batch)
        finally:
            del loader  # stops the workers

    def _device_batch(self, batch: PretrainBatch) -> Batch:
        batch = targets_for(batch, self.cfg.first_sentinel)
        input_ids = batch.input_ids.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        return Batch(input_ids, self.attention_mask, labels, len(input_ids), input_ids.numel())

    def before_step(self, train_seconds: float) -> None:
        self.schedule.seconds = train_seconds  # drives the decay under a time budget

    def pause_after(self, step: int, train_seconds: float) -> Pause | None:
        """Validation every ``eval_every`` steps, a checkpoint every ``checkpoint_every``, snapshots at
        ``export_steps``; all of them once the budget is spent. ``stop_at_step``: a checkpoint only, then stop."""
        cfg = self.cfg
        stop = self._out_of_budget(train_seconds)
        if stop is None and self.stop_at_step is not None and step >= self.stop_at_step:
            return Pause(checkpoint=True, stop="interrupted")  # what a kill right after this checkpoint leaves
        final = stop is not None
        pause = Pause(
            log=step % cfg.eval_every == 0 or final,
            snapshot=step in cfg.export_steps,
            checkpoint=step % cfg.checkpoint_every == 0 or final,
            stop=stop,
        )
        return pause if pause.log or pause.snapshot or pause.checkpoint else None

    def log_point(self, step: int) -> None:
        pos = self.position
        train_loss = self.take_train_loss()  # mean since the previous point; None at step 0
        val = validation_loss(
            self.model,
            self.validation_data,
            self.cfg.batch_size,
            seed=self.cfg.seed,
            bf16=self.bf16,
            first_sentinel=self.cfg.first_sentinel,
        )
        tokens_per_s = pos.train_tokens / pos.train_seconds if pos.train_seconds else None
        self.log_metrics(
            {
                "step": step,
                "train_loss": train_loss,
                "val_loss": val,
                "lr": self.scheduler.get_last_lr()[0],
                "train_seconds": round(pos.train_seconds, 3),
                "input_tokens_per_s": tokens_per_s,
            }
        )
        shown = "-" if train_loss is None else f"{train_loss:.3f}"
        self.bar.set_postfix(loss=shown, val=f"{val:.3f}", tok_s=f"{tokens_per_s or 0:.0f}")

    def write_snapshot(self, step: int) -> None:
        self.export(self.folder.export(step), snapshot=True)

    def where(self) -> str:
        pos, cfg = self.position, self.cfg
        if self.stopped_by is not None:
            return f"after training ({pos.global_step} steps), before the checkpoint was exported"
        if cfg.max_steps is not None:
            return f"after step {pos.global_step} of {cfg.max_steps}"
        return f"after step {pos.global_step} ({pos.train_seconds / 60:.1f} of {cfg.max_minutes:g} training minutes)"

    # ----------------------------------------------------------------------------------------------
    # The end of the run

    def finish(self) -> dict[str, Any]:
        if self.stopped_by == "interrupted":
            return {"stopped_by": "interrupted", "steps": self.position.global_step}
        return self.export(self.folder.root)

    def final_metrics(self, results: dict[str, Any]) -> dict[str, Any]:
        if "training" not in results:  # stopped for a test before the end: nothing exported
            return {"steps": results["steps"]}
        validation = results["losses"]["validation"]
        return {
            "val_loss": validation[-1]["loss"] if validation else None,
            "steps": results["training"]["steps"],
            "train_seconds": results["training"]["seconds"],
        }

    def export(self, directory: Path, *, snapshot: bool = False) -> dict[str, Any]:
        """Write the Hugging Face checkpoint (config, weights, tokenizer files) and its ``pretraining.json``."""
        cfg = self.cfg
        config = self.model.config
        config.dropout_rate = self.config_dropout  # the architecture's own rate, not pretraining's 0
        max_bytes = None if cfg.max_shard_mb is None else int(cfg.max_shard_mb * 2**20)
        try:
            self.model.save_pretrained(
                directory, max_shard_bytes=max_bytes, dtype=TORCH_EXPORT_DTYPES[cfg.export_dtype]
            )
        except CheckpointError as err:
            raise PretrainError(f"{directory}: {err}") from err
        finally:
            config.dropout_rate = cfg.dropout
        copy_tokenizer_files(self.tokenizer, directory)
        record = self.record(directory, snapshot)
        (directory / self.folder.record.name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return record

    def record(self, directory: Path, snapshot: bool) -> dict[str, Any]:
        cfg, pos, config = self.cfg, self.position, self.model.config
        files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
        records = self.metrics.records
        validation = [{"step": r["step"], "loss": r["val_loss"]} for r in records]
        last_train = next((r["train_loss"] for r in reversed(records) if r["train_loss"] is not None), None)
        return {
            "weights": PRETRAINED_HERE,
            "what": (
                "a T5 pretrained by `t5peft pretrain` (span corruption) from random weights, with the architecture "
                "below: not Google's t5-small or any published checkpoint"
                if cfg.init == "random"
                else f"{cfg.model}, continued by `t5peft pretrain` (span corruption): no longer that checkpoint"
            ),
            "snapshot": snapshot,
            "architecture": {
                key: getattr(config, key)
                for key in ("d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers", "vocab_size")
            }
            | {"feed_forward_proj": config.feed_forward_proj, "tie_word_embeddings": config.tie_word_embeddings},
            "parameters": self.model.num_parameters(),
            "init": "random" if cfg.init == "random" else f"pretrained:{cfg.model}",
            "objective": {
                "name": "span corruption" if cfg.first_sentinel else "span corruption, targets without <extra_id_0>",
                "input_length": self.data.input_length,
                "target_length": self.data.target_length - (0 if cfg.first_sentinel else 1),
                "noise_density": cfg.noise_density,
                "mean_noise_span_length": cfg.mean_noise_span_length,
            },
            "model": cfg.model,
            "data": self.data.info,
            "training": {
                "steps": pos.global_step,
                "max_steps": cfg.max_steps,
                "max_minutes": cfg.max_minutes,
                "stopped_by": "snapshot" if snapshot else self.stopped_by,
                "examples": pos.train_examples,
                "input_tokens": pos.train_tokens,
                "raw_tokens": pos.train_examples * self.data.raw_length,
                "epochs": pos.train_examples / len(self.data.train),
                "seconds": pos.train_seconds,
                "minutes": pos.train_seconds / 60.0,
                "input_tokens_per_s": pos.train_tokens / pos.train_seconds if pos.train_seconds else None,
                "compile_seconds": self.compile_seconds,
                "wall_seconds_this_session": time.time() - self.started,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "schedule": cfg.schedule,
                "warmup_steps": cfg.resolved_warmup_steps,
                "min_lr_ratio": cfg.min_lr_ratio,
                "weight_decay": cfg.weight_decay,
                "max_grad_norm": cfg.max_grad_norm,
                "dropout": cfg.dropout,
                "precision": self.runtime.precision,
                "compiled": self.compiled,
                "cuda_graph": self.step.cuda_graph,
                "data_workers": self.data_workers,
            },
            "losses": {
                "train_last": last_train,
                "validation": validation,
                "validation_examples": len(self.validation_data.validation),
            },
            "export": {
                "dtype": cfg.export_dtype,
                "max_shard_mb": cfg.max_shard_mb,
                "files": files,
                "loads_as": "float32 in t5peft (bf16 files are widened on load)",
            },
            "machine": {"load_average_at_start": self.load_at_start, "load_average_now": _load_average()},
            "memory": self.runtime.memory_report(),
            "environment": environment(self.device),
            "config": cfg.to_dict(),
        }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pretrain(
    cfg: PretrainConfig, *, data: PretrainData | None = None, stop_at_step: int | None = None
) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns the record written as ``pretraining.json`` beside the weights.

    ``data`` (from :func:`build_data` with the same settings) skips reading and tokenising the texts again;
    ``stop_at_step`` ends the run after that step's checkpoint without exporting, as a kill would (tests).
    """
    return Pretraining.start(cfg, data, stop_at_step=stop_at_step).run()


def weights_summary(record: dict[str, Any]) -> str:
    """One line on what a pretrained-here checkpoint is (for summaries)."""
    training, arch = record["training"], record["architecture"]
    start = "from random weights" if record["init"] == "random" else f"continued from {record['init'].split(':', 1)[1]}"
    return (
        f"pretrained here ({start}): d_model {arch['d_model']}, "
        f"{arch['num_layers']}+{arch['num_decoder_layers']} layers, "
        f"{record['parameters']:,} parameters, {training['steps']:,} steps, {training['minutes']:.1f} min on "
        f"{record['environment']['device_name']}"
    )


__all__ = [
    "LrSchedule",
    "Pretraining",
    "build_data",
    "prepare_texts",
    "pretrain",
    "validation_loss",
    "weights_summary",
]
