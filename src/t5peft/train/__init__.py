"""Fine-tuning: its settings (:mod:`.settings`), which reviews a run uses (:mod:`.rows`), the run (:mod:`.loop`),
evaluation (:mod:`.evaluate`) and finished runs (:mod:`.runs`).

The run and evaluation import torch, so they are imported when first asked for: reading the settings (the
command line's help) stays cheap.
"""

from __future__ import annotations

from typing import Any

from .settings import TrainConfig, TrainError

__all__ = ["EvalResult", "TrainConfig", "TrainError", "evaluate", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from .loop import train

        return train
    if name in ("EvalResult", "evaluate"):
        from . import evaluate as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
