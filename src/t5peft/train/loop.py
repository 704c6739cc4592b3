"""Fine-tune T5 on IMDb as text-to-text with any registered method, and evaluate it.

One call of :func:`train` does the whole run: data, model, method, AdamW with warmup + linear decay,
gradient clipping, periodic validation, an end-of-epoch checkpoint (``--resume`` continues from it), the
final test evaluation, and the files of the run (see README, "Run folder"). :class:`Run` is the fine-tuning
recipe on the shared run skeleton (:mod:`t5peft.engine.skeleton`): its settings are in :mod:`.settings`, the
choice of its reviews in :mod:`.rows`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.sources import dataset_checksums
from ..data.text2text import (
    Batch,
    EncodedSplit,
    StaticShape,
    TaskFormat,
    batch_indices,
    collate,
    encode_split,
    label_token_ids,
    steps_per_epoch,
    target_lengths,
)
from ..engine.env import environment
from ..engine.layout import NOT_RESULTS, PRETRAINED_HERE, PRETRAINING_RECORD, RunFolder, resolved_paths
from ..engine.precision import store_base
from ..engine.skeleton import Pause, RunSkeleton
from ..engine.state import Position
from ..engine.step import TrainStep
from ..methods import apply_method, count_parameters, get_declaration, save_base, save_trained
from ..model.checkpoint import resolve_model_dir
from ..tokenizer import copy_tokenizer_files, load_run_tokenizer
from .card import write_model_card
from .evaluate import EvalResult, Scorer, evaluate
from .rows import RunTexts
from .settings import PATH_SETTINGS, TrainConfig, TrainError

log = logging.getLogger(__name__)


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


@dataclass
class PreparedData:
    train: EncodedSplit
    validation: EncodedSplit
    test: EncodedSplit
    info: dict[str, Any]


def data_checksums(cfg: TrainConfig) -> dict[str, str]:
    """SHA-256 of the local files the run reads (the task's splits of its data, and its test data)."""
    assert cfg.data is not None  # settled by TrainConfig
    task = cfg.resolved_task()
    splits = ("train", "test") if task.test_split == "test" else ("train", task.test_split)
    test = dataset_checksums(cfg.test_data) if cfg.test_data else {}
    return {**dataset_checksums(cfg.data, hub_config=task.hub_config, splits=splits), **test}


def check_classes(texts: RunTexts, cfg: TrainConfig) -> list[str]:
    """Every set holds reviews of every class, or (``allow_missing_classes``) a loud warning per set that does not,
    returned for ``results.json``."""
    missing = texts.missing_classes(cfg.resolved_task().classes)
    if missing and not cfg.allow_missing_classes:
        raise TrainError(
            f"{missing[0]}: its accuracy would say nothing; check the data's labels, or pass --allow-missing-classes"
        )
    for problem in missing:
        log.warning("%s (--allow-missing-classes): its accuracy says little; recorded in results.json", problem)
    return missing


def prepare_data(cfg: TrainConfig, tokenizer, task: TaskFormat) -> PreparedData:
    rows = cfg.rows()
    texts = rows.texts()
    missing_classes = check_classes(texts, cfg)
    parts = {"train": texts.train, "validation": texts.validation, "test": texts.test}
    encoded = {name: encode_split(d, tokenizer, task) for name, d in parts.items()}
    info = {
        "sizes": {name: len(e) for name, e in encoded.items()},
        "truncated": {name: e.truncated for name, e in encoded.items()},
        "origins": {name: d.origin for name, d in parts.items()},
        "test_from": texts.test_from,
        "test_held_out": rows.holds_out_test,
        "overlap": texts.overlap(),
        "class_balance": texts.class_counts(task.task.classes),
        "missing_classes": missing_classes,
        "skipped_empty": texts.skipped_empty() if cfg.skip_empty else None,
        "checksums": data_checksums(cfg),
        "task": task.task.describe(),
        "test_split": rows.test_split_name if not rows.holds_out_test else None,
        "unlabelled_rows": {name: d.unlabelled.as_dict() for name, d in parts.items() if d.unlabelled.count},
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


class Run(RunSkeleton):
    """A fine-tuning run: the method, the reviews, validation at log points, a checkpoint per epoch, the test."""

    folder_type = RunFolder
    kind = "a run"
    command = "t5peft train"
    distributable = True
    checkpoint_schedule = "one is written at the end of each epoch"
    cfg: TrainConfig
    folder: RunFolder

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)

    def check_output_folder(self) -> None:
        """Also: a run resumed from another working directory reads the inputs it started with, or stops."""
        super().check_output_folder()
        if not (self.cfg.resume and self.folder.paths.is_file()):
            return
        then = json.loads(self.folder.paths.read_text(encoding="utf-8"))
        now = resolved_paths(self.cfg.to_dict(), PATH_SETTINGS)
        for name in PATH_SETTINGS:
            before, after = (then.get(name) or {}).get("resolved"), now[name]["resolved"]
            if before != after:
                raise TrainError(
                    f"{self.folder.paths}: --resume from another place: {name} {now[name]['as_typed']!r} names "
                    f"{after or 'nothing here'}, the run started with {before or 'a Hub id'}; resume from "
                    f"{then['working_directory']} or give the paths it used"
                )

    def write_settings(self) -> None:
        super().write_settings()
        paths = resolved_paths(self.cfg.to_dict(), PATH_SETTINGS)
        self.folder.paths.write_text(json.dumps(paths, indent=2) + "\n", encoding="utf-8")

    def check_settings(self) -> None:
        """The method's options, parsed once and before anything is loaded, so a typo fails first; with
        ``push_to_hub``, the repository id and the token, so a run does not train for an upload it cannot make."""
        cfg = self.cfg
        self.method_config = get_declaration(cfg.method).config_class.from_options(cfg.method_options, cfg.method)
        if cfg.push_to_hub:
            from ..hub import check_repo_id, hub_token

            check_repo_id(cfg.push_to_hub)
            hub_token()

    def setup(self) -> None:
        cfg = self.cfg
        self.eval_batch_size = cfg.eval_batch_size or (512 if self.compiled else 64)
        self.tokenizer = load_run_tokenizer(cfg.tokenizer, cfg.model)
        self.task = cfg.task_format()
        self.targets = label_token_ids(self.tokenizer, self.task)
        self._setup_model()  # before the data: a wrong model or option fails in seconds, not after tokenizing
        self._setup_data()
        self._place_model()
        self._setup_optimizer()
        self.pretraining = pretraining_record(cfg)
        self.last_validation: tuple[int, EvalResult] | None = None  # (step, result) of the latest log point

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.data = prepare_data(cfg, self.tokenizer, self.task)
        local_batch = self.dist.local_batch_size(cfg.batch_size)  # this rank's part of each global batch
        self.static = (
            StaticShape.for_split(self.data.train, local_batch, cfg.max_source_length) if self.compiled else None
        )

    def _setup_model(self) -> None:
        cfg = self.cfg
        storage = {"base_dtype": cfg.base_dtype, "quantize": cfg.quantize}
        # under FSDP (most methods): the base is read once sharded, each rank its part (runtime.place / wrap)
        model, self.deferred = self.runtime.build_model(
            cfg.model, cfg.init, cfg.seed, TrainError, method=cfg.method, **storage
        )
        model.set_dropout(cfg.dropout)
        model.set_activation_checkpointing(cfg.activation_checkpointing)
        torch.manual_seed(cfg.seed)  # method initialisation is seeded on its own, whatever came before
        self.model = apply_method(model, cfg.method, config=self.method_config)
        self.method = self.model.peft.method

    def _place_model(self) -> None:
        """Keep a random base beside the run (it cannot be fetched again, and a quantized one cannot be written),
        move the model to its device, and store its frozen base as asked (bf16 / quantized: ``engine.precision``).
        A resumed run re-creates the stored base the same way from the same full-precision weights."""
        if self.cfg.init == "random" and not self.model.peft.trains_base:
            if self.dist.is_writer:
                save_base(self.model, self.folder.base)
            self.model.config.name_or_path = str(self.folder.base)  # the adapter's config points at it
        self.runtime.place(self.model, self.deferred)
        self.base_storage = store_base(self.model, self.cfg.base_dtype, self.cfg.quantize, self.device, TrainError)
        # DDP / FSDP on many ranks; the model itself in one process
        self.forward = self.runtime.wrap(self.model, self.deferred)
        self.deferred = None  # read: nothing of it is needed again
        self.scorer = Scorer(self.model, self.targets, self.bf16, self.compiled)

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
            forward=self.forward,
            dist=self.dist,
        )

    @property
    def weights_label(self) -> str:
        if self.cfg.init == "random":
            return "random-init"
        return PRETRAINED_HERE if self.pretraining is not None else "pretrained"

    # ----------------------------------------------------------------------------------------------
    # The loop's steps

    @property
    def progress_label(self) -> str:
        return f"{self.cfg.method} seed {self.cfg.seed}"

    def batches(self) -> Iterator[Batch]:
        """Each global batch (``data.text2text.train_batches``' order), as this rank's part of it: the whole batch
        in one process."""
        cfg, pad, dist, split = self.cfg, self.tokenizer.pad_token_id, self.dist, self.data.train
        lengths = target_lengths(split)
        for epoch in range(self.position.epochs_done, cfg.epochs):
            for indices in batch_indices(len(split), cfg.batch_size, cfg.seed, epoch):
                part = dist.shard(indices)
                batch = dataclasses.replace(
                    collate(split, part, pad, self.static),
                    loss_weight=dist.loss_weight(indices, part, lengths),
                    global_rows=len(indices),
                    global_tokens=sum(len(split.source_ids[i]) for i in indices),
                )
                yield batch.to(self.device)

    def pause_after(self, step: int, train_seconds: float) -> Pause | None:
        """A log point every ``log_interval`` steps and at the last; a checkpoint at the end of every epoch."""
        log = step % self.log_interval == 0 or step == self.total_steps
        epoch_end = step % self.steps_per_epoch == 0
        return Pause(log=log, checkpoint=epoch_end) if log or epoch_end else None

    def log_point(self, step: int) -> None:
        train_loss = self.take_train_loss()
        result = self.validate(step, step / self.steps_per_epoch, train_loss)
        pos = self.position
        self.bar.set_postfix(
            loss=f"{train_loss:.4f}",
            val_acc=f"{result.accuracy:.4f}",
            ex_s=f"{pos.train_examples / max(pos.train_seconds, 1e-9):.1f}",
        )

    def validate(self, step: int, epoch: float, train_loss: float) -> EvalResult:
        result = self.evaluate_split(self.data.validation, "validation")
        self.last_validation = (step, result)
        if not self.cfg.progress and self.dist.is_writer:  # without a progress bar, one line per log point
            print(
                f"step {step}/{self.total_steps} (epoch {epoch:.2f}): train loss {train_loss:.4f}, "
                f"validation loss {result.loss:.4f}, accuracy {result.accuracy:.4f}",
                flush=True,
            )
        self.log_metrics(
            {
                "weights": self.weights_label,
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

    def save_checkpoint(self) -> None:
        self.position.epochs_done = self.position.global_step // self.steps_per_epoch
        super().save_checkpoint()

    def where(self) -> str:
        pos = self.position
        if pos.global_step >= self.total_steps:
            return f"after training ({pos.global_step} steps), before the test results were written"
        return (
            f"in epoch {pos.epochs_done + 1} of {self.cfg.epochs}, after step {pos.global_step} of {self.total_steps}"
        )

    def describe_checkpoint(self, position: Position) -> str:
        return f"end of epoch {position.epochs_done}, step {position.global_step}"

    # ----------------------------------------------------------------------------------------------
    # Evaluation and the end of the run

    def evaluate_split(self, split: EncodedSplit, desc: str = "evaluate", progress: bool = False) -> EvalResult:
        return evaluate(
            self.model,
            split,
            self.tokenizer.pad_token_id,
            self.eval_batch_size,
            self.task.task.classes,
            self.bf16,
            scorer=self.scorer,
            metric=self.task.task.metric,
            max_source_length=self.cfg.max_source_length,
            progress=progress and self.dist.is_writer,
            desc=desc,
            dist=self.dist,
        )

    def final_validation(self) -> EvalResult:
        """The validation result of the trained model; the last log point's when it was at the last step."""
        if self.last_validation is not None and self.last_validation[0] == self.position.global_step:
            return self.last_validation[1]
        return self.evaluate_split(self.data.validation, "validation")

    def finish(self) -> dict[str, Any]:
        """Write what the method trained to ``final/`` (with the tokenizer), test it, write ``results.json`` and the
        model card (into ``final/``), and upload ``final/`` when ``push_to_hub`` asks. The writer rank writes; every
        rank tests its part."""
        final = self.folder.final
        self.dist.check_replicas(self.model, TrainError)
        weights_file = None
        with self.dist.full_weights(self.model):
            if self.dist.is_writer:
                weights_file = save_trained(self.model, final)
                copy_tokenizer_files(self.tokenizer, final)  # the folder carries its tokenizer, moved or copied
        test = self.evaluate_split(self.data.test, "test", progress=self.cfg.progress)
        results = self.results(test, self.final_validation(), weights_file)
        if not self.dist.is_writer:
            return results
        self.folder.results.write_text(json.dumps(results, indent=2) + "\n")
        write_model_card(results, final)
        if self.cfg.push_to_hub:
            from .publish import push_run

            url = push_run(self.folder.root, self.cfg.push_to_hub)
            print(f"pushed {final} with its model card to {url}", flush=True)
        return results

    def hparams(self, results: dict[str, Any]) -> dict[str, Any]:
        return tensorboard_hparams(results)

    def final_metrics(self, results: dict[str, Any]) -> dict[str, Any]:
        return tensorboard_metrics(results)

    def results(self, test: EvalResult, validation: EvalResult, weights_file: Path | None) -> dict[str, Any]:
        """The results (every rank computes them: the memory of every rank is gathered; the writer has the file)."""
        pos = self.position
        return {
            "task": self.task.task.name,
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
                "precision": self.runtime.precision,
                "compiled": self.compiled,
                "cuda_graph": self.step.cuda_graph,
                "compile_seconds": self.compile_seconds,
                "eval_batch_size": self.eval_batch_size,
            },
            "distribution": self.dist.describe(),
            "memory": self.runtime.memory_report(),
            "base_storage": self.base_storage,
            "adapter_file_bytes": weights_file.stat().st_size if weights_file is not None else None,
            "method_report": self.method.report(self.model),
            "data": self.data.info,
            "environment": environment(self.device),
            "config": self.cfg.to_dict(),
        }


def tensorboard_hparams(results: dict[str, Any]) -> dict[str, Any]:
    """A run's HParams entry, from its ``results.json``: its settings (not where it writes) with what the
    defaults came to (the method's options, the learning rate) and its weights."""
    unrecorded = NOT_RESULTS | {"output"}
    settings = {key: value for key, value in results["config"].items() if key not in unrecorded}
    return {
        **settings,
        "method_options": results["method_options"],
        "learning_rate": results["learning_rate"],
        "weights": results["weights"],
    }


def tensorboard_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """A finished run's metrics in the HParams table (``final/...`` scalars), from its ``results.json``."""
    training = results["training"]
    return {
        "test_accuracy": results["test"]["accuracy"],
        "test_loss": results["test"]["loss"],
        "val_accuracy": results["validation"]["accuracy"],
        "val_loss": results["validation"]["loss"],
        "trainable_parameters": results["parameters"]["trainable"],
        "train_seconds": training["seconds"],
        "examples_per_s": training["examples_per_s"],
    }


def write_tensorboard_of_finished_run(run_folder: Path, directory: Path) -> None:
    """TensorBoard events for a run that finished without them (``compare`` reusing it), from its
    ``metrics.jsonl`` and ``results.json``: the same scalars and HParams entry, without the per-point
    throughput and memory, which only the live run measured."""
    from ..engine.tensorboard import write_events

    folder = RunFolder(run_folder)
    results = json.loads(folder.results.read_text(encoding="utf-8"))
    records = [json.loads(line) for line in folder.metrics.read_text(encoding="utf-8").splitlines() if line]
    write_events(directory, records, tensorboard_hparams(results), tensorboard_metrics(results))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run and return its results (also written to ``results.json``)."""
    return Run.start(cfg).run()
