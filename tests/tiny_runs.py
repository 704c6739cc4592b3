"""Tiny fine-tuning runs for the training tests: the t5-tiny architecture (``configs/models/t5-tiny``) with random
weights, the t5-small tokenizer, real reviews, no progress bar. One set of settings, as a ``TrainConfig`` or as
the words of ``t5peft train``; each test states the sizes and settings it depends on as overrides."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from t5peft.train.settings import TrainConfig

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = str(REPO / "configs" / "models" / "t5-tiny")


def tiny_run_settings(
    data: Path | str, tokenizer: Path | str | None, output: Path | str | None, **overrides: Any
) -> dict[str, Any]:
    """The settings; a ``None`` tokenizer or output is left out (the model's tokenizer; no ``--output`` flag)."""
    settings = {
        "model": TINY_MODEL,
        "tokenizer": None if tokenizer is None else str(tokenizer),
        "init": "random",
        "data": str(data),
        "output": None if output is None else str(output),
        "progress": False,
    }
    return {**settings, **overrides}


def tiny_run_config(
    data: Path | str, tokenizer: Path | str | None, output: Path | str, **overrides: Any
) -> TrainConfig:
    return TrainConfig(**tiny_run_settings(data, tokenizer, output, **overrides))


def tiny_train_args(
    data: Path | str, tokenizer: Path | str | None, output: Path | str | None, **overrides: Any
) -> list[str]:
    """``t5peft train`` arguments (after ``t5peft``) for the same settings: each setting as its flag."""
    words = ["train"]
    for key, value in tiny_run_settings(data, tokenizer, output, **overrides).items():
        flag = "--" + key.replace("_", "-")
        if key == "progress":
            words += [] if value else ["--no-progress"]
        elif key == "method_options":
            words += [word for name, option in value.items() for word in ("-o", f"{name}={option}")]
        elif isinstance(value, bool):
            words += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        elif value is not None:
            words += [flag, str(value)]
    return words


def write_reviews(path: Path, rows: Iterable[tuple[str, int]]) -> Path:
    """A ``text,label`` CSV of ``(text, label)`` rows: a single-file data source."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path
