"""The files of a run folder, named in one place (README, "Run folder")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    root: Path

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
        """End-of-epoch state for ``--resume``."""
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
        """The latest training state for ``--resume`` (weights, AdamW, scheduler, RNG, data position)."""
        return self.root / "checkpoint"

    def export(self, step: int) -> Path:
        """A snapshot checkpoint written at ``step`` (``--export-steps``), in the same layout as the final one."""
        return self.root / "exports" / f"step-{step:07d}"
