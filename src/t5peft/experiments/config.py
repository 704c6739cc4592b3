"""Experiment files: which methods, learning rates, seeds and settings a comparison runs (TOML, validated).

```toml
[experiment]
name = "seed"
description = "the setup of record"
methods = ["full", "lora"]
seeds = [0, 1, 2]
tensorboard = true       # optional: TensorBoard events of every run in <output>/tensorboard/<run> (or a folder)

[train]                  # any TrainConfig setting except output/method/seed, shared by every run
model = "google-t5/t5-small"
epochs = 3
nproc_per_node = 1       # optional: each run on this many processes (torchrun --standalone); see LAUNCH_KEYS

[methods.lora]           # per method: lr, options, and any [train] setting to override
lr = 1e-3                # or a sweep: lr = [3e-4, 1e-3, 3e-3], each value run for every seed
options = { r = 8, lora_alpha = 16 }
```
An unknown key, section or method is an error that names the file and the key.

Tasks. A ``[task]`` table declares the one task of the comparison (keys: ``name``, the built-in task, and
``text_column``, ``label_column``, ``label_words``, ``template``, ``prefix``: the same as the train options).
Several tasks: ``tasks = ["imdb", "sst2", "rte"]`` in ``[experiment]``, and/or a ``[tasks.<name>]`` table per
task with the task keys and any ``[train]`` setting (``data``, ``test_data``, sizes); ``name`` defaults to
``<name>`` (a built-in task). Every (task, method, lr, seed) is a run, in ``runs/<task>-<method>-seed<seed>``;
learning rates are chosen on each task's validation split.

Paths. In the path settings (model, data, test_data, tokenizer), a relative path is taken from the folder of
the experiment file, never from the current directory, so a copied file keeps working from anywhere. A value
that is not an existing path but has the form of a Hugging Face Hub id (``google-t5/t5-small``,
``stanfordnlp/imdb``) is left as a Hub id. ``${T5PEFT_SHARED}`` stands for the shared data folder: the
environment variable when it is set (a relative value is taken from the current directory, where it was
typed), otherwise ``../shared`` from the experiment file's folder, or from the nearest folder above it that
has a ``shared`` folder beside it (``configs/x.toml`` in a checkout finds the ``shared`` beside the
checkout). A path that does not exist is an error naming the file, the key and where it looked.

Launch. ``nproc_per_node = N`` (in ``[train]``, or a method's or task's table like any ``[train]`` setting; an
integer >= 1, default 1) starts each run under ``torchrun --standalone --nproc-per-node N`` (:mod:`.worker`): one
run on N processes (DDP or FSDP, ``strategy``), ``batch_size`` the global batch, so it must divide by N. It is no
TrainConfig setting (``t5peft train`` is started by torchrun itself); the plan checks a finished run's recorded
world size against it (:mod:`.plan`).

A learning-rate sweep runs every (method, lr, seed) in its own run folder; the report picks, per method, the
learning rate with the best mean validation accuracy over seeds (never the test split) and keeps every
value's results.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.tasks import TaskError, builtin_task
from ..errors import T5PeftError
from ..hub import looks_like_hub_id
from ..methods import get_declaration
from ..methods.base import MethodConfigError
from ..train.settings import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LAUNCH_KEYS = ("nproc_per_node",)  # [train] keys that say how a run is started, not what it computes
PER_RUN = ("output", "method", "method_options", "seed", "resume", "progress", "tensorboard", "push_to_hub")
# the keys of a [task] / [tasks.<name>] table, and the TrainConfig setting each sets
TASK_KEYS = {
    "name": "task",
    "text_column": "text_column",
    "label_column": "label_column",
    "label_words": "label_words",
    "template": "template",
    "prefix": "prefix",
}
PATH_SETTINGS = ("model", "data", "test_data", "tokenizer")
SHARED = "${T5PEFT_SHARED}"
# a name ending like a file is a missing file, never a Hub id
FILE_SUFFIXES = (
    ".json",
    ".jsonl",
    ".csv",
    ".tsv",
    ".parquet",
    ".tar",
    ".gz",
    ".tgz",
    ".txt",
    ".bin",
    ".safetensors",
    ".model",
)


class ExperimentError(T5PeftError, ValueError):
    pass


def find_shared(folder: Path) -> Path | None:
    """The shared folder an experiment file in ``folder`` means by ``${T5PEFT_SHARED}`` (see the module doc)."""
    configured = os.environ.get("T5PEFT_SHARED")
    if configured:
        return Path(configured).expanduser().resolve()
    for above in (folder, *folder.parents):
        candidate = above.parent / "shared"
        if candidate.is_dir():
            return candidate.resolve()
    return None


def expand_shared(value: str, folder: Path | None = None) -> str:
    """``${T5PEFT_SHARED}`` in a path setting replaced by the shared folder (``folder``: the experiment file's)."""
    if SHARED not in value:
        return value
    shared = find_shared((folder or Path.cwd()).resolve())
    if shared is None:
        raise ExperimentError(
            f"{SHARED} is not set and no shared folder was found at ../shared from {folder} or a folder above it; "
            "set T5PEFT_SHARED to the shared folder"
        )
    return value.replace(SHARED, str(shared))


def resolve_path_setting(value: str, folder: Path, where: str) -> str:
    """A path setting of an experiment file in ``folder``: an absolute path, or a Hub id left as it is."""
    text = expand_shared(value, folder) if SHARED in value else value
    path = Path(text).expanduser()
    candidate = path if path.is_absolute() else folder / path
    if candidate.exists():
        return str(candidate.resolve())
    if SHARED not in value and _hub_id_not_path(text, folder):
        return text
    shown = f"{value} (= {candidate})" if str(candidate) != value else value
    raise ExperimentError(
        f"{where}: {shown} does not exist (relative paths in an experiment file are taken from its folder, {folder})"
    )


def _hub_id_not_path(text: str, folder: Path) -> bool:
    """``owner/name`` or a bare name, unless its first part is a folder beside the experiment file (a path then)."""
    first = Path(text).parts[0] if Path(text).parts else ""
    return (
        looks_like_hub_id(text, file_suffixes=FILE_SUFFIXES)
        and not text.startswith(".")
        and not (folder / first).is_dir()
    )


def format_lr(lr: float) -> str:
    return f"{lr:g}"


DEFAULTS = ("fp32", "none")  # base_dtype and quantize of a float32 base
# A row ``<method>@<variant>`` (``lora@nf4``) is the method on a stored base: the variant sets these settings
STORAGE_VARIANTS = {
    "bf16": {"base_dtype": "bf16"},
    "nf4": {"quantize": "nf4"},
    "int8": {"quantize": "int8"},
    "nf4-bf16": {"quantize": "nf4", "base_dtype": "bf16"},
    "int8-bf16": {"quantize": "int8", "base_dtype": "bf16"},
}


def row_name(method: str, base_dtype: str = "fp32", quantize: str = "none") -> str:
    """The row a run belongs to: the method, with ``@`` and its base storage when that is not float32."""
    for variant, settings in STORAGE_VARIANTS.items():
        if settings == {k: v for k, v in (("quantize", quantize), ("base_dtype", base_dtype)) if v not in DEFAULTS}:
            return f"{method}@{variant}"
    return method


@dataclass
class MethodPlan:
    name: str  # the row: the method's name, or ``<method>@<variant>`` on a stored base (STORAGE_VARIANTS)
    lr: float | list[float] | None = None  # a list: a sweep, each value its own runs
    options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str = ""  # the registered method (default: name)

    def __post_init__(self) -> None:
        self.method = self.method or self.name

    @property
    def is_sweep(self) -> bool:
        return isinstance(self.lr, list)

    @property
    def learning_rates(self) -> list[float | None]:
        return list(self.lr) if isinstance(self.lr, list) else [self.lr]


@dataclass
class TaskPlan:
    """One task of a comparison over several: its name (folder names, tables) and the settings it sets."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig settings: task, data, text_column, ...


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: a method, a learning rate (None: the method's or [train]'s), a seed, and the task of
    a comparison over several tasks (None: the one task [train] / [task] declares)."""

    method: MethodPlan
    lr: float | None
    seed: int
    task: TaskPlan | None = None

    @property
    def name(self) -> str:
        """The run's folder name: ``lora-seed0``, ``lora-lr0.001-seed0`` in a sweep, ``sst2-lora-seed0`` in a
        comparison over several tasks."""
        stem = self.method.name.replace("+", "_").replace("@", "_")
        lr = f"-lr{format_lr(self.lr)}" if self.method.is_sweep and self.lr is not None else ""
        task = f"{self.task.name}-" if self.task is not None else ""
        return f"{task}{stem}{lr}-seed{self.seed}"


@dataclass
class Experiment:
    name: str
    description: str
    methods: list[MethodPlan]
    seeds: list[int]
    train: dict[str, Any]
    source: str = ""
    shared: str | None = None  # the folder ${T5PEFT_SHARED} stood for, when the file used it
    tensorboard: bool | str = False  # true: events in <output>/tensorboard/<run>; a folder (absolute): there
    tasks: list[TaskPlan] = field(default_factory=list)  # empty: the one task of [train] / [task]

    def tensorboard_root(self, output: Path) -> Path | None:
        """Where the runs' TensorBoard folders go (one per run), or None for none."""
        if self.tensorboard is False:
            return None
        return output / "tensorboard" if self.tensorboard is True else Path(self.tensorboard)

    def run_config(
        self, plan: MethodPlan, seed: int, output: Path, lr: float | None = None, task: TaskPlan | None = None
    ) -> TrainConfig:
        """The settings of one run; ``lr`` picks one value of a sweep (default: the plan's only value)."""
        values = {k: v for k, v in self.settings(plan, task).items() if k not in LAUNCH_KEYS}
        values.update(method=plan.method, method_options=dict(plan.options), seed=seed, output=str(output))
        chosen = lr if lr is not None else plan.learning_rates[0]
        if chosen is not None:
            values["lr"] = chosen
        return TrainConfig(**values)

    def settings(self, plan: MethodPlan, task: TaskPlan | None = None) -> dict[str, Any]:
        """The [train] settings of a method's runs on a task: [train], the task's table, the method's table."""
        return {**self.train, **(task.settings if task is not None else {}), **plan.overrides}

    def nproc_per_node(self, plan: MethodPlan, task: TaskPlan | None = None) -> int:
        """How many processes each run of ``plan`` (on ``task``) is started on (1: one, without torchrun)."""
        return int(self.settings(plan, task).get("nproc_per_node", 1))

    def runs(self) -> list[PlannedRun]:
        tasks: list[TaskPlan | None] = list(self.tasks) or [None]
        return [
            PlannedRun(m, lr, s, t) for t in tasks for m in self.methods for lr in m.learning_rates for s in self.seeds
        ]

    def describe(self) -> dict[str, Any]:
        """What the plan asks, as experiment.json and the results file record it."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "shared": self.shared,
            "seeds": self.seeds,
            "methods": [
                {"name": m.name, "method": m.method, "lr": m.lr, "options": m.options, "overrides": m.overrides}
                for m in self.methods
            ],
            "train": self.train,
            "tasks": [{"name": t.name, "settings": t.settings} for t in self.tasks],
        }


def _check_keys(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ExperimentError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _check_lr(lr: Any, where: str) -> float | list[float] | None:
    if lr is None:
        return None
    values = lr if isinstance(lr, list) else [lr]
    if not values:
        raise ExperimentError(f"{where} lr: an empty list; give one value or several to sweep")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ExperimentError(f"{where} lr: {value!r} is not a positive number")
    if len({format_lr(v) for v in values}) != len(values):  # each value names its own run folder
        raise ExperimentError(f"{where} lr: {lr} lists a value twice (run folders name it with 6 digits)")
    return [float(v) for v in values] if isinstance(lr, list) else float(lr)


def _check_tensorboard(value: Any, folder: Path | None, where: str) -> bool | str:
    """``tensorboard = true | false | "folder"`` (a relative folder is taken from the experiment file's)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value:
        raise ExperimentError(f"{where}: expected true, false or a folder, got {value!r}")
    path = Path(expand_shared(value, folder)).expanduser()
    return str(path if path.is_absolute() or folder is None else (folder / path).resolve())


def _resolve_paths(values: dict[str, Any], folder: Path | None, where: str) -> dict[str, Any]:
    """Path settings taken from the experiment file's folder (``folder`` None: a dict not read from a file)."""
    resolved = dict(values)
    for key in PATH_SETTINGS:
        value = values.get(key)
        if not isinstance(value, str):
            continue
        if folder is None:
            resolved[key] = expand_shared(value)
            continue
        try:
            resolved[key] = resolve_path_setting(value, folder, f"{where} {key}")
        except ExperimentError as err:
            raise ExperimentError(str(err) if str(err).startswith(where) else f"{where} {key}: {err}") from None
    return resolved


def parse_experiment(values: dict[str, Any], source: str, folder: Path | None = None) -> Experiment:
    """An experiment from parsed TOML; ``folder`` is where relative paths are taken from (the file's folder)."""
    _check_keys(values, {"experiment", "train", "methods", "task", "tasks"}, source)
    head = values.get("experiment", {})
    _check_keys(head, {"name", "description", "methods", "seeds", "tensorboard", "tasks"}, f"{source} [experiment]")
    tensorboard = _check_tensorboard(head.get("tensorboard", False), folder, f"{source} [experiment] tensorboard")
    train_keys = ({f.name for f in dataclasses.fields(TrainConfig)} - set(PER_RUN)) | set(LAUNCH_KEYS)
    train = values.get("train", {})
    _check_keys(train, train_keys, f"{source} [train]")
    train = _resolve_paths(train, folder, f"{source} [train]")
    _check_nproc(train.get("nproc_per_node", 1), f"{source} [train]")
    if "task" in values:
        if "tasks" in values or "tasks" in head:
            raise ExperimentError(f"{source}: give one [task] table or several tasks (tasks = [...]), not both")
        train = {**train, **_task_settings(values["task"], set(), f"{source} [task]", folder)}
    tasks = _parse_tasks(head.get("tasks"), values.get("tasks", {}), train_keys, source, folder)
    names = head.get("methods")
    if not names or not isinstance(names, list):
        raise ExperimentError(f"{source} [experiment]: methods must be a non-empty list")
    seeds = head.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ExperimentError(f"{source} [experiment]: seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"{source} [experiment]: seeds {seeds} lists a seed twice")
    declarations = {}
    for name in names:  # a typo in the list is the list's fault, not the correctly spelled table's
        method, _, variant = str(name).partition("@")
        if variant and variant not in STORAGE_VARIANTS:
            raise ExperimentError(
                f"{source} [experiment] methods: {name!r}: unknown base storage {variant!r} "
                f"(after @: {', '.join(STORAGE_VARIANTS)})"
            )
        try:
            declarations[name] = get_declaration(method)
        except MethodConfigError as err:
            raise ExperimentError(f"{source} [experiment] methods: {err}") from None
    sections = values.get("methods", {})
    extra = sorted(set(sections) - set(names))
    if extra:
        raise ExperimentError(f"{source}: [methods.{extra[0]}] is not in experiment.methods {names}")
    plans = []
    for name in names:
        where = f"{source} [methods.{name}]"
        method, _, variant = str(name).partition("@")
        declaration = declarations[name]
        section = dict(sections.get(name, {}))
        lr = _check_lr(section.pop("lr", None), where)
        options = section.pop("options", {})
        _check_keys(section, train_keys, where)
        for key, value in STORAGE_VARIANTS.get(variant, {}).items():
            if section.get(key, value) != value:
                raise ExperimentError(f"{where}: {key} = {section[key]!r} contradicts the row name {name!r}")
            section[key] = value
        try:
            declaration.config_class.from_options(options, method)
        except (MethodConfigError, TypeError) as err:
            raise ExperimentError(f"{where} options: {err}") from None
        settings = {**train, **section}
        # [methods.lora] quantize = "nf4" makes the row lora@nf4, as if it had been named so
        row = row_name(method, settings.get("base_dtype", "fp32"), settings.get("quantize", "none"))
        if row in [p.name for p in plans]:
            raise ExperimentError(f"{where}: a second {row!r} row (its base storage makes it {row!r})")
        plans.append(MethodPlan(row, lr, options, _resolve_paths(section, folder, where), method))
    shared = find_shared(folder) if folder is not None and SHARED in str(values) else None
    experiment = Experiment(
        head.get("name", Path(source).stem),
        head.get("description", ""),
        plans,
        seeds,
        train,
        source,
        str(shared) if shared else None,
        tensorboard,
        tasks=tasks,
    )
    for task in tasks or [None]:  # every run's settings must be valid before anything starts
        for plan in plans:
            for lr in plan.learning_rates:
                where = f"[tasks.{task.name}] " if task is not None else ""
                try:
                    cfg = experiment.run_config(plan, seeds[0], Path("check"), lr, task)
                except (ValueError, TypeError) as err:
                    raise ExperimentError(f"{source} {where}[methods.{plan.name}]: {err}") from None
                _check_launch(experiment.settings(plan, task), cfg, f"{source} {where}[methods.{plan.name}]")
    return experiment


def _check_nproc(nproc: Any, where: str) -> None:
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ExperimentError(f"{where}: nproc_per_node must be an integer >= 1, got {nproc!r}")


def _check_launch(settings: dict[str, Any], cfg: TrainConfig, where: str) -> None:
    """``nproc_per_node``: an integer >= 1 that divides the global batch (each rank takes an equal part)."""
    nproc = settings.get("nproc_per_node", 1)
    _check_nproc(nproc, where)
    if cfg.batch_size % nproc:
        raise ExperimentError(
            f"{where}: batch_size {cfg.batch_size} (the global batch) does not divide evenly over nproc_per_node = "
            f"{nproc} processes; use a multiple of {nproc}"
        )


def _task_settings(table: Any, train_keys: set[str], where: str, folder: Path | None) -> dict[str, Any]:
    """The TrainConfig settings of a [task] / [tasks.<name>] table (task keys, and ``train_keys`` as they are)."""
    if not isinstance(table, dict):
        raise ExperimentError(f"{where}: must be a table of task keys ({', '.join(TASK_KEYS)})")
    _check_keys(table, set(TASK_KEYS) | train_keys, where)
    settings = {TASK_KEYS.get(key, key): value for key, value in table.items()}
    if "task" in settings:
        try:
            builtin_task(str(settings["task"]), f"{where} name")
        except TaskError as err:
            raise ExperimentError(str(err)) from None
    if isinstance(settings.get("label_words"), str):
        settings["label_words"] = [word.strip() for word in settings["label_words"].split(",")]
    return _resolve_paths(settings, folder, where)


def _parse_tasks(names: Any, tables: Any, train_keys: set[str], source: str, folder: Path | None) -> list[TaskPlan]:
    """The tasks of a comparison over several: ``tasks = [...]`` and ``[tasks.<name>]`` tables, in that order."""
    if names is None and not tables:
        return []
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)):
        raise ExperimentError(f"{source} [experiment] tasks: must be a list of task names")
    if not isinstance(tables, dict):
        raise ExperimentError(f"{source}: tasks must be [tasks.<name>] tables")
    order = list(dict.fromkeys([*(names or []), *tables]))
    if len(order) != len(names or []) + len([t for t in tables if t not in (names or [])]):
        raise ExperimentError(f"{source} [experiment] tasks: {names} lists a task twice")
    plans = []
    for name in order:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ExperimentError(f"{source} tasks: {name!r} must be letters, digits, - and _ (it names folders)")
        table = dict(tables.get(name, {}))
        table.setdefault("name", name)
        settings = _task_settings(table, train_keys, f"{source} [tasks.{name}]", folder)
        plans.append(TaskPlan(name, settings))
    return plans


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except IsADirectoryError:
        raise ExperimentError(f"{path}: a folder, not an experiment file") from None
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path}: not valid TOML ({err})") from None
    return parse_experiment(values, str(path), path.resolve().parent)
