"""The plan of a comparison and what may be reused: one :class:`Request` per run, checked against its folder.

Reuse is checked, never assumed. Before anything runs, every run folder already in ``output`` is compared
with the settings the plan now asks for (the whole run config, except ``progress`` and ``resume``, and
``output`` for a finished run; and for a finished run the number of processes it trained on,
``nproc_per_node``): a difference is an error naming the run and the settings, unless ``rerun_changed``,
which moves the old folder to ``<output>/superseded/`` (nothing is deleted) and runs it again. A finished
run (``results.json``) is then reused, a partial one (``run_config.json``) is resumed from its checkpoint
(on any number of processes); a folder holding only compare's own ``request.json`` and ``run.log`` (a run
that failed before training began) has nothing to reuse and is started again with the settings asked for now.

The plan is a list in a fixed order (:meth:`Experiment.runs`), so that any subset of it (the runs still to
do, one machine's share of a plan) is a deterministic selection of that list.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.layout import RunFolder, changed_settings
from ..engine.settings import comparable
from ..engine.state import last_logged_step, read_position
from ..train.loop import pretraining_record
from ..train.settings import TrainConfig
from .config import Experiment, ExperimentError, PlannedRun, format_lr
from .layout import RUNS, SUPERSEDED


@dataclass
class Request:
    """One run of the plan: what it is, where it goes and every setting it runs with."""

    run: PlannedRun
    folder: RunFolder
    config: TrainConfig
    nproc_per_node: int = 1  # processes the run is started on (torchrun when more than one)

    @property
    def name(self) -> str:
        return self.run.name

    def describe(self) -> str:
        lr = f", lr {format_lr(self.config.learning_rate)}" if self.run.method.is_sweep else ""
        return f"{self.run.method.name} seed {self.run.seed}{lr}"


# --------------------------------------------------------------------------------------------------
# The plan: one TrainConfig per run, with the command line's device and compile settings


def resolve_device_setting(device: str) -> str:
    """``auto`` becomes the device it means here, so each run records what it used."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_compile_setting(compile: str, device: str) -> str:
    from ..engine.settings import COMPILE_SETTINGS

    if compile not in COMPILE_SETTINGS:
        raise ExperimentError(f"--compile must be one of {', '.join(COMPILE_SETTINGS)}, got {compile!r}")
    if compile != "auto":
        return compile
    return "on" if device.startswith("cuda") else "off"


def build_requests(
    experiment: Experiment,
    output: Path,
    *,
    device: str | None = None,
    compile: str | None = None,
    progress: bool = True,
    tensorboard: Path | None = None,
) -> list[Request]:
    """Every run of the plan with its settings; ``device`` / ``compile`` (None: the experiment's) override;
    ``tensorboard``: a folder that gets one TensorBoard folder per run, named as its run folder."""
    requests = []
    for run in experiment.runs():
        folder = RunFolder(output.resolve() / RUNS / run.name)
        cfg = experiment.run_config(run.method, run.seed, folder.root, run.lr, run.task)
        cfg.device = resolve_device_setting(device or cfg.device)
        cfg.compile = resolve_compile_setting(compile or cfg.compile, cfg.device)
        cfg.progress = progress
        cfg.resume = False
        cfg.tensorboard = str(tensorboard.resolve() / run.name) if tensorboard is not None else None
        requests.append(Request(run, folder, cfg, experiment.nproc_per_node(run.method, run.task)))
    return requests


def finished(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.folder.results.exists()]


def to_do(requests: list[Request]) -> list[Request]:
    return [r for r in requests if not r.folder.results.exists()]


# --------------------------------------------------------------------------------------------------
# Existing run folders against the plan


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config with today's defaults filled in (a setting added since keeps its old behaviour)."""
    return comparable(TrainConfig, values)


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


_ABSENT = object()


def saved_settings(folder: RunFolder) -> dict[str, Any] | None:
    """The settings a run folder's results (or partial run) were made with; None for a folder with neither."""
    if folder.results.is_file():
        return json.loads(folder.results.read_text(encoding="utf-8"))["config"]
    if folder.run_config.is_file():
        return json.loads(folder.run_config.read_text(encoding="utf-8"))
    return None


def settings_differences(saved: dict[str, Any], wanted: TrainConfig, finished: bool) -> list[str]:
    """``key saved -> wanted`` for every setting that differs (``output`` only matters to a run to resume)."""
    mine, theirs = _comparable(wanted.to_dict()), _comparable(saved)
    keys = changed_settings(theirs, mine, also_ignored={"output"} if finished else ())
    return [f"{key} {_show(theirs.get(key, _ABSENT))} -> {_show(mine.get(key, _ABSENT))}" for key in keys]


def backbone_difference(request: Request) -> list[str]:
    """A finished run on a backbone pretrained here, whose folder now holds another pretraining (same path)."""
    model = Path(request.config.model)
    if not request.folder.results.is_file() or not model.is_dir():
        return []
    saved = json.loads(request.folder.results.read_text(encoding="utf-8")).get("pretraining")
    now = pretraining_record(request.config)
    if saved == now:
        return []
    return [f"the backbone in {model} was pretrained again since (its pretraining.json differs)"]


def launch_difference(request: Request) -> list[str]:
    """A finished run made on another number of processes than the plan now starts it on (``results.json``
    records its world size; a result from before it did was made on one). A partial run is resumed on any
    number: its checkpoint resumes with another world size."""
    if not request.folder.results.is_file():
        return []
    results = json.loads(request.folder.results.read_text(encoding="utf-8"))
    world = (results.get("distribution") or {}).get("world_size", 1)
    if world == request.nproc_per_node:
        return []
    return [f"nproc_per_node {world} -> {request.nproc_per_node} (the processes it trained on)"]


def check_existing(requests: list[Request]) -> list[tuple[Request, list[str]]]:
    """The runs whose folders hold results or a partial run made with other settings, with what differs."""
    changed = []
    for request in requests:
        try:
            saved = saved_settings(request.folder)
        except (json.JSONDecodeError, KeyError, OSError) as err:
            changed.append((request, [f"its settings cannot be read ({type(err).__name__}: {err})"]))
            continue
        if saved is None:
            continue
        differences = settings_differences(saved, request.config, request.folder.results.is_file())
        differences += backbone_difference(request) + launch_difference(request)
        if differences:
            changed.append((request, differences))
    return changed


def move_aside(folder: Path, output: Path) -> Path:
    """Move a run folder to ``<output>/superseded/<name>.<n>`` (the first free n); returns where it went."""
    target_root = output / SUPERSEDED
    target_root.mkdir(parents=True, exist_ok=True)
    n = 1
    while (target_root / f"{folder.name}.{n}").exists():
        n += 1
    target = target_root / f"{folder.name}.{n}"
    folder.rename(target)
    return target


def changed_message(changed: list[tuple[Request, list[str]]], config_file: Path, output: Path) -> str:
    lines = [
        f"{len(changed)} run(s) in {output} were made with other settings than {config_file} now asks for "
        "(saved -> now):"
    ]
    lines += [f"  {request.name}: {'; '.join(diffs)}" for request, diffs in changed]
    lines.append(
        "pass --rerun-changed to run them again (their folders are moved to "
        f"{output / SUPERSEDED}, nothing is deleted), or choose another --output"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# What an interrupted run leaves, and what the next compare does with it


@dataclass(frozen=True)
class Leftover:
    """What an interrupted run left in its folder: ``finished``, ``checkpoint`` (resumed next time),
    ``partial`` (no checkpoint yet: started again), ``removed`` (nothing to keep), ``restart``."""

    kind: str
    epochs_done: int | None = None
    last_step: int | None = None


def settle_interrupted(request: Request, created_folder: bool) -> Leftover:
    """Classify what an interrupted run left; removes the folder of a run that never began training (and
    that this call created, or that holds only compare's own files)."""
    folder = request.folder
    checkpoint = read_position(folder.checkpoint)
    epochs = None if checkpoint is None else checkpoint.epochs_done
    step = last_logged_step(folder.metrics)
    if folder.results.exists():
        return Leftover("finished", last_step=step)
    if epochs is not None:
        return Leftover("checkpoint", epochs, step)
    if folder.run_config.exists():
        return Leftover("partial", last_step=step)
    names = {p.name for p in folder.root.iterdir()} if folder.root.exists() else set()
    if names <= folder.before_training and (created_folder or names <= folder.compare_files):
        shutil.rmtree(folder.root, ignore_errors=True)
        return Leftover("removed")
    return Leftover("restart")
