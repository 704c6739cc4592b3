"""Where and how a run computes: its device, precision and compilation (:class:`Runtime`), its seeds, and the
model it starts from (:func:`build_model`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import T5PeftError
from ..model.checkpoint import CheckpointError, resolve_model_dir
from ..model.config import T5Config
from ..model.family import FAMILY, canonical_name, family_config
from ..model.t5 import T5ForConditionalGeneration, load_pretrained
from .distributed import DeferredBase, Distribution, rank_device
from .env import memory_report
from .step import resolve_compile


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, error: type[T5PeftError]) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device {name}: this machine has no CUDA GPU that PyTorch can use (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def use_bf16(precision: str, device: torch.device, error: type[T5PeftError]) -> bool:
    if precision == "bf16" and device.type != "cuda":
        raise error("bf16 autocast is only used on CUDA; use --precision fp32 on CPU")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


@dataclass(frozen=True)
class Runtime:
    """The device of a run, its precision policy (bf16 autocast or float32) and whether its step is compiled.

    The one place that knows where tensors live: the skeleton places the model (:meth:`place`), waits for the
    device (:meth:`sync`) and reads its memory through it. How the frozen base is stored (bf16, NF4, int8) is
    :mod:`.precision`'s, called once the model is placed. ``dist`` is the process group and strategy
    (:class:`~.distributed.Distribution`: one process unless torchrun started the run).
    """

    device: torch.device
    bf16: bool
    compiled: bool
    dist: Distribution = field(default_factory=Distribution.single)

    @classmethod
    def resolve(
        cls, device: str, precision: str, compile: str, error: type[T5PeftError], strategy: str = "auto"
    ) -> Runtime:
        """From the ``device`` / ``precision`` / ``compile`` / ``strategy`` settings (``auto``: what suits the
        device and the launch); under torchrun this joins the process group."""
        resolved = rank_device(resolve_device(device, error))
        dist = Distribution.start(strategy, resolved, error)
        return cls(resolved, use_bf16(precision, resolved, error), resolve_compile(compile, resolved), dist)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        """As results record it."""
        return "bf16-autocast" if self.bf16 else "fp32"

    def build_model(
        self, model: str, init: str, seed: int, error: type[T5PeftError], *, method: str, base_dtype: str, quantize: str
    ) -> tuple[T5ForConditionalGeneration, DeferredBase | None]:
        """The model a run starts from (:func:`build_model`), and, where this run reads each rank's shards of the
        weights only (:meth:`Distribution.loads_shards`), the model with its base deferred and what reads it once
        sharded (:class:`~.distributed.DeferredBase`; pass it to :meth:`place` and :meth:`wrap`)."""
        if not self.dist.loads_shards(init, method, base_dtype, quantize):
            return build_model(model, init, seed, error), None
        try:
            return DeferredBase.build(model)
        except CheckpointError as err:
            raise error(f"{err} (no pretrained weights? pass --init random to start from random weights)") from err

    def place(self, model: nn.Module, deferred: DeferredBase | None = None) -> nn.Module:
        """Move ``model`` to the device (in place; also returned); with a deferred base, keep what the method drew
        and leave the parameters on the meta device until :meth:`wrap` reads them."""
        if deferred is not None:
            deferred.release(model, self.device)
            return model
        return model.to(self.device)

    def wrap(self, model: nn.Module, deferred: DeferredBase | None = None) -> nn.Module:
        """The module the training forward goes through (DDP, FSDP or ``model``: :meth:`Distribution.wrap`)."""
        return self.dist.wrap(model, self.device, self.bf16, deferred)

    def sync(self) -> None:
        """Wait until the device has done the work queued so far."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def memory_report(self) -> dict[str, Any]:
        """This process's peak memory; with more than one rank also ``per_rank``, every rank's, in rank order."""
        report = memory_report(self.device)
        if self.dist.distributed:
            names = sorted(report)
            values = self.dist.gather_ints([int(report[name]) for name in names], self.device)
            report["per_rank"] = [dict(zip(names, row, strict=True)) for row in values]
        return report


def build_model(model: str, init: str, seed: int, error: type[T5PeftError]) -> T5ForConditionalGeneration:
    """The model a run starts from: pretrained weights (a folder or a Hub id), or, with ``init="random"``, weights
    drawn from ``seed`` with the architecture of ``model``'s config.json (a folder, or the file itself)."""
    if init == "pretrained":
        try:
            return load_pretrained(model)
        except CheckpointError as err:
            raise error(f"{err} (no pretrained weights? pass --init random to start from random weights)") from err
    config = architecture(model, error)
    config.name_or_path = f"random-init:{model}"
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)


def architecture(model: str, error: type[T5PeftError]) -> T5Config:
    """The architecture ``model`` names: a config.json file, a folder holding one, a member of the published T5
    family by name (``t5-large``, ``google/flan-t5-xxl``: nothing is downloaded), or another Hub id's config.json.
    A bare name that is none of these is an ``error`` listing the family."""
    path = Path(model)
    if not path.exists() and canonical_name(model) is not None:
        return family_config(model)
    if not path.exists() and "/" not in model:
        raise error(f"--model {model}: no such folder or file, and not one of the known models {', '.join(FAMILY)}")
    config_path = path if path.is_file() else resolve_model_dir(model) / "config.json"
    if not config_path.is_file():
        raise error(f"{config_path}: config.json not found (--init random needs the architecture)")
    return T5Config.from_json_file(config_path)
