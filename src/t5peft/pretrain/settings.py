"""The settings of a pretraining run (:class:`PretrainConfig`, saved as ``pretrain_config.json``) and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engine.settings import SettingsFile, check_run_settings
from ..errors import T5PeftError

NOISE_DENSITY = 0.15  # T5's span corruption: share of tokens corrupted
MEAN_NOISE_SPAN_LENGTH = 3.0  # T5's mean length of a corrupted span
SCHEDULES = ("cosine", "inverse-sqrt", "constant")
EXPORT_DTYPES = ("fp32", "bf16")


class PretrainError(T5PeftError, ValueError):
    pass


@dataclass
class PretrainConfig(SettingsFile):
    """Every setting of a pretraining run; saved as ``pretrain_config.json``."""

    error: ClassVar[type[T5PeftError]] = PretrainError
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
    tensorboard: str | None = None  # a folder for TensorBoard events (engine.tensorboard); None: none
    activation_checkpointing: bool = False  # recompute each T5 block's activations in the backward pass

    def __post_init__(self) -> None:
        check_run_settings(self, PretrainError)
        if self.max_steps is None and self.max_minutes is None:
            raise PretrainError("give a budget: max_steps and/or max_minutes")
        if self.schedule not in SCHEDULES:
            raise PretrainError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.export_dtype not in EXPORT_DTYPES:
            raise PretrainError(f"export_dtype must be one of {', '.join(EXPORT_DTYPES)}, got {self.export_dtype!r}")
        for name in ("eval_every", "checkpoint_every", "validation_examples", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PretrainError(f"{name} must be >= 1, got {value}")
        for name in ("max_minutes", "max_shard_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PretrainError(f"{name} must be > 0, got {value}")
        if self.data_workers is not None and self.data_workers < 0:
            raise PretrainError(f"data_workers must be >= 0, got {self.data_workers}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise PretrainError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise PretrainError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        self.export_steps = sorted({int(step) for step in self.export_steps})
        if self.export_steps and self.export_steps[0] < 1:
            raise PretrainError(f"export_steps must be >= 1, got {self.export_steps[0]}")
        if isinstance(self.splits, str):
            self.splits = [self.splits]

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
