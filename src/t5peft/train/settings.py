"""The settings of a fine-tuning run (:class:`TrainConfig`, saved as ``run_config.json``) and its error.

No torch at module level: the command line builds ``t5peft train --help`` from this class. What needs torch (the
task format's tokenizer rules, the method registry) is imported when it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..engine.settings import STRATEGIES, SettingsFile, check_run_settings, check_storage
from ..errors import T5PeftError

if TYPE_CHECKING:
    from ..data.tasks import Task
    from ..data.text2text import TaskFormat
    from .rows import RowSelection


PATH_SETTINGS = ("model", "tokenizer", "data", "test_data")  # recorded resolved in paths.json (README, "Run folder")


class TrainError(T5PeftError, ValueError):
    pass


@dataclass
class TrainConfig(SettingsFile):
    """Every setting of a run; saved as run_config.json. Defaults are the setup of record."""

    error: ClassVar[type[T5PeftError]] = TrainError
    model: str = "t5-small"
    data: str | None = None  # None: the task's Hub dataset (imdb: stanfordnlp/imdb)
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
    prefix: str | None = None  # None: the task's (imdb: "Review: "); text put before a one-column task's text
    label_words: tuple[str, ...] | None = None  # None: the task's (imdb: negative, positive); index = class
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on CPU; or "fp32" / "bf16"
    compile: str = "auto"  # auto: torch.compile + CUDA graphs on CUDA, eager on the CPU; or "on" / "off"
    resume: bool = False
    progress: bool = True
    skip_empty: bool = False  # leave out rows with empty text (counted in results.json) instead of refusing the data
    allow_missing_classes: bool = False  # a split without reviews of some class: a loud warning, not an error
    tensorboard: str | None = None  # a folder for TensorBoard events (engine.tensorboard); None: none
    push_to_hub: str | None = None  # a Hub repository id the finished run is uploaded to (t5peft push)
    activation_checkpointing: bool = False  # recompute each T5 block's activations in the backward pass
    base_dtype: str = "fp32"  # "bf16": the frozen weights of an adapter method stored in bf16 (trained ones: float32)
    quantize: str = "none"  # "nf4" / "int8": the frozen q, k, v, o, wi weights quantized (torchao); see model.storage
    strategy: str = "auto"  # under torchrun: "ddp" (auto when more than one rank) or "fsdp"; see engine.distributed
    task: str = "imdb"  # a built-in task (data/tasks.py), changed by the four settings below
    text_column: tuple[str, ...] | None = None  # None: the task's text column(s)
    label_column: str | None = None  # None: the task's
    template: str | None = None  # the source, columns as {name}; None: the task's (or prefix + {column})

    def __post_init__(self) -> None:
        """Checked before anything is loaded, so a typo costs no data loading."""
        check_run_settings(self, TrainError)
        for name in ("epochs", "eval_batch_size", "logs_per_two_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainError(f"{name} must be >= 1, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.validation_size < 1:
            raise TrainError(f"validation_size must be >= 1, got {self.validation_size}")
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise TrainError(f"{name} must be at least 2 (a review of each class), got {value}")
        check_storage(self.base_dtype, self.quantize, self.method, TrainError)
        if self.strategy not in STRATEGIES:
            raise TrainError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        self._settle_task()
        self.task_format()

    def _settle_task(self) -> None:
        """Resolve the task once and write what it decided into the settings that depend on it (data, label words,
        prefix), so run_config.json says what the run used and an IMDb run's settings read as they always did."""
        from ..data.tasks import TaskError, source_prefix

        if isinstance(self.text_column, str):
            self.text_column = tuple(name.strip() for name in self.text_column.split(","))
        elif self.text_column is not None:
            self.text_column = tuple(self.text_column)
        if self.label_words is not None:
            self.label_words = tuple(self.label_words)
        try:
            task = self.resolved_task()
        except TaskError as err:
            raise TrainError(str(err)) from None
        self.label_words = task.label_words
        if self.template is None and self.prefix is None:
            self.prefix = source_prefix(task)
        if self.data is None:
            if task.hub_id is None:
                raise TrainError(f"task {self.task!r} has no dataset of its own; give --data")
            self.data = task.hub_id

    def resolved_task(self) -> Task:
        """The task of the run: the built-in ``task`` with this run's text/label columns, label words and template."""
        from ..data.tasks import resolve_task

        return resolve_task(
            self.task,
            text_columns=self.text_column,
            label_column=self.label_column,
            label_words=self.label_words,
            template=self.template,
            prefix=self.prefix,
        )

    @property
    def learning_rate(self) -> float:
        from ..methods.registry import get_declaration  # declarations only: no torch

        return self.lr if self.lr is not None else get_declaration(self.method).default_lr

    def task_format(self) -> TaskFormat:
        """How a row becomes a source and target (checked: the task, truncation side, source length)."""
        from ..data.text2text import TaskFormat

        return TaskFormat(self.resolved_task(), self.max_source_length, self.truncation_side, self.strip_html)

    def rows(self) -> RowSelection:
        """Which reviews the run trains, validates and tests on."""
        from .rows import RowSelection

        assert self.data is not None  # settled in __post_init__
        return RowSelection(
            task=self.resolved_task(),
            data=self.data,
            test_data=self.test_data,
            seed=self.seed,
            validation_size=self.validation_size,
            train_size=self.train_size,
            test_size=self.test_size,
            skip_empty=self.skip_empty,
        )
