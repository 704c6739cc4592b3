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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.sources import LabeledTexts, dataset_checksums, load_split, split_validation
from ..data.text2text import EncodedSplit, TaskFormat, encode_split, steps_per_epoch, train_batches
from ..methods import apply_method, count_parameters, get_method_class, save_adapter
from ..model.checkpoint import CheckpointError, load_pretrained, resolve_model_dir
from ..model.config import T5Config
from ..model.t5 import T5ForConditionalGeneration
from ..tokenizer import load_tokenizer
from .env import environment, memory_report
from .evaluate import EvalResult, evaluate
from .state import Position, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CHECKPOINT = "checkpoint"
FINAL = "final"
BASE = "base"


class TrainError(ValueError):
    pass


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
    eval_batch_size: int = 64
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
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.init not in ("pretrained", "random"):
            raise TrainError(f"init must be 'pretrained' or 'random', got {self.init!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TrainError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "logs_per_two_epochs"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise TrainError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        self.label_words = tuple(self.label_words)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else get_method_class(self.method).default_lr


# --------------------------------------------------------------------------------------------------
# Setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
            raise TrainError(
                f"{err}\n(no pretrained weights? pass --init random to train from random weights)"
            ) from err
    directory = resolve_model_dir(cfg.model) if not Path(cfg.model).is_file() else Path(cfg.model).parent
    config_path = Path(cfg.model) if Path(cfg.model).is_file() else directory / "config.json"
    if not config_path.is_file():
        raise TrainError(f"{config_path}: config.json not found (--init random needs the architecture)")
    config = T5Config.from_json_file(config_path)
    config.name_or_path = f"random-init:{cfg.model}"
    torch.manual_seed(cfg.seed)
    return T5ForConditionalGeneration(config)


def _sample(data: LabeledTexts, size: int | None, seed: int, what: str) -> LabeledTexts:
    if size is None or size >= len(data):
        return data
    if size < 2:
        raise TrainError(f"{what} size must be at least 2, got {size}")
    _, sample = split_validation(data, size=size, seed=seed)  # stratified, seeded
    return sample


@dataclass
class PreparedData:
    train: EncodedSplit
    validation: EncodedSplit
    test: EncodedSplit
    info: dict[str, Any]


def prepare_data(cfg: TrainConfig, tokenizer, task: TaskFormat) -> PreparedData:
    train_all = load_split(cfg.data, "train")
    test_all = load_split(cfg.test_data or cfg.data, "test")
    train_rest, validation = split_validation(train_all, size=cfg.validation_size, seed=cfg.seed)
    train = _sample(train_rest, cfg.train_size, cfg.seed + 1, "train")
    test = _sample(test_all, cfg.test_size, cfg.seed + 2, "test")
    encoded = {
        name: encode_split(d, tokenizer, task)
        for name, d in (("train", train), ("validation", validation), ("test", test))
    }
    info = {
        "sizes": {name: len(e) for name, e in encoded.items()},
        "truncated": {name: e.truncated for name, e in encoded.items()},
        "origins": {"train": train_all.origin, "test": test_all.origin},
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


# --------------------------------------------------------------------------------------------------
# The run


class Run:
    """A training run: owns the model, optimizer, data and the run folder."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output)
        method_class = get_method_class(cfg.method)
        method_class.config_class.from_options(cfg.method_options, cfg.method)  # fail on a typo before any work
        self._check_output_folder()
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        seed_everything(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
        self.task = TaskFormat(cfg.prefix, cfg.label_words, cfg.max_source_length, cfg.truncation_side, cfg.strip_html)
        self.data = prepare_data(cfg, self.tokenizer, self.task)
        model = build_model(cfg)
        model.set_dropout(cfg.dropout)
        if cfg.init == "random" and get_method_class(cfg.method).saves_adapter:
            # a random base cannot be fetched again: keep it, and point the adapter's config at it
            model.save_pretrained(self.out / BASE)
            model.config.name_or_path = str(self.out / BASE)
        torch.manual_seed(cfg.seed)  # method initialisation is seeded on its own, whatever came before
        self.model = apply_method(model, cfg.method, **cfg.method_options).to(self.device)
        self.method = self.model.peft.method
        self.steps_per_epoch = steps_per_epoch(len(self.data.train), cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.trained_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.last_validation: tuple[int, EvalResult] | None = None  # (step, result) of the latest log point
        warmup = math.ceil(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(self.total_steps, warmup))
        self.log_interval = max(1, round(2 * self.steps_per_epoch / cfg.logs_per_two_epochs))
        self.position = Position()
        self.method.on_train_begin(self.model, self.total_steps)

    @property
    def weights_label(self) -> str:
        return "random-init" if self.cfg.init == "random" else "pretrained"

    def _check_output_folder(self) -> None:
        config_path = self.out / RUN_CONFIG
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
        with open(self.out / METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.position.metric_lines += 1

    def _truncate_metrics(self, lines: int) -> None:
        path = self.out / METRICS
        if path.exists():
            kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
            path.write_text("".join(kept), encoding="utf-8")

    def resume_if_asked(self) -> None:
        checkpoint = self.out / CHECKPOINT
        if not (self.cfg.resume and checkpoint.exists()):
            self._truncate_metrics(0)
            return
        self.position, method_state = load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)
        self.method.load_training_state(method_state)
        self._truncate_metrics(self.position.metric_lines)
        log.info("resumed %s after epoch %d (step %d)", self.out, self.position.epochs_done, self.position.global_step)

    def evaluate_split(self, split: EncodedSplit) -> EvalResult:
        pad = self.tokenizer.pad_token_id
        return evaluate(self.model, split, pad, self.cfg.eval_batch_size, self.task.label_words, self.bf16)

    def final_validation(self) -> EvalResult:
        """The validation result of the trained model; the last log point's when it was at the last step."""
        if self.last_validation is not None and self.last_validation[0] == self.position.global_step:
            return self.last_validation[1]
        return self.evaluate_split(self.data.validation)

    def validate(self, step: int, epoch: float, train_loss: float) -> None:
        result = self.evaluate_split(self.data.validation)
        self.last_validation = (step, result)
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

    def train_step(self, batch) -> float:
        model = self.model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        total = loss
        extra = self.method.extra_loss(model)
        if extra is not None:
            total = total + extra
        total.backward()
        step = self.position.global_step
        self.method.after_backward(model, step)
        torch.nn.utils.clip_grad_norm_(self.trained_params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.method.after_optimizer_step(model, step, self.total_steps)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def fit(self) -> None:
        cfg = self.cfg
        self.model.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.position.global_step,
            disable=not cfg.progress,
            desc=f"{cfg.method} seed {cfg.seed}",
            unit="step",
            dynamic_ncols=True,
        )
        running, count = 0.0, 0
        for epoch in range(self.position.epochs_done, cfg.epochs):
            batches = train_batches(self.data.train, cfg.batch_size, cfg.seed, epoch, self.tokenizer.pad_token_id)
            for batch in batches:
                start = time.perf_counter()
                loss = self.train_step(batch.to(self.device))
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.position.train_seconds += time.perf_counter() - start
                self.position.train_examples += batch.size
                self.position.train_tokens += int(batch.attention_mask.sum())
                self.position.global_step += 1
                running, count = running + loss, count + 1
                step = self.position.global_step
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.4f}", ex_s=f"{self.position.train_examples / self.position.train_seconds:.1f}"
                )
                if step % self.log_interval == 0 or step == self.total_steps:
                    self.validate(step, step / self.steps_per_epoch, running / count)
                    running, count = 0.0, 0
            self.position.epochs_done = epoch + 1
            save_checkpoint(
                self.out / CHECKPOINT,
                self.model,
                self.optimizer,
                self.scheduler,
                self.method.training_state(),
                self.position,
            )
        bar.close()

    # ----------------------------------------------------------------------------------------------
    def save_final(self) -> Path:
        final = self.out / FINAL
        if self.method.saves_adapter:
            save_adapter(self.model, final)
        else:
            self.model.save_pretrained(final)
        return final

    def results(self, test, validation, final: Path) -> dict[str, Any]:
        pos = self.position
        adapter_file = final / ("adapter_model.safetensors" if self.method.saves_adapter else "model.safetensors")
        return {
            "method": self.cfg.method,
            "method_options": self.method.config.to_dict(),
            "learning_rate": self.cfg.learning_rate,
            "seed": self.cfg.seed,
            "weights": self.weights_label,
            "model": self.cfg.model,
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
            },
            "memory": memory_report(self.device),
            "adapter_file_bytes": adapter_file.stat().st_size,
            "method_report": self.method.report(self.model),
            "data": self.data.info,
            "environment": environment(self.device),
            "config": self.cfg.to_dict(),
        }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run and return its results (also written to ``results.json``)."""
    run = Run(cfg)
    run.resume_if_asked()
    (run.out / RUN_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if torch.cuda.is_available() and run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    run.fit()
    final = run.save_final()
    results = run.results(run.evaluate_split(run.data.test), run.final_validation(), final)
    (run.out / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    return results
