"""Experiment files: which methods, seeds and settings a comparison runs (TOML, validated).

```toml
[experiment]
name = "seed"
description = "the setup of record"
methods = ["full", "lora"]
seeds = [0, 1, 2]

[train]                  # any TrainConfig setting except output/method/seed, shared by every run
model = "google-t5/t5-small"
epochs = 3

[methods.lora]           # per method: lr, options, and any [train] setting to override
lr = 1e-3
options = { r = 8, lora_alpha = 16 }
```
An unknown key, section or method is an error that names the file and the key. In the path settings
(model, data, test_data, tokenizer) ``${T5PEFT_SHARED}`` stands for the shared data folder; relative paths
are taken from the current directory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import T5PeftError
from ..methods import get_method_class
from ..methods.base import MethodConfigError
from ..train.loop import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PER_RUN = ("output", "method", "method_options", "seed", "resume", "progress")
PATH_SETTINGS = ("model", "data", "test_data", "tokenizer")


def expand_shared(value: str) -> str:
    """``${T5PEFT_SHARED}`` in a path setting: the shared folder (environment variable, default ../shared)."""
    return value.replace("${T5PEFT_SHARED}", os.environ.get("T5PEFT_SHARED", "../shared"))


class ExperimentError(T5PeftError, ValueError):
    pass


@dataclass
class MethodPlan:
    name: str
    lr: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    description: str
    methods: list[MethodPlan]
    seeds: list[int]
    train: dict[str, Any]
    source: str = ""

    def run_config(self, plan: MethodPlan, seed: int, output: Path) -> TrainConfig:
        values = {**self.train, **plan.overrides}
        values.update(method=plan.name, method_options=dict(plan.options), seed=seed, output=str(output))
        if plan.lr is not None:
            values["lr"] = plan.lr
        return TrainConfig(**values)

    def plan(self) -> list[tuple[MethodPlan, int]]:
        return [(m, s) for m in self.methods for s in self.seeds]


def _check_keys(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ExperimentError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def parse_experiment(values: dict[str, Any], source: str) -> Experiment:
    _check_keys(values, {"experiment", "train", "methods"}, source)
    head = values.get("experiment", {})
    _check_keys(head, {"name", "description", "methods", "seeds"}, f"{source} [experiment]")
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - set(PER_RUN)
    train = values.get("train", {})
    _check_keys(train, train_keys, f"{source} [train]")
    train = {k: expand_shared(v) if k in PATH_SETTINGS and isinstance(v, str) else v for k, v in train.items()}
    names = head.get("methods")
    if not names or not isinstance(names, list):
        raise ExperimentError(f"{source} [experiment]: methods must be a non-empty list")
    seeds = head.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ExperimentError(f"{source} [experiment]: seeds must be a non-empty list of integers")
    sections = values.get("methods", {})
    extra = sorted(set(sections) - set(names))
    if extra:
        raise ExperimentError(f"{source}: [methods.{extra[0]}] is not in experiment.methods {names}")
    plans = []
    for name in names:
        where = f"{source} [methods.{name}]"
        try:
            method_class = get_method_class(name)
        except MethodConfigError as err:
            raise ExperimentError(f"{source} [experiment] methods: {err}") from None
        section = dict(sections.get(name, {}))
        lr = section.pop("lr", None)
        options = section.pop("options", {})
        _check_keys(section, train_keys, where)
        try:
            method_class.config_class.from_options(options, name)
        except (MethodConfigError, TypeError) as err:
            raise ExperimentError(f"{where} options: {err}") from None
        plans.append(MethodPlan(name, lr, options, section))
    experiment = Experiment(
        head.get("name", Path(source).stem), head.get("description", ""), plans, seeds, train, source
    )
    for plan in plans:  # every run's settings must be valid before anything starts
        try:
            experiment.run_config(plan, seeds[0], Path("/tmp/check"))
        except (ValueError, TypeError) as err:
            raise ExperimentError(f"{source} [methods.{plan.name}]: {err}") from None
    return experiment


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path}: not valid TOML ({err})") from None
    return parse_experiment(values, str(path))
