"""What every run's settings share: reading them from a dict, the checks common to both kinds of run, the
comparison of saved settings, and the error a Ctrl-C becomes.

No torch here (nor anything that imports it): the command line reads settings classes to build its help.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import T5PeftError

INITS = ("pretrained", "random")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, float32 on the CPU
COMPILE_SETTINGS = ("auto", "on", "off")  # auto: compiled (+ CUDA graph) on CUDA, eager on the CPU
SEED_LIMIT = 2**32  # numpy's generator takes seeds in [0, 2**32)

T = TypeVar("T")


class TrainInterrupted(T5PeftError):
    """Ctrl-C during a run (fine-tuning or pretraining): the message says where it stopped and which checkpoint
    exists; the command line prints it with the command that continues the run, and exits 130."""

    exit_code = 130

    def __init__(self, message: str, output: Path, resumable: bool) -> None:
        super().__init__(message)
        self.output = output
        self.resumable = resumable  # the run folder holds the run's settings: ``--resume`` continues it


class RunSettings(Protocol):
    """The settings every kind of run has (``TrainConfig``, ``PretrainConfig``)."""

    error: ClassVar[type[T5PeftError]]
    model: str
    output: str
    init: str
    batch_size: int
    lr: float | None
    weight_decay: float
    max_grad_norm: float
    dropout: float
    seed: int
    device: str
    precision: str
    compile: str
    resume: bool
    progress: bool
    tensorboard: str | None  # the folder of the run's TensorBoard events; None: none written

    def to_dict(self) -> dict[str, Any]: ...


def settings_dataclass(cls: type[T], values: dict[str, Any], source: str, error: type[Exception]) -> T:
    """``cls(**values)`` for a settings dataclass, where an unknown key is an ``error`` naming it and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


class SettingsFile:
    """What a settings dataclass (``TrainConfig``, ``PretrainConfig``) gets to be read from and written to JSON."""

    error: ClassVar[type[T5PeftError]]  # raised for an unknown or bad setting

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any], source: str = "<dict>") -> T:
        return settings_dataclass(cls, values, source, cls.error)  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def comparable(cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Saved settings as ``cls`` reads them today, as JSON values: a setting added since the file was written
    gets its default (which keeps the old behaviour); values ``cls`` refuses are kept as they were."""
    with contextlib.suppress(T5PeftError, TypeError, ValueError):
        values = cls.from_dict(values).to_dict()
    return json.loads(json.dumps(values))


def check_run_settings(cfg: RunSettings, error: type[T5PeftError]) -> None:
    """The checks both kinds of run make on the settings they share; an ``error`` naming the setting."""
    for name, choices in (("init", INITS), ("precision", PRECISIONS), ("compile", COMPILE_SETTINGS)):
        value = getattr(cfg, name)
        if value not in choices:
            raise error(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    if cfg.batch_size < 1:
        raise error(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise error(f"lr must be > 0, got {cfg.lr}")
    if not cfg.weight_decay >= 0:
        raise error(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if not cfg.max_grad_norm > 0:
        raise error(f"max_grad_norm must be > 0 (gradients are always clipped), got {cfg.max_grad_norm}")
    if not 0 <= cfg.dropout < 1:
        raise error(f"dropout must be in [0, 1), got {cfg.dropout}")
    if not 0 <= cfg.seed < SEED_LIMIT:
        raise error(f"seed must be in [0, 2**32), got {cfg.seed}")
