"""What a run leaves to continue from: its checkpoint (everything needed to continue a killed run bit for bit)
and its metrics log.

A checkpoint folder (file names: :class:`~t5peft.engine.layout.CheckpointFiles`) holds tensors in safetensors
files and the rest in JSON (no pickle anywhere):

* ``trainable.safetensors``: the trained weights (the whole model for full fine-tuning);
* ``optimizer.safetensors`` + ``optimizer.json``: AdamW's moments and step counts, and its param groups;
* ``rng.safetensors`` + ``state.json``: torch / CUDA / numpy generator states, Python's ``random`` state,
  the scheduler state, the data position (epochs done, global step) and the number of metric lines
  written up to this point;
* ``method.safetensors``: method state kept outside parameters (AdaLoRA's importance averages).

It is written to a temporary folder and renamed into place, so a kill while saving leaves the previous
checkpoint intact. ``metrics.jsonl`` gets one line per log point; a resumed run cuts it back to the lines its
checkpoint had counted, so the log of a resumed run is the log of a run that went through.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import T5PeftError
from .layout import CheckpointFiles


class ResumeError(T5PeftError, ValueError):
    """A checkpoint that cannot be resumed from: missing files, unreadable files, or another method's tensors."""


@dataclass
class Position:
    epochs_done: int = 0
    global_step: int = 0
    metric_lines: int = 0
    train_seconds: float = 0.0
    train_examples: int = 0
    train_tokens: int = 0
    running_loss_sum: float = 0.0  # training loss summed since the last log point (so metrics survive a resume)
    running_loss_steps: int = 0


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    method_state: dict[str, torch.Tensor],
    position: Position,
) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = CheckpointFiles(tmp)
    _save_tensors(trainable_state(model), files.trainable)
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    _save_tensors(opt_tensors, files.optimizer)
    files.optimizer_groups.write_text(json.dumps(opt_meta))
    rng_tensors, rng_meta = _rng_states()
    _save_tensors(rng_tensors, files.rng)
    _save_tensors(method_state, files.method)
    meta = {"position": asdict(position), "rng": rng_meta, "scheduler": scheduler.state_dict()}
    files.state.write_text(json.dumps(meta, indent=1))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[Position, dict[str, torch.Tensor]]:
    """Restore weights, optimizer, scheduler and RNG; returns the data position and the method state."""
    try:
        return _load_checkpoint(directory, model, optimizer, scheduler)
    except ResumeError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise ResumeError(
            f"{directory}: cannot resume from this checkpoint ({type(err).__name__}: {err}); "
            "delete the folder to start the run over with --resume"
        ) from err


def _load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[Position, dict[str, torch.Tensor]]:
    files = CheckpointFiles(directory)
    weights = load_file(files.trainable)
    expected = trainable_state(model)
    if set(weights) != set(expected):
        raise ResumeError(
            f"{directory}: the checkpoint's trainable tensors do not match this run's method "
            f"(missing {sorted(set(expected) - set(weights))[:3]}, extra {sorted(set(weights) - set(expected))[:3]})"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            expected[name].copy_(tensor)
    opt_tensors = load_file(files.optimizer)
    opt_meta = json.loads(files.optimizer_groups.read_text())
    optimizer.load_state_dict(_optimizer_from_files(opt_tensors, opt_meta))
    meta = json.loads(files.state.read_text())
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(load_file(files.rng), meta["rng"])
    method_state = load_file(files.method)
    return Position(**meta["position"]), method_state


def read_position(directory: Path) -> Position | None:
    """Where the checkpoint in ``directory`` stands (steps, epochs, time); None when there is none to read."""
    try:
        return Position(**json.loads(CheckpointFiles(directory).state.read_text(encoding="utf-8"))["position"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, one line per log point; ``records`` are the lines so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []

    def restart(self, lines: int) -> None:
        """Keep the first ``lines`` lines (those a checkpoint counted; 0 for a run that starts over)."""
        if not self.path.exists():
            self.records = []
            return
        kept = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
        self.path.write_text("".join(kept), encoding="utf-8")
        self.records = [json.loads(line) for line in kept]

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.records.append(record)

    def finish(self, hparams: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Nothing: the run's settings and results have files of their own."""

    def close(self) -> None:
        """Nothing to close: every line is written and closed when it is logged."""


def last_logged_step(path: Path) -> int | None:
    """The step of the last line of a metrics log; None without one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError):
        return None
