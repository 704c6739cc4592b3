"""Fine-tune T5 on IMDb as text-to-text with any registered method, and evaluate it.

One call of :func:`train` does the whole run: data, model, method, AdamW with warmup + linear decay,
gradient clipping, periodic validation, an end-of-epoch checkpoint (``--resume`` continues from it), the
final test evaluation, and the files of the run (see README, "Run folder").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from ..data.sources import (
    LabeledTexts,
    dataset_checksums,
    is_single_split_file,
    load_split,
    shared_rows,
    split_validation,
)
from ..data.text2text import (
    Batch,
    EncodedSplit,
    StaticShape,
    TaskFormat,
    encode_split,
    label_token_ids,
    steps_per_epoch,
    train_batches,
)
from ..errors import T5PeftError
from ..methods import apply_method, count_parameters, get_method_class, save_base, save_trained
from ..model.checkpoint import CheckpointError, resolve_model_dir
from ..model.config import T5Config
from ..model.t5 import T5ForConditionalGeneration, load_pretrained
from ..tokenizer import load_tokenizer
from .env import environment, memory_report
from .evaluate import EvalResult, Scorer, evaluate
from .layout import PRETRAINED_HERE, PRETRAINING_RECORD, RunFolder
from .state import Position, load_checkpoint, save_checkpoint
from .step import COMPILE_SETTINGS, TrainStep, resolve_compile

log = logging.getLogger(__name__)


class TrainError(T5PeftError, ValueError):
    pass


class TrainInterrupted(T5PeftError):
    """Ctrl-C during a run: the message says where it stopped and which checkpoint exists."""

    def __init__(self, message: str, output: Path, resumable: bool) -> None:
        super().__init__(message)
        self.output = output
        self.resumable = resumable  # the run folder holds the run's settings: ``--resume`` continues it


@dataclass
class TrainConfig:
    """Every setting of a run; saved as run_config.json. Defaults are the setup of record."""

    model: str = "t5-small"
    data: str = "stanfordnlp/imdb"
    output: str = "runs/t5peft"
    test_data: str | None = None  # default: the test split of `data`
    tokenizer: str | None = None  # default: the model's folder / Hub id
    init: str = "pretrained"  # or "random": weights drawn from the seed, only config.json is read
    method: str = "full"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int | None = None  # None: 512 when compiled (static shapes), 64 otherwise
    lr: float | None = None  # None: the method's default
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    dropout: float = 0.1
    seed: int = 0
    validation_size: int = 1000
    train_size: int | None = None  # a seeded random subset of the training split (after holding out validation)
    test_size: int | None = None  # a seeded random subset of the test split; None = all 25,000
    logs_per_two_epochs: int = 20
    max_source_length: int = 128
    truncation_side: str = "right"
    strip_html: bool = False
    prefix: str = "Review: "
    label_words: tuple[str, str] = ("negative", "positive")
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU; or "fp32" / "bf16"
    compile: str = "auto"  # auto: torch.compile + CUDA graphs on CUDA, eager on the CPU; or "on" / "off"
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.init not in ("pretrained", "random"):
            raise TrainError(f"init must be 'pretrained' or 'random', got {self.init!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TrainError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.compile not in COMPILE_SETTINGS:
            raise TrainError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {self.compile!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "logs_per_two_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainError(f"{name} must be >= 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise TrainError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        self._check_ranges()
        self.label_words = tuple(self.label_words)
        TaskFormat(self.prefix, self.label_words, self.max_source_length, self.truncation_side, self.strip_html)

    def _check_ranges(self) -> None:
        """Settings checked before anything is loaded, so a typo costs no data loading."""
        if not 0 <= self.dropout < 1:
            raise TrainError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.weight_decay >= 0:
            raise TrainError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm > 0:
            raise TrainError(f"max_grad_norm must be > 0 (gradients are always clipped), got {self.max_grad_norm}")
        if self.validation_size < 1:
            raise TrainError(f"validation_size must be >= 1, got {self.validation_size}")
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise TrainError(f"{name} must be at least 2 (a review of each class), got {value}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        return settings_dataclass(cls, values, source, TrainError)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else get_method_class(self.method).default_lr


T = TypeVar("T")


def settings_dataclass(cls: type[T], values: dict[str, Any], source: str, error: type[Exception]) -> T:
    """``cls(**values)`` for a settings dataclass, where an unknown key is an ``error`` naming it and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


# --------------------------------------------------------------------------------------------------
# Setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: this machine has no CUDA GPU that PyTorch can use (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16" and device.type != "cuda":
        raise TrainError("bf16 autocast is only used on CUDA; use --precision fp32 on CPU")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def build_model(cfg: TrainConfig) -> T5ForConditionalGeneration:
    """Pretrained weights, or random ones drawn from the seed with the architecture of ``cfg.model``."""
    if cfg.init == "pretrained":
        try:
            return load_pretrained(cfg.model)
        except CheckpointError as err:
            raise TrainError(f"{err} (no pretrained weights? pass --init random to train from random weights)") from err
    directory = resolve_model_dir(cfg.model) if not Path(cfg.model).is_file() else Path(cfg.model).parent
    config_path = Path(cfg.model) if Path(cfg.model).is_file() else directory / "config.json"
    if not config_path.is_file():
        raise TrainError(f"{config_path}: config.json not found (--init random needs the architecture)")
    config = T5Config.from_json_file(config_path)
    config.name_or_path = f"random-init:{cfg.model}"
    torch.manual_seed(cfg.seed)
    return T5ForConditionalGeneration(config)


TEST_HOLDOUT_FRACTION = 0.1  # of a single data file, held out as the test set when no --test-data is given


def pretraining_record(cfg: TrainConfig) -> dict[str, Any] | None:
    """The record ``t5peft pretrain`` wrote beside the weights of ``cfg.model``; None for other weights."""
    if cfg.init != "pretrained" or Path(cfg.model).is_file():
        return None
    path = resolve_model_dir(cfg.model) / PRETRAINING_RECORD  # a Hub id: the snapshot the weights came from
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrainError(f"{path}: not a readable pretraining record ({err})") from err


def _sample(data: LabeledTexts, size: int | None, seed: int, what: str) -> LabeledTexts:
    """A seeded, stratified sample of ``size`` rows; all of ``data`` (with a warning) when it has fewer."""
    if size is None or size == len(data):
        return data
    if size > len(data):
        log.warning(
            "%s %s is larger than the data (%s); using all %s", what, f"{size:,}", data.origin, f"{len(data):,}"
        )
        return data
    _, sample = split_validation(data, size=size, seed=seed)  # stratified, seeded
    sample.origin = f"{data.origin} [stratified sample: {size:,} of {len(data):,} rows, seed {seed}]"
    return sample


def holds_out_test(cfg: TrainConfig) -> bool:
    """A single data file and no ``test_data``: the run's test set is held out from that file."""
    return cfg.test_data is None and is_single_split_file(cfg.data)


def _hold_out_test(whole: LabeledTexts, cfg: TrainConfig) -> tuple[LabeledTexts, LabeledTexts]:
    """``(rest, test)``: a seeded, stratified test set taken out of a single data file, disjoint from the rest."""
    size = cfg.test_size if cfg.test_size is not None else max(2, round(TEST_HOLDOUT_FRACTION * len(whole)))
    if size + cfg.validation_size + 2 > len(whole):
        raise TrainError(
            f"{whole.origin}: {len(whole):,} rows cannot hold a test set of {size:,}, a validation set of "
            f"{cfg.validation_size:,} and training rows; pass --test-data, or a smaller --test-size / --validation-size"
        )
    rest, test = split_validation(whole, size=size, seed=cfg.seed + 2)
    rest.origin = f"{whole.origin} [minus the test hold-out: {len(rest):,} rows]"
    test.origin = f"{whole.origin} [test hold-out: {size:,} of {len(whole):,} rows, stratified, seed {cfg.seed + 2}]"
    return rest, test


def run_test_set(cfg: TrainConfig) -> LabeledTexts:
    """The test set of a run, exactly as its training scored it: same source, size, seed (or hold-out)."""
    if holds_out_test(cfg):
        return _hold_out_test(load_split(cfg.data, "train"), cfg)[1]
    return _sampled_test_split(cfg)[0]


def _sampled_test_split(cfg: TrainConfig) -> tuple[LabeledTexts, int]:
    """The test split of the run's test source, sampled to ``test_size``; and the size of the whole split."""
    whole = load_split(cfg.test_data or cfg.data, "test")
    return _sample(whole, cfg.test_size, cfg.seed + 2, "test_size"), len(whole)


def _split_off_validation(pool: LabeledTexts, cfg: TrainConfig) -> tuple[LabeledTexts, LabeledTexts]:
    if cfg.validation_size >= len(pool) - 1:
        raise TrainError(
            f"validation_size {cfg.validation_size:,} leaves fewer than 2 training rows of the {len(pool):,} in "
            f"{pool.origin}; pass a smaller --validation-size"
        )
    return split_validation(pool, size=cfg.validation_size, seed=cfg.seed)


def data_overlap(train: LabeledTexts, validation: LabeledTexts, test: LabeledTexts) -> dict[str, int]:
    """Rows whose exact text also occurs in another set of the run (counted and recorded, never removed)."""
    return {
        "test_in_train": shared_rows(test, train),
        "test_in_validation": shared_rows(test, validation),
        "validation_in_train": shared_rows(validation, train),
    }


@dataclass
class PreparedData:
    train: EncodedSplit
    validation: EncodedSplit
    test: EncodedSplit
    info: dict[str, Any]


@dataclass
class RunTexts:
    """The reviews of a run, before tokenising: three disjoint sets of rows, and where the test set came from."""

    train: LabeledTexts
    validation: LabeledTexts
    test: LabeledTexts
    test_from: str

    def overlap(self) -> dict[str, int]:
        return data_overlap(self.train, self.validation, self.test)


def select_texts(cfg: TrainConfig) -> RunTexts:
    """Train, validation and test reviews of a run, from its settings alone (seeded, stratified subsets)."""
    if holds_out_test(cfg):
        pool, test = _hold_out_test(load_split(cfg.data, "train"), cfg)
        test_from = (
            f"held out from {cfg.data}, a single file: {len(test):,} of its {len(pool) + len(test):,} rows "
            f"(stratified, seed {cfg.seed + 2}), disjoint from the training and validation rows "
            "(--test-data tests on another file)"
        )
    else:
        pool, (test, whole) = load_split(cfg.data, "train"), _sampled_test_split(cfg)
        test_from = f"the test split of {cfg.test_data or cfg.data}"
        if len(test) < whole:
            sample = f"a stratified sample (seed {cfg.seed + 2}) of {len(test):,} of the {whole:,} reviews"
            test_from = f"{sample} of {test_from}"
    train_rest, validation = _split_off_validation(pool, cfg)
    train = _sample(train_rest, cfg.train_size, cfg.seed + 1, "train_size")
    return RunTexts(train, validation, test, test_from)


def prepare_data(cfg: TrainConfig, tokenizer, task: TaskFormat) -> PreparedData:
    texts = select_texts(cfg)
    parts = {"train": texts.train, "validation": texts.validation, "test": texts.test}
    encoded = {name: encode_split(d, tokenizer, task) for name, d in parts.items()}
    info = {
        "sizes": {name: len(e) for name, e in encoded.items()},
        "truncated": {name: e.truncated for name, e in encoded.items()},
        "origins": {name: d.origin for name, d in parts.items()},
        "test_from": texts.test_from,
        "test_held_out": holds_out_test(cfg),
        "overlap": texts.overlap(),
        "checksums": {**dataset_checksums(cfg.data), **(dataset_checksums(cfg.test_data) if cfg.test_data else {})},
    }
    return PreparedData(encoded["train"], encoded["validation"], encoded["test"], info)


def linear_schedule(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def build_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    groups = model.peft.method.param_groups(model, cfg.learning_rate, cfg.weight_decay)
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=device.type == "cuda")


class DeviceTimer:
    """Seconds of a stretch of steps: CUDA events on CUDA, the host clock elsewhere; ``stop`` waits for the device."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._start: Any = None

    @property
    def running(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> float:
        if self._start is None:
            return 0.0
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            seconds = self._start.elapsed_time(end) / 1000
        else:
            seconds = time.perf_counter() - self._start
        self._start = None
        return seconds


# --------------------------------------------------------------------------------------------------
# The run


class Run:
    """A training run: owns the model, optimizer, data and the run folder. Setup runs in named steps."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.folder = RunFolder(self.out)
        get_method_class(cfg.method).config_class.from_options(cfg.method_options, cfg.method)  # typos first
        self._check_output_folder()
        self.device = resolve_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.compiled = resolve_compile(cfg.compile, self.device)
        self.eval_batch_size = cfg.eval_batch_size or (512 if self.compiled else 64)
        seed_everything(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
        self.task = TaskFormat(cfg.prefix, cfg.label_words, cfg.max_source_length, cfg.truncation_side, cfg.strip_html)
        self.first_tokens = [ids[0] for ids in label_token_ids(self.tokenizer, self.task)]
        self._setup_model()  # before the data: a wrong model or option fails in seconds, not after tokenizing
        self._setup_data()
        self.out.mkdir(parents=True, exist_ok=True)
        self._place_model()
        self._setup_optimizer()
        self.pretraining = pretraining_record(cfg)
        self.position = Position()
        self.last_validation: tuple[int, EvalResult] | None = None  # (step, result) of the latest log point
        self.bar: tqdm | None = None  # the training progress bar, closed on Ctrl-C
        self.compile_seconds = 0.0

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.data = prepare_data(cfg, self.tokenizer, self.task)
        self.static = (
            StaticShape.for_split(self.data.train, cfg.batch_size, cfg.max_source_length) if self.compiled else None
        )

    def _setup_model(self) -> None:
        cfg = self.cfg
        model = build_model(cfg)
        model.set_dropout(cfg.dropout)
        torch.manual_seed(cfg.seed)  # method initialisation is seeded on its own, whatever came before
        self.model = apply_method(model, cfg.method, **cfg.method_options)
        self.method = self.model.peft.method

    def _place_model(self) -> None:
        """Keep a random base beside the run (it cannot be fetched again), then move the model to its device."""
        if self.cfg.init == "random" and not self.model.peft.trains_base:
            save_base(self.model, self.folder.base)
            self.model.config.name_or_path = str(self.folder.base)  # the adapter's config points at it
        self.model.to(self.device)
        self.scorer = Scorer(self.model, self.first_tokens, self.bf16, self.compiled)

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        self.steps_per_epoch = steps_per_epoch(len(self.data.train), cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        warmup = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(self.total_steps, warmup))
        self.log_interval = max(1, round(2 * self.steps_per_epoch / cfg.logs_per_two_epochs))
        self.method.on_train_begin(self.model, self.total_steps)
        self.step = TrainStep(
            self.model,
            self.optimizer,
            self.scheduler,
            total_steps=self.total_steps,
            max_grad_norm=cfg.max_grad_norm,
            bf16=self.bf16,
            compile=self.compiled,
        )

    @property
    def weights_label(self) -> str:
        if self.cfg.init == "random":
            return "random-init"
        return PRETRAINED_HERE if self.pretraining is not None else "pretrained"

    def _check_output_folder(self) -> None:
        config_path = self.folder.run_config
        if config_path.exists() and not self.cfg.resume:
            raise TrainError(f"{self.out} already holds a run; pass --resume to continue it or choose another --output")
        if self.cfg.resume and config_path.exists():
            saved = json.loads(config_path.read_text())
            mine = {k: v for k, v in self.cfg.to_dict().items() if k not in ("resume", "progress")}
            theirs = {k: v for k, v in saved.items() if k not in ("resume", "progress")}
            mine["label_words"] = list(mine["label_words"])
            if mine != theirs:
                changed = sorted(k for k in mine if mine.get(k) != theirs.get(k))
                raise TrainError(f"{config_path}: --resume with different settings ({', '.join(changed)})")

    # ----------------------------------------------------------------------------------------------
    def write_metric(self, record: dict[str, Any]) -> None:
        record = {"weights": self.weights_label, **record}
        with open(self.folder.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.position.metric_lines += 1

    def _truncate_metrics(self, lines: int) -> None:
        path = self.folder.metrics
        if path.exists():
            kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            path.write_text("".join(kept), encoding="utf-8")

    def resume_if_asked(self) -> None:
        checkpoint = self.folder.checkpoint
        if not (self.cfg.resume and checkpoint.exists()):
            self._truncate_metrics(0)
            return
        self.position, method_state = load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)
        self.method.load_training_state(method_state)
        self.step.step = self.position.global_step
        self.step.reset_loss(self.position.running_loss_sum, self.position.running_loss_steps)
        self._truncate_metrics(self.position.metric_lines)
        log.info("resumed %s after epoch %d (step %d)", self.out, self.position.epochs_done, self.position.global_step)

    def evaluate_split(self, split: EncodedSplit, desc: str = "evaluate", progress: bool = False) -> EvalResult:
        return evaluate(
            self.model,
            split,
            self.tokenizer.pad_token_id,
            self.eval_batch_size,
            self.task.label_words,
            self.bf16,
            scorer=self.scorer,
            max_source_length=self.cfg.max_source_length,
            progress=progress,
            desc=desc,
        )

    def final_validation(self) -> EvalResult:
        """The validation result of the trained model; the last log point's when it was at the last step."""
        if self.last_validation is not None and self.last_validation[0] == self.position.global_step:
            return self.last_validation[1]
        return self.evaluate_split(self.data.validation, "validation")

    def validate(self, step: int, epoch: float, train_loss: float) -> EvalResult:
        result = self.evaluate_split(self.data.validation, "validation")
        self.last_validation = (step, result)
        if not self.cfg.progress:  # without a progress bar, one line per log point
            print(
                f"step {step}/{self.total_steps} (epoch {epoch:.2f}): train loss {train_loss:.4f}, "
                f"validation loss {result.loss:.4f}, accuracy {result.accuracy:.4f}",
                flush=True,
            )
        self.write_metric(
            {
                "step": step,
                "epoch": round(epoch, 4),
                "train_loss": train_loss,
                "val_loss": result.loss,
                "val_accuracy": result.accuracy,
                "lr": self.scheduler.get_last_lr()[0],
                "train_seconds": round(self.position.train_seconds, 3),
            }
        )
        return result

    def _prepare_step(self, batch: Batch) -> None:
        """Compile (and capture) the step before the clock starts; the time is reported on its own."""
        if not self.compiled or self.step.prepared:
            return
        start = time.perf_counter()
        self.step.prepare(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_seconds += time.perf_counter() - start

    def fit(self) -> None:
        cfg, pos = self.cfg, self.position
        self.model.train()
        bar = self.bar = tqdm(
            total=self.total_steps,
            initial=pos.global_step,
            disable=not cfg.progress,
            desc=f"{cfg.method} seed {cfg.seed}",
            unit="step",
            dynamic_ncols=True,
        )
        timer = DeviceTimer(self.device)
        pad = self.tokenizer.pad_token_id
        for epoch in range(pos.epochs_done, cfg.epochs):
            for batch in train_batches(self.data.train, cfg.batch_size, cfg.seed, epoch, pad, static=self.static):
                batch = batch.to(self.device)
                if not timer.running:
                    self._prepare_step(batch)
                    timer.start()
                self.step(batch)
                pos.global_step += 1
                pos.train_examples += batch.rows
                pos.train_tokens += batch.tokens
                bar.update(1)
                step = pos.global_step
                if step % self.log_interval == 0 or step == self.total_steps:
                    pos.train_seconds += timer.stop()
                    loss_sum, steps = self.step.read_loss()
                    result = self.validate(step, step / self.steps_per_epoch, loss_sum / steps)
                    self.step.reset_loss()
                    bar.set_postfix(
                        loss=f"{loss_sum / steps:.4f}",
                        val_acc=f"{result.accuracy:.4f}",
                        ex_s=f"{pos.train_examples / max(pos.train_seconds, 1e-9):.1f}",
                    )
            pos.train_seconds += timer.stop()
            pos.epochs_done = epoch + 1
            pos.running_loss_sum, pos.running_loss_steps = self.step.read_loss()
            save_checkpoint(
                self.folder.checkpoint, self.model, self.optimizer, self.scheduler, self.method.training_state(), pos
            )
        bar.close()

    # ----------------------------------------------------------------------------------------------
    def save_final(self) -> Path:
        """Write what the method trained to ``final/``; returns the weights file."""
        return save_trained(self.model, self.folder.final)

    def results(self, test, validation, weights_file: Path) -> dict[str, Any]:
        pos = self.position
        return {
            "method": self.cfg.method,
            "method_options": self.method.config.to_dict(),
            "learning_rate": self.cfg.learning_rate,
            "seed": self.cfg.seed,
            "weights": self.weights_label,
            "model": self.cfg.model,
            "pretraining": self.pretraining,
            "parameters": count_parameters(self.model),
            "test": test.summary(),
            "validation": validation.summary(),
            "training": {
                "epochs": self.cfg.epochs,
                "steps": pos.global_step,
                "seconds": pos.train_seconds,
                "examples_per_s": pos.train_examples / pos.train_seconds if pos.train_seconds else None,
                "tokens_per_s": pos.train_tokens / pos.train_seconds if pos.train_seconds else None,
                "precision": "bf16-autocast" if self.bf16 else "fp32",
                "compiled": self.compiled,
                "cuda_graph": self.step.cuda_graph,
                "compile_seconds": self.compile_seconds,
                "eval_batch_size": self.eval_batch_size,
            },
            "memory": memory_report(self.device),
            "adapter_file_bytes": weights_file.stat().st_size,
            "method_report": self.method.report(self.model),
            "data": self.data.info,
            "environment": environment(self.device),
            "config": self.cfg.to_dict(),
        }

    def where_stopped(self) -> str:
        """Where an interrupted run stopped and which checkpoint it can resume from."""
        pos = self.position
        if pos.global_step >= self.total_steps:
            where = f"after training ({pos.global_step} steps), before the test results were written"
        else:
            epoch = f"in epoch {pos.epochs_done + 1} of {self.cfg.epochs}"
            where = f"{epoch}, after step {pos.global_step} of {self.total_steps}"
        state = self.folder.checkpoint / "state.json"
        if state.is_file():
            saved = json.loads(state.read_text())["position"]
            checkpoint = (
                f"checkpoint: {self.folder.checkpoint} (end of epoch {saved['epochs_done']}, "
                f"step {saved['global_step']}); --resume continues from there"
            )
        else:
            checkpoint = "no checkpoint yet (one is written at the end of each epoch); --resume starts it over"
        return f"interrupted {where}; {checkpoint}"


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating ``path`` would create)."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _start(cfg: TrainConfig) -> Run:
    """Set the run up; if that fails (or is interrupted), remove the folders this call created."""
    created = _first_missing(Path(cfg.output))
    try:
        return Run(cfg)
    except BaseException as err:
        if created is not None and created.exists():
            shutil.rmtree(created)
        if isinstance(err, KeyboardInterrupt):
            resumable = RunFolder(Path(cfg.output)).run_config.is_file()
            where = "interrupted while setting up, before any training step" + ("" if resumable else "; nothing saved")
            raise TrainInterrupted(where, Path(cfg.output), resumable) from None
        raise


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run and return its results (also written to ``results.json``)."""
    run = _start(cfg)
    run.resume_if_asked()
    run.folder.run_config.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    try:
        return _train_and_test(run)
    except KeyboardInterrupt:
        if run.bar is not None:
            run.bar.close()
        raise TrainInterrupted(run.where_stopped(), run.out, True) from None


def _train_and_test(run: Run) -> dict[str, Any]:
    if torch.cuda.is_available() and run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    run.fit()
    weights_file = run.save_final()
    test = run.evaluate_split(run.data.test, "test", progress=run.cfg.progress)
    results = run.results(test, run.final_validation(), weights_file)
    run.folder.results.write_text(json.dumps(results, indent=2) + "\n")
    return results
