"""The files of a run folder and of its checkpoint, named in one place (README, "Run folder"), and which saved
settings matter when a folder is reused."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lock import LOCK_FILE

# Settings that do not change what a run computes: a run resumed, reused or compared with other values of these
# is the same run. (``data_workers``: pretraining batches are a function of seed and step, whoever builds them.)
# ``tensorboard`` and ``push_to_hub``: where a copy of the metrics or of the result goes.
NOT_RESULTS = frozenset({"progress", "resume", "data_workers", "tensorboard", "push_to_hub"})


def resolved_paths(settings: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """For ``paths.json``: the working directory, and each named setting as typed with the absolute path it named
    then (None for a Hub id or a path that did not exist), so a folder reopened from elsewhere finds its inputs."""
    record: dict[str, Any] = {"working_directory": str(Path.cwd())}
    for name in names:
        typed = settings.get(name)
        path = Path(typed).expanduser() if typed else None
        resolved = str(path.resolve()) if path is not None and path.exists() else None
        record[name] = {"as_typed": typed, "resolved": resolved}
    return record


def located(paths: Mapping[str, Any], name: str, typed: str | None) -> str | None:
    """Where a setting's path is now: the absolute path recorded when the run started if it still exists (whatever
    the working directory is today), else the value as typed (a Hub id; a run folder from before ``paths.json``)."""
    resolved = (paths.get(name) or {}).get("resolved")
    return resolved if resolved and Path(resolved).exists() else typed


def changed_settings(
    saved: Mapping[str, Any], wanted: Mapping[str, Any], also_ignored: Iterable[str] = ()
) -> list[str]:
    """The settings (sorted) whose values differ between two settings dicts, compared as JSON values; a setting
    only one side has differs. ``NOT_RESULTS`` and ``also_ignored`` are left out."""
    saved, wanted = json.loads(json.dumps(dict(saved))), json.loads(json.dumps(dict(wanted)))
    ignored = NOT_RESULTS | set(also_ignored)
    absent = object()
    keys = (set(saved) | set(wanted)) - ignored
    return sorted(key for key in keys if saved.get(key, absent) != wanted.get(key, absent))


@dataclass(frozen=True)
class RunFolder:
    """``t5peft train --output``: one fine-tuning run."""

    root: Path

    @property
    def paths(self) -> Path:
        """The run's paths (model, tokenizer, data) resolved when it started, beside them as typed."""
        return self.root / "paths.json"

    @property
    def run_config(self) -> Path:
        """Every setting of the run."""
        return self.root / "run_config.json"

    @property
    def metrics(self) -> Path:
        """One JSON line per log point."""
        return self.root / "metrics.jsonl"

    @property
    def results(self) -> Path:
        """Test and validation metrics, parameters, time, memory, environment."""
        return self.root / "results.json"

    @property
    def checkpoint(self) -> Path:
        """End-of-epoch state for ``--resume`` (files: :class:`CheckpointFiles`)."""
        return self.root / "checkpoint"

    @property
    def final(self) -> Path:
        """What the method trained: an adapter, or the whole model."""
        return self.root / "final"

    @property
    def base(self) -> Path:
        """With random-init weights and an adapter method: the base weights the adapter belongs to."""
        return self.root / "base"

    @property
    def log(self) -> Path:
        """The run's console output when ``compare`` runs it."""
        return self.root / "run.log"

    @property
    def request(self) -> Path:
        """The settings ``compare`` asked the run to use."""
        return self.root / "request.json"

    @property
    def device_share(self) -> Path:
        """``compare``'s record of how many runs shared the device with this one, and its CPU threads."""
        return self.root / "device_share.json"

    @property
    def compare_files(self) -> frozenset[str]:
        """The names ``compare`` writes into a run folder before the run starts (the lock file: see ``lock``)."""
        return frozenset({self.request.name, self.log.name, LOCK_FILE})

    @property
    def before_training(self) -> frozenset[str]:
        """The names a folder can hold when its run stopped before it wrote its settings: compare's files, an
        empty metrics log, a random base."""
        return self.compare_files | {self.metrics.name, self.base.name}


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint folder (``checkpoint/`` of a run folder): tensors in safetensors files, the rest in JSON."""

    root: Path

    @property
    def trainable(self) -> Path:
        """The trained weights (the whole model for full fine-tuning and pretraining)."""
        return self.root / "trainable.safetensors"

    @property
    def optimizer(self) -> Path:
        """AdamW's moments and step counts."""
        return self.root / "optimizer.safetensors"

    @property
    def optimizer_groups(self) -> Path:
        """AdamW's param groups (JSON)."""
        return self.root / "optimizer.json"

    @property
    def rng(self) -> Path:
        """torch / CUDA generator states and numpy's key."""
        return self.root / "rng.safetensors"

    @property
    def method(self) -> Path:
        """Method state kept outside parameters (AdaLoRA's importance averages)."""
        return self.root / "method.safetensors"

    @property
    def state(self) -> Path:
        """JSON: the position (steps, epochs, metric lines, time), the scheduler, numpy's and Python's RNG."""
        return self.root / "state.json"


# A checkpoint written by ``t5peft pretrain`` carries this record beside its weights; fine-tuning from it labels
# every result with PRETRAINED_HERE (never "pretrained", which means weights from elsewhere, such as t5-small).
PRETRAINING_RECORD = "pretraining.json"
PRETRAINED_HERE = "pretrained-here"


@dataclass(frozen=True)
class PretrainFolder:
    """``t5peft pretrain --output``: the final checkpoint (Hugging Face layout) and the run's own files."""

    root: Path

    @property
    def record(self) -> Path:
        """What the checkpoint is: architecture, data, steps, time, losses, machine (written with the weights)."""
        return self.root / PRETRAINING_RECORD

    @property
    def run_config(self) -> Path:
        """Every setting of the pretraining run."""
        return self.root / "pretrain_config.json"

    @property
    def metrics(self) -> Path:
        """One JSON line per validation point: step, training and validation loss, lr, tokens/s."""
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        """The latest training state for ``--resume`` (files: :class:`CheckpointFiles`)."""
        return self.root / "checkpoint"

    def export(self, step: int) -> Path:
        """A snapshot checkpoint written at ``step`` (``--export-steps``), in the same layout as the final one."""
        return self.root / "exports" / f"step-{step:07d}"
