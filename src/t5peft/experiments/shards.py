"""A comparison spread over machines: ``compare --shard i/N`` runs the i-th share of the plan, ``report DIR...``
(or ``compare --merge DIR...``) merges the shares' run folders into one results JSON, table and figures.

The plan is a list in a fixed order (:meth:`Experiment.runs`: methods in file order, then learning rates, then
seeds). Share ``i`` of ``N`` takes the runs at positions ``i-1, i-1+N, i-1+2N, ...``: every run is in exactly one
share, the shares differ in size by at most one, and each gets a mix of methods (a method's seeds are spread over
the shares rather than all landing on one machine). Any scheduler can start the shares: a SLURM array
(``--shard $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT``), a Kubernetes indexed job, a shell loop.

Each share's ``experiment.json`` records the plan, its share and the names of all the plan's runs. Merging checks
that every folder holds the same plan (name, description, seeds, methods, train settings; paths that came from
``${T5PEFT_SHARED}`` compared as written, so machines may keep the data in different places) and the same share
count, that no share is given twice and no run is finished in two folders; shares not given, or runs not
finished, are listed as not finished.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..engine.layout import RunFolder
from .config import ExperimentError
from .layout import EXPERIMENT_FILE, RUNS
from .report import write_report

T = TypeVar("T")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
PLAN_KEYS = ("name", "description", "seeds", "methods", "train")


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` with ``1 <= i <= N`` (1-based, as a person counts the shares)."""
    match = _SHARD.match(text)
    if match is None:
        raise ExperimentError(f"--shard {text!r}: expected i/N, e.g. 1/4 for the first of four shares")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ExperimentError(f"--shard {text}: the share must be between 1 and the number of shares ({count})")
    return index, count


def select_share(items: Sequence[T], index: int, count: int) -> list[T]:
    """Share ``index`` of ``count`` of the plan's runs, in plan order."""
    return list(items[index - 1 :: count])


def plan_identity(description: dict[str, Any]) -> dict[str, Any]:
    """What two shares must agree on to be one plan: the plan without where it was run from."""
    shared = description.get("shared")
    text = json.dumps({key: description.get(key) for key in PLAN_KEYS}, sort_keys=True)
    if shared:
        text = text.replace(json.dumps(shared)[1:-1], "${T5PEFT_SHARED}")
    return json.loads(text)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {json.dumps(a)} vs {json.dumps(b)}"


def _read_description(folder: Path) -> dict[str, Any]:
    path = folder / EXPERIMENT_FILE
    if not folder.is_dir():
        raise ExperimentError(f"{folder}: no such comparison folder")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{folder}: no {EXPERIMENT_FILE} (not a t5peft compare output folder)") from None
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{path}: not valid JSON ({err})") from None
    if "plan_runs" not in description:
        raise ExperimentError(f"{path}: records no plan_runs (written by a t5peft before shares); run compare again")
    return description


def merge_shares(folders: Sequence[str | Path], output: str | Path) -> Path:
    """Merge the run folders of ``folders`` (each a compare output, usually one share each) into ``output``:
    ``experiment.json``, the results JSON, the table and the figures. Returns the results JSON's path."""
    folders = [Path(f) for f in folders]
    output = Path(output)
    descriptions = [_read_description(folder) for folder in folders]
    first, reference = folders[0], plan_identity(descriptions[0])
    for folder, description in zip(folders[1:], descriptions[1:], strict=True):
        identity = plan_identity(description)
        if identity != reference:
            raise ExperimentError(
                f"{folder} holds another plan than {first} ({_first_difference(reference, identity)}); "
                "only shares of one plan can be merged"
            )
    shards = [d.get("shard") or {"index": 1, "count": 1} for d in descriptions]
    counts = {s["count"] for s in shards}
    if len(counts) > 1:
        raise ExperimentError(f"the folders split the plan differently (into {sorted(counts)} shares); merge one split")
    seen: dict[int, Path] = {}
    for folder, shard in zip(folders, shards, strict=True):
        if shard["index"] in seen:
            raise ExperimentError(
                f"{folder} and {seen[shard['index']]} are both share {shard['index']}/{shard['count']}"
            )
        seen[shard["index"]] = folder
    plan_runs: list[str] = descriptions[0]["plan_runs"]
    found: dict[str, Path] = {}
    for folder in folders:
        for name in plan_runs:
            run = RunFolder(folder / RUNS / name)
            if run.results.is_file():
                if name in found:
                    raise ExperimentError(f"run {name} is finished in both {found[name]} and {folder}")
                found[name] = folder
    if not found:
        raise ExperimentError(f"no finished runs in {', '.join(map(str, folders))}: nothing to merge")
    merged = {key: value for key, value in descriptions[0].items() if key not in ("shard", "command_line")}
    merged["merged_from"] = [
        {"folder": str(folder.resolve()), "shard": shard, "command_line": d.get("command_line")}
        for folder, shard, d in zip(folders, shards, descriptions, strict=True)
    ]
    output.mkdir(parents=True, exist_ok=True)
    (output / EXPERIMENT_FILE).write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    run_folders = [found[name] / RUNS / name for name in plan_runs if name in found]
    missing = [name for name in plan_runs if name not in found]
    return write_report(merged, output, run_folders, missing=missing)
