"""Training loop, evaluation, checkpoints and run folders."""

from .evaluate import EvalResult, evaluate
from .loop import TrainConfig, TrainError, train

__all__ = ["EvalResult", "TrainConfig", "TrainError", "evaluate", "train"]
