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
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.text2text import Batch
from ..model.checkpoint import CheckpointError, plan_shards, resolve_model_dir
from ..model.config import T5Config
from ..model.t5 import T5ForConditionalGeneration, load_pretrained
from ..tokenizer import TOKENIZER_FILES, T5Tokenizer, load_tokenizer
from ..train.env import environment, memory_report
from ..train.layout import PRETRAINED_HERE, PretrainFolder
from ..train.loop import resolve_device, seed_everything, settings_dataclass, use_bf16
from ..train.state import Position, load_checkpoint, save_checkpoint
from ..train.step import COMPILE_SETTINGS, TrainStep, autocast, resolve_compile
from .data import (
    PretrainBatch,
    PretrainData,
    PretrainError,
    batches_per_epoch,
    build_data,
    epoch_order,
    prepare_texts,
    train_batch,
    validation_batches,
)
from .objective import MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "inverse-sqrt", "constant")
EXPORT_DTYPES = {"fp32": None, "bf16": torch.bfloat16}
CUDA_SYNC_EVERY = 25  # steps between host-device synchronisations, so the host clock tracks the device's work
PREFETCH_BATCHES = 4  # per data worker


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run; saved as ``pretrain_config.json``."""

    model: str  # folder with config.json (--init random), or a checkpoint folder / Hub id (--init pretrained)
    output: str
    data: str = "stanfordnlp/imdb"
    init: str = "random"  # random: weights drawn from the seed; pretrained: continue pretraining a checkpoint
    tokenizer: str | None = None  # default: the model folder
    splits: list[str] | None = None  # of an IMDb-layout source; default unsupervised + train
    test_data: str | None = None  # texts never to pretrain on; default: the test split of an IMDb-layout source
    exclude_test_overlap: bool = True
    input_length: int = 128
    noise_density: float = NOISE_DENSITY
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
    # False: targets start with the first span's tokens, not <extra_id_0>, so decoder step 0 (where
    # fine-tuning reads the label) has to look at the input. A variant of T5's objective; True is T5's.
    first_sentinel: bool = True
    batch_size: int = 64
    lr: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int | None = None  # None: 10% of max_steps, or 1,000 under a time budget only
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    dropout: float = 0.0
    max_steps: int | None = None
    max_minutes: float | None = None  # training time (validation, checkpoints and compilation not counted)
    validation_documents: int = 500
    validation_examples: int = 512  # the first N held-out examples are evaluated at every validation point
    eval_every: int = 250
    checkpoint_every: int = 1000
    export_steps: list[int] = field(default_factory=list)  # also write a checkpoint (exports/step-N) at these steps
    export_dtype: str = "fp32"
    max_shard_mb: float | None = None  # write sharded safetensors of at most this many MiB per file
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    data_workers: int | None = None  # processes building batches; None: 4 on CUDA, 0 (in the loop) on the CPU
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.init not in ("random", "pretrained"):
            raise PretrainError(f"init must be 'random' or 'pretrained', got {self.init!r}")
        if self.max_steps is None and self.max_minutes is None:
            raise PretrainError("give a budget: max_steps and/or max_minutes")
        if self.schedule not in SCHEDULES:
            raise PretrainError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.export_dtype not in EXPORT_DTYPES:
            raise PretrainError(f"export_dtype must be one of {', '.join(EXPORT_DTYPES)}, got {self.export_dtype!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise PretrainError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.compile not in COMPILE_SETTINGS:
            raise PretrainError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {self.compile!r}")
        positive = ("batch_size", "eval_every", "checkpoint_every", "validation_examples", "max_steps")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PretrainError(f"{name} must be >= 1, got {value}")
        for name in ("lr", "max_minutes", "max_shard_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PretrainError(f"{name} must be > 0, got {value}")
        if self.data_workers is not None and self.data_workers < 0:
            raise PretrainError(f"data_workers must be >= 0, got {self.data_workers}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise PretrainError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise PretrainError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise PretrainError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.seed < 2**32:
            raise PretrainError(f"seed must be in [0, 2**32), got {self.seed}")
        self.export_steps = sorted({int(step) for step in self.export_steps})
        if self.export_steps and self.export_steps[0] < 1:
            raise PretrainError(f"export_steps must be >= 1, got {self.export_steps[0]}")
        if isinstance(self.splits, str):
            self.splits = [self.splits]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> PretrainConfig:
        return settings_dataclass(cls, values, source, PretrainError)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, round(0.1 * self.max_steps)) if self.max_steps is not None else 1000

    def data_settings(self) -> dict[str, Any]:
        """The settings the packed data depends on (checked when a run is handed data built beforehand)."""
        names = (
            "data",
            "splits",
            "test_data",
            "exclude_test_overlap",
            "input_length",
            "noise_density",
            "mean_noise_span_length",
            "validation_documents",
            "seed",
        )
        return {name: getattr(self, name) for name in names}


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


def build_model(cfg: PretrainConfig) -> T5ForConditionalGeneration:
    if cfg.init == "pretrained":
        try:
            return load_pretrained(cfg.model)
        except CheckpointError as err:
            raise PretrainError(f"{err}\n(to pretrain from scratch, pass --init random)") from err
    path = Path(cfg.model)
    config_path = path if path.is_file() else resolve_model_dir(cfg.model) / "config.json"
    if not config_path.is_file():
        raise PretrainError(f"{config_path}: config.json not found (--init random needs the architecture)")
    config = T5Config.from_json_file(config_path)
    config.name_or_path = f"random-init:{cfg.model}"
    torch.manual_seed(cfg.seed)
    return T5ForConditionalGeneration(config)


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


class Pretraining:
    """A pretraining run: data, model, optimizer, schedule, the training step and the output folder."""

    def __init__(self, cfg: PretrainConfig, data: PretrainData | None = None) -> None:
        self.cfg = cfg
        self.folder = PretrainFolder(Path(cfg.output))
        self._check_output_folder()
        self.device = resolve_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.compiled = resolve_compile(cfg.compile, self.device)
        default_workers = min(4, max(1, (os.cpu_count() or 1) - 1)) if self.device.type == "cuda" else 0
        self.data_workers = default_workers if cfg.data_workers is None else cfg.data_workers
        self.started = time.time()
        self.load_at_start = _load_average()
        seed_everything(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
        self.data = self._setup_data(data)
        self.model = build_model(cfg)
        _check_vocabulary(self.model, self.data, self.tokenizer)
        self._check_export()
        self.config_dropout = self.model.config.dropout_rate  # written to the exported config.json
        self.model.set_dropout(cfg.dropout)
        self.model.to(self.device).train()
        self._setup_optimizer()
        self.position = Position()
        self.compile_seconds = 0.0
        self.validations: list[dict[str, Any]] = []
        self.stopped_by: str | None = None

    def _check_export(self) -> None:
        """A tensor too large for --max-shard-mb is an error now, not after the training."""
        if self.cfg.max_shard_mb is None:
            return
        dtype = EXPORT_DTYPES[self.cfg.export_dtype]
        shapes = {
            name: torch.empty(p.shape, dtype=dtype or p.dtype, device="meta")
            for name, p in self.model.named_parameters()
        }
        try:
            plan_shards(shapes, int(self.cfg.max_shard_mb * 2**20))
        except CheckpointError as err:
            raise PretrainError(f"--max-shard-mb {self.cfg.max_shard_mb:g}: {err}") from err

    def _check_output_folder(self) -> None:
        config_path = self.folder.run_config
        if config_path.exists() and not self.cfg.resume:
            raise PretrainError(
                f"{self.folder.root} already holds a pretraining run; pass --resume to continue it or choose "
                "another --output"
            )
        if self.cfg.resume and config_path.exists():
            ignored = ("resume", "progress", "data_workers")  # neither changes what is computed
            saved = {k: v for k, v in json.loads(config_path.read_text()).items() if k not in ignored}
            mine = {k: v for k, v in self.cfg.to_dict().items() if k not in ignored}
            changed = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
            if changed:
                raise PretrainError(f"{config_path}: --resume with different settings ({', '.join(changed)})")

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
    def resume_if_asked(self) -> None:
        if not (self.cfg.resume and self.folder.checkpoint.exists()):
            self._truncate_metrics(0)
            return
        try:
            self.position, _ = load_checkpoint(self.folder.checkpoint, self.model, self.optimizer, self.scheduler)
        except (OSError, ValueError, KeyError) as err:
            raise PretrainError(f"{self.folder.checkpoint}: cannot resume from this checkpoint ({err})") from err
        self.step.step = self.position.global_step
        self.step.reset_loss(self.position.running_loss_sum, self.position.running_loss_steps)
        self._truncate_metrics(self.position.metric_lines)
        self.validations = [json.loads(line) for line in self.folder.metrics.read_text().splitlines()]
        log.info("resumed %s at step %d", self.folder.root, self.position.global_step)

    def _truncate_metrics(self, lines: int) -> None:
        path = self.folder.metrics
        if path.exists():
            kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            path.write_text("".join(kept), encoding="utf-8")

    def _write_metric(self, record: dict[str, Any]) -> None:
        with open(self.folder.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.position.metric_lines += 1
        self.validations.append(record)

    def _out_of_budget(self, seconds: float) -> str | None:
        if self.cfg.max_steps is not None and self.position.global_step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_minutes is not None and seconds >= 60.0 * self.cfg.max_minutes:
            return "max_minutes"
        return None

    def _device_batch(self, batch: PretrainBatch) -> Batch:
        batch = targets_for(batch, self.cfg.first_sentinel)
        input_ids = batch.input_ids.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        return Batch(input_ids, self.attention_mask, labels, len(input_ids), input_ids.numel())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fit(self, stop_at_step: int | None = None) -> None:
        """Train until the budget is spent; ``stop_at_step`` stops after that step as a kill after its
        checkpoint would (tests of ``--resume``)."""
        cfg, pos = self.cfg, self.position
        self.stopped_by = self._out_of_budget(pos.train_seconds)
        if self.stopped_by:
            return
        bar = tqdm(
            total=cfg.max_steps,
            initial=pos.global_step,
            disable=not cfg.progress,
            desc="pretrain",
            unit="step",
            dynamic_ncols=True,
        )
        if pos.global_step == 0 and not self.validations:
            self._validate(0, bar)  # the loss of the initial weights: where the curve starts
        workers = self.data_workers
        pin = self.device.type == "cuda"
        batches = batch_loader(self.data, cfg.batch_size, cfg.seed, pos.global_step, workers, pin)
        segment = None  # start of the current stretch of timed training steps
        try:
            while True:
                batch = self._device_batch(next(batches))
                if segment is None:
                    self._prepare(batch)
                    segment = time.perf_counter()
                self.schedule.seconds = pos.train_seconds + (time.perf_counter() - segment)
                self.step(batch)
                pos.global_step += 1
                pos.train_examples += batch.rows
                pos.train_tokens += batch.tokens
                bar.update(1)
                step = pos.global_step
                if self.device.type == "cuda" and step % CUDA_SYNC_EVERY == 0:
                    self._sync()
                self.stopped_by = self._out_of_budget(pos.train_seconds + time.perf_counter() - segment)
                interrupted = stop_at_step is not None and step >= stop_at_step
                if self.stopped_by or interrupted or self._pause_needed(step):
                    self._sync()
                    pos.train_seconds += time.perf_counter() - segment
                    segment = None
                if interrupted and not self.stopped_by:
                    self.stopped_by = "interrupted"
                    self.save_state()  # what a kill right after this step's checkpoint leaves behind
                    break
                if segment is None:
                    self._at_pause(step, bar, final=self.stopped_by is not None)
                if self.stopped_by:
                    break
        finally:
            del batches  # stops the workers
            bar.close()

    def _pause_needed(self, step: int) -> bool:
        cfg = self.cfg
        return step % cfg.eval_every == 0 or step % cfg.checkpoint_every == 0 or step in cfg.export_steps

    def _at_pause(self, step: int, bar: tqdm, final: bool) -> None:
        cfg = self.cfg
        if step % cfg.eval_every == 0 or final:
            self._validate(step, bar)
        if step in cfg.export_steps:
            self.export(self.folder.export(step), snapshot=True)
        if step % cfg.checkpoint_every == 0 or final:
            self.save_state()

    def _prepare(self, batch: Batch) -> None:
        """Compile (and capture) the step before the clock starts; the time is reported on its own."""
        if not self.compiled or self.step.prepared:
            return
        start = time.perf_counter()
        self.step.prepare(batch)
        self._sync()
        self.compile_seconds += time.perf_counter() - start

    def _validate(self, step: int, bar: tqdm) -> None:
        pos = self.position
        loss_sum, steps = self.step.read_loss()
        self.step.reset_loss()
        val = validation_loss(
            self.model,
            self.validation_data,
            self.cfg.batch_size,
            seed=self.cfg.seed,
            bf16=self.bf16,
            first_sentinel=self.cfg.first_sentinel,
        )
        tokens_per_s = pos.train_tokens / pos.train_seconds if pos.train_seconds else None
        record = {
            "step": step,
            "train_loss": loss_sum / steps if steps else None,  # mean since the previous point
            "val_loss": val,
            "lr": self.scheduler.get_last_lr()[0],
            "train_seconds": round(pos.train_seconds, 3),
            "input_tokens_per_s": tokens_per_s,
        }
        self._write_metric(record)
        train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.3f}"
        bar.set_postfix(loss=train_loss, val=f"{val:.3f}", tok_s=f"{tokens_per_s or 0:.0f}")

    def save_state(self) -> None:
        pos = self.position
        pos.running_loss_sum, pos.running_loss_steps = self.step.read_loss()
        save_checkpoint(self.folder.checkpoint, self.model, self.optimizer, self.scheduler, {}, pos)

    # ----------------------------------------------------------------------------------------------
    def export(self, directory: Path, *, snapshot: bool = False) -> dict[str, Any]:
        """Write the Hugging Face checkpoint (config, weights, tokenizer files) and its ``pretraining.json``."""
        cfg = self.cfg
        config = self.model.config
        config.dropout_rate = self.config_dropout  # the architecture's own rate, not pretraining's 0
        max_bytes = None if cfg.max_shard_mb is None else int(cfg.max_shard_mb * 2**20)
        try:
            self.model.save_pretrained(directory, max_shard_bytes=max_bytes, dtype=EXPORT_DTYPES[cfg.export_dtype])
        except CheckpointError as err:
            raise PretrainError(f"{directory}: {err}") from err
        finally:
            config.dropout_rate = cfg.dropout
        self._copy_tokenizer(directory)
        record = self.record(directory, snapshot)
        (directory / self.folder.record.name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return record

    def _copy_tokenizer(self, directory: Path) -> None:
        source = Path(self.tokenizer.source)
        source = source if source.is_dir() else source.parent
        copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
        for name in copied:
            shutil.copyfile(source / name, directory / name)

    def record(self, directory: Path, snapshot: bool) -> dict[str, Any]:
        cfg, pos, config = self.cfg, self.position, self.model.config
        files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
        validation = [{"step": r["step"], "loss": r["val_loss"]} for r in self.validations]
        last_train = next((r["train_loss"] for r in reversed(self.validations) if r["train_loss"] is not None), None)
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
                "precision": "bf16-autocast" if self.bf16 else "fp32",
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
            "memory": memory_report(self.device),
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
    run = Pretraining(cfg, data)
    run.resume_if_asked()
    run.folder.root.mkdir(parents=True, exist_ok=True)
    run.folder.run_config.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    run.fit(stop_at_step)
    if run.stopped_by == "interrupted":
        return {"stopped_by": "interrupted", "steps": run.position.global_step}
    return run.export(run.folder.root)


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
    "PretrainConfig",
    "PretrainError",
    "Pretraining",
    "build_data",
    "prepare_texts",
    "pretrain",
    "validation_loss",
    "weights_summary",
]
