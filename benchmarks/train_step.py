"""Time one training step of t5peft against Hugging Face ``transformers`` + ``peft``, side by side.

For every method both libraries implement (full fine-tuning, LoRA, AdaLoRA, prompt tuning, (IA)^3), the sides
are built in one process from the same random weights (a ``transformers`` model drawn from a fixed seed,
saved, and loaded by all) and trained on the same batch of real IMDb reviews with the same optimizer:

* ``t5peft``: the training loop's step (``t5peft.engine.step.TrainStep``) run eagerly;
* ``t5peft-compiled`` (``--compiled``, on by default on CUDA): the same step with every T5 block compiled and,
  on CUDA, forward + backward + clipping replayed as one CUDA graph (what ``t5peft train`` runs on a GPU);
* ``transformers+peft``: the same step written with transformers' model and PEFT's adapter, eager;
* ``transformers+peft-compiled`` (``--hf-compile``): that model under ``torch.compile`` (graph breaks allowed).

One step: forward with labels (bf16 autocast on CUDA), the method's extra loss, backward, the method's hooks,
gradient clipping at 1.0, an AdamW step, zero_grad. The measurements interleave the sides (each side once per
round) so that drift of a shared machine falls on all of them, each step is timed on its own (CUDA events on a
GPU), and the table reports the median and minimum milliseconds per step and the speed-up of each t5peft side
over transformers + peft eager (their median / ours).

Run from the repository root::

    python benchmarks/train_step.py                        # all methods, t5-small dimensions
    python benchmarks/train_step.py --methods lora,ia3 --repeats 10 --output lora_ia3.json
    python benchmarks/train_step.py --tiny --repeats 1     # a small model: checks the script itself
    python benchmarks/train_step.py --compiled --hf-compile --methods lora   # all four sides

The shared folder (t5-small config and tokenizer, IMDb parquet files) is ``--shared``, else
``$T5PEFT_SHARED``, else ``../shared`` relative to the repository root. No pretrained weights are needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import peft
import pyarrow.parquet as pq
import torch
import transformers

from t5peft import apply_method, load_pretrained, load_tokenizer
from t5peft.data.sources import LabeledTexts
from t5peft.data.text2text import Batch, TaskFormat, collate, encode_split
from t5peft.engine.env import environment
from t5peft.engine.runtime import resolve_device, use_bf16
from t5peft.engine.step import TrainStep
from t5peft.errors import T5PeftError

REPO_ROOT = Path(__file__).resolve().parent.parent
METHODS = ("full", "lora", "adalora", "prompt", "ia3")
LR = 1e-3
MAX_GRAD_NORM = 1.0
DROPOUT = 0.1
# AdaLoRA: a schedule long enough that every timed step is in the rank-reduction phase, where each step
# updates the importance statistics and re-masks (deltaT 1): the expensive phase of AdaLoRA training.
ADALORA_TOTAL_STEP = 1000
TINY = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}

# Method settings, identical on both sides (PEFT's names). Options each side needs only for itself are
# added where the sides are built.
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q", "v"]}
ADALORA = {
    "init_r": 12,
    "target_r": 8,
    "lora_alpha": 8,
    "lora_dropout": 0.05,
    "target_modules": ["q", "k", "v", "o", "wi", "wo"],
    "tinit": 0,
    "tfinal": 0,
    "deltaT": 1,
    "beta1": 0.85,
    "beta2": 0.85,
    "orth_reg_weight": 0.1,  # t5peft's default; PEFT's is 0.5 (the cost does not depend on the value)
    "total_step": ADALORA_TOTAL_STEP,
}
PROMPT_TOKENS = 20


class BenchmarkError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one training step of t5peft against transformers + peft, side by side.",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per side (default 5 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per side first (default 2 / 5 CUDA)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 autocast on CUDA, float32 on CPU (bf16 is CUDA-only, as in training)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default=None, help="JSON file to write (default: train_step_<device>.json)")
    parser.add_argument("--shared", default=None, help="shared folder (default $T5PEFT_SHARED or ../shared)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--config", default=None, help="a T5 config.json to use instead of t5-small's")
    size.add_argument("--tiny", action="store_true", help="a tiny model (d_model 64, 2 + 2 layers) for smoke tests")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--source-length", type=int, default=128, help="source tokens (reviews are truncated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compiled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time t5peft's compiled step (default: on CUDA only; on the CPU compiling takes minutes)",
    )
    parser.add_argument(
        "--hf-compile",
        nargs="?",
        const="all",
        default="",
        metavar="METHODS",
        help="also time transformers+peft under torch.compile (for all methods, or a comma list)",
    )
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)} (the methods PEFT also has)")
    args.methods = list(dict.fromkeys(methods))
    hf = args.hf_compile.split(",") if args.hf_compile not in ("", "all") else (methods if args.hf_compile else [])
    args.hf_compile = [m.strip() for m in hf if m.strip()]
    for name in ("repeats", "warmup", "threads", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, got {value}")
    if args.source_length < 2:
        parser.error("--source-length must be at least 2 (one token and </s>)")
    return args


def shared_folder(given: str | None) -> Path:
    path = Path(given or os.environ.get("T5PEFT_SHARED", "../shared")).expanduser()
    path = path if path.is_absolute() else (REPO_ROOT / path).resolve()
    if not path.is_dir():
        raise BenchmarkError(f"shared folder not found at {path}; pass --shared or set T5PEFT_SHARED")
    return path


# --------------------------------------------------------------------------------------------------
# Inputs: the model configuration, the base weights, the batch


def model_config(args: argparse.Namespace, shared: Path) -> dict[str, Any]:
    path = Path(args.config) if args.config else shared / "models" / "t5-small" / "config.json"
    if not path.is_file():
        raise BenchmarkError(f"{path}: config.json not found")
    values = json.loads(path.read_text(encoding="utf-8"))
    if args.tiny:
        values.update(TINY)
    values["dropout_rate"] = DROPOUT
    values["use_cache"] = False  # training: neither side keeps a key/value cache
    values.setdefault("decoder_start_token_id", 0)
    return values


def write_base_weights(values: dict[str, Any], seed: int, directory: Path) -> None:
    """A transformers T5 with random weights drawn from ``seed``, saved where both sides load it from."""
    config = transformers.T5Config.from_dict(values)
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(config)
    model.save_pretrained(directory)


def as_kwargs(batch: Batch) -> dict[str, torch.Tensor]:
    """A batch as the keyword arguments of a transformers model's forward."""
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}


def imdb_batch(shared: Path, size: int, length: int, seed: int) -> tuple[Batch, list[int]]:
    """``size`` reviews drawn (seeded) from the IMDb training split, tokenized and collated as in training
    (the default task format: ``Review: `` prefix, the label word and ``</s>`` as target); and their rows."""
    path = shared / "data" / "imdb" / "plain_text" / "train-00000-of-00001.parquet"
    if not path.is_file():
        raise BenchmarkError(f"{path}: IMDb training split not found")
    table = pq.read_table(path, columns=["text", "label"])
    if size > table.num_rows:
        raise BenchmarkError(f"--batch-size {size} is larger than the {table.num_rows} reviews")
    rows = sorted(np.random.default_rng(seed).choice(table.num_rows, size=size, replace=False).tolist())
    texts = table.column("text").take(rows).to_pylist()
    labels = [int(label) for label in table.column("label").take(rows).to_pylist()]
    tokenizer = load_tokenizer(shared / "models" / "t5-small")
    split = encode_split(LabeledTexts(texts, labels, str(path)), tokenizer, TaskFormat(max_source_length=length))
    return collate(split, range(size), tokenizer.pad_token_id), rows


# --------------------------------------------------------------------------------------------------
# The two sides


@dataclass
class Side:
    """One library's model, optimizer and training step for one method."""

    name: str
    model: torch.nn.Module
    step_fn: Callable[[int], None]
    optimizer: torch.optim.Optimizer
    notes: list[str] = field(default_factory=list)
    steps_done: int = 0

    def step(self) -> None:
        self.step_fn(self.steps_done)
        self.steps_done += 1

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def make_optimizer(params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.AdamW:
    """The same AdamW on both sides: fused on CUDA, torch's default (foreach) on CPU, no weight decay."""
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=True if device.type == "cuda" else None)


def trainable_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def method_options(method: str) -> dict[str, Any]:
    return {
        "full": {},
        "lora": dict(LORA),
        "adalora": dict(ADALORA),
        "prompt": {"num_virtual_tokens": PROMPT_TOKENS},
        "ia3": {},
    }[method]


def build_ours(method: str, base: Path, batch: Batch, device: torch.device, bf16: bool, compiled: bool) -> Side:
    model = load_pretrained(base)
    model.set_dropout(DROPOUT)  # before the method, whose own dropouts keep their rates
    model = apply_method(model, method, **method_options(method))
    model.to(device).train()
    model.peft.method.on_train_begin(model, ADALORA_TOTAL_STEP)
    optimizer = make_optimizer(trainable_params(model), device)
    runner = TrainStep(
        model, optimizer, total_steps=ADALORA_TOTAL_STEP, max_grad_norm=MAX_GRAD_NORM, bf16=bf16, compile=compiled
    )
    notes = []
    if compiled:
        start = time.perf_counter()
        runner.prepare(batch)  # compile (and capture the CUDA graph) before any timing
        synchronize(device)
        notes.append(f"compile + capture: {time.perf_counter() - start:.1f} s (cuda_graph={runner.cuda_graph})")

    def step(index: int) -> None:  # the training loop's step, less the learning-rate schedule
        runner.step = index
        runner(batch)

    name = "t5peft-compiled" if compiled else "t5peft"
    return Side(name, model, step, optimizer, notes)


def quiet_transformers() -> None:
    """No loading progress bars or advice in the benchmark's output."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def load_transformers(base: Path) -> transformers.T5ForConditionalGeneration:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notices of transformers' own internals
        model = transformers.T5ForConditionalGeneration.from_pretrained(base)
    return model.to(torch.float32)


def peft_prompt_config() -> tuple[peft.PromptTuningConfig, str]:
    """PEFT's prompt tuning with one transformer submodule (no unused decoder rows), if it accepts that."""
    common = {"task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": PROMPT_TOKENS}
    try:
        return peft.PromptTuningConfig(**common, num_transformer_submodules=1), "num_transformer_submodules=1"
    except (TypeError, ValueError) as err:
        return peft.PromptTuningConfig(**common), f"PEFT refused num_transformer_submodules=1 ({err}); its default"


def build_theirs(
    method: str, base: Path, batch: Batch, device: torch.device, bf16: bool, compiled: bool = False
) -> Side:
    model = load_transformers(base)
    notes = []
    if method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_2_SEQ_LM", **LORA))
    elif method == "adalora":
        model = peft.get_peft_model(model, peft.AdaLoraConfig(task_type="SEQ_2_SEQ_LM", **ADALORA))
    elif method == "prompt":
        config, how = peft_prompt_config()
        model = peft.get_peft_model(model, config)
        used = model.peft_config["default"].num_transformer_submodules
        notes.append(f"PEFT prompt tuning: {how}; num_transformer_submodules used = {used}")
    elif method == "ia3":
        model = peft.get_peft_model(model, peft.IA3Config(task_type="SEQ_2_SEQ_LM"))
    elif method != "full":
        raise BenchmarkError(f"no transformers + peft setup for {method!r}")
    model.to(device).train()
    params = trainable_params(model)
    optimizer = make_optimizer(params, device)
    kwargs = as_kwargs(batch)
    allocate = model.base_model.update_and_allocate if method == "adalora" else None
    forward = torch.compile(model) if compiled else model

    def step(index: int) -> None:  # PEFT's AdaLoRA adds its orthogonality penalty to the loss in forward
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(**kwargs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        if allocate is not None:
            allocate(index)  # PEFT's documented place: after optimizer.step(), before zero_grad()
        optimizer.zero_grad(set_to_none=True)

    if compiled:
        start = time.perf_counter()
        step(0)  # compile outside the timing (this also takes one optimizer step, as each side's warm-up does)
        synchronize(device)
        notes.append(f"torch.compile of the transformers model: {time.perf_counter() - start:.1f} s")
    return Side("transformers+peft-compiled" if compiled else "transformers+peft", model, step, optimizer, notes)


# --------------------------------------------------------------------------------------------------
# Checks that both sides start from the same model


@torch.no_grad()
def starting_point_check(base: Path, batch: Batch, device: torch.device, bf16: bool) -> dict[str, Any]:
    """Same weights tensor by tensor, and the same eval-mode loss on the batch (no method applied)."""
    ours = load_pretrained(base).to(device).eval()
    theirs = load_transformers(base).to(device).eval()
    their_state = theirs.state_dict()
    missing = [n for n, _ in ours.named_parameters() if n not in their_state]
    differ = [n for n, p in ours.named_parameters() if n in their_state and not torch.equal(p, their_state[n])]
    kwargs = as_kwargs(batch)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss_ours = float(ours(**kwargs).loss)
        loss_theirs = float(theirs(**kwargs).loss)
    relative = abs(loss_ours - loss_theirs) / max(abs(loss_theirs), 1e-12)
    tolerance = 2e-2 if bf16 else 1e-4
    result = {
        "weights_identical": not missing and not differ,
        "missing_in_transformers": missing,
        "different_tensors": differ,
        "eval_loss_t5peft": loss_ours,
        "eval_loss_transformers": loss_theirs,
        "eval_loss_relative_difference": relative,
        "eval_loss_tolerance": tolerance,
        "attn_implementation": getattr(theirs.config, "_attn_implementation", None),
    }
    result["ok"] = result["weights_identical"] and relative <= tolerance
    del ours, theirs
    return result


# --------------------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_bytes(side: Side) -> int:
    """Bytes of the side's parameters, buffers and optimizer state (each storage counted once)."""
    seen: dict[tuple[int, str], int] = {}
    tensors = [*side.model.parameters(), *side.model.buffers()]
    for state in side.optimizer.state.values():
        tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
    return sum(seen.values())


@dataclass
class Timings:
    ms: list[float] = field(default_factory=list)
    step_peak_increase: int = 0  # CUDA: max over timed steps of (peak during the step - allocated before it)
    max_allocated: int = 0  # CUDA: torch.cuda.max_memory_allocated over timed steps (both models resident)


def timed_step(side: Side, device: torch.device, timings: Timings) -> None:
    """One step, timed on its own: CUDA events around it on a GPU (after waiting for earlier work), else the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        side.step()
        end.record()
        end.synchronize()
        timings.ms.append(start.elapsed_time(end))
        peak = torch.cuda.max_memory_allocated(device)
        timings.step_peak_increase = max(timings.step_peak_increase, peak - before)
        timings.max_allocated = max(timings.max_allocated, peak)
        return
    start_s = time.perf_counter()
    side.step()
    timings.ms.append((time.perf_counter() - start_s) * 1000.0)


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values)}


REFERENCE = "transformers+peft"


def build_sides(method: str, base: Path, batch: Batch, device: torch.device, bf16: bool, args) -> list[Side]:
    sides = [build_ours(method, base, batch, device, bf16, compiled=False)]
    if args.compiled:
        try:
            sides.append(build_ours(method, base, batch, device, bf16, compiled=True))
        except Exception as err:  # recorded in the table and the JSON; the other sides are still timed
            sides[0].notes.append(f"t5peft compiled step FAILED: {type(err).__name__}: {err}")
            sides[0].notes.append(traceback.format_exc(limit=8))
    sides.append(build_theirs(method, base, batch, device, bf16))
    if method in args.hf_compile:
        try:
            sides.append(build_theirs(method, base, batch, device, bf16, compiled=True))
        except Exception as err:  # "compiled where that works": a failure is recorded, not fatal
            sides[-1].notes.append(f"transformers+peft under torch.compile failed: {type(err).__name__}: {err}")
    return sides


def benchmark_method(
    method: str, base: Path, batch: Batch, device: torch.device, bf16: bool, warmup: int, repeats: int, args
) -> dict[str, Any]:
    sides = build_sides(method, base, batch, device, bf16, args)
    notes = [note for side in sides for note in side.notes]
    if method == "adalora":
        notes.append(
            f"AdaLoRA: total_step {ADALORA_TOTAL_STEP}, tinit 0, tfinal 0, deltaT 1: every timed step is in the "
            "rank-allocation phase (importance update + re-masking each step), AdaLoRA's most expensive phase"
        )
    params = {side.name: side.trainable for side in sides}
    if len(set(params.values())) != 1:
        notes.append(f"WARNING: trainable parameter counts differ: {params}")
    synchronize(device)
    warm_start = time.perf_counter()
    for _ in range(warmup):
        for side in sides:
            side.step()
    synchronize(device)
    warm_seconds = time.perf_counter() - warm_start
    timings = {side.name: Timings() for side in sides}
    for _ in range(repeats):  # interleaved: drift of the machine falls on every side alike
        for side in sides:
            timed_step(side, device, timings[side.name])
    result: dict[str, Any] = {
        "status": "ok",
        "sides": [side.name for side in sides],
        **{name: {"ms": t.ms, **summary(t.ms)} for name, t in timings.items()},
        "trainable_params": params,
        "warmup_seconds": warm_seconds,
        "notes": notes,
    }
    reference = result[REFERENCE]
    for side in sides:
        if side.name != REFERENCE:
            result[side.name]["speedup"] = reference["median_ms"] / result[side.name]["median_ms"]
    result["ratio"] = result["t5peft"]["median_ms"] / reference["median_ms"]
    result["ratio_min"] = result["t5peft"]["min_ms"] / reference["min_ms"]
    if device.type == "cuda":
        for side in sides:
            resident = resident_bytes(side)
            result[side.name]["memory"] = {
                "resident_bytes": resident,  # parameters + buffers + optimizer state
                "step_peak_increase_bytes": timings[side.name].step_peak_increase,  # grads, activations, workspaces
                "peak_bytes": resident + timings[side.name].step_peak_increase,
                "max_memory_allocated_bytes": timings[side.name].max_allocated,  # includes the other sides' models
            }
    del sides
    return result


# --------------------------------------------------------------------------------------------------
# Report


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} logical cores"


def fmt_ms(stats: dict[str, float]) -> str:
    return f"{stats['median_ms']:.1f} ({stats['min_ms']:.1f})"


def fmt_mb(value: int) -> str:
    return f"{value / 2**20:.0f}"


SIDE_ORDER = ("t5peft", "t5peft-compiled", REFERENCE, "transformers+peft-compiled")


def markdown_table(results: dict[str, dict[str, Any]], device: torch.device) -> str:
    """One row per method; a side a method was not timed with (not asked, or failed: see the notes) shows "-"."""
    cuda = device.type == "cuda"
    present = {s for r in results.values() if r["status"] == "ok" for s in r["sides"]}
    sides = [s for s in SIDE_ORDER if s in present] or ["t5peft", REFERENCE]
    ours = [s for s in sides if s != REFERENCE]
    head = ["method", *(f"{s} ms" for s in sides), *(f"speed-up {s}" for s in ours), "trainable params"]
    if cuda:
        head += [f"peak MB {s}" for s in sides]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in results.items():
        if r["status"] != "ok":
            lines.append("| " + " | ".join([method, r["status"]] + [""] * (len(head) - 2)) + " |")
            continue
        counts = sorted(set(r["trainable_params"].values()))
        count = f"{counts[0]:,}" if len(counts) == 1 else f"{r['trainable_params']} (DIFFER)"
        cells = [method, *(fmt_ms(r[s]) if s in r else "-" for s in sides)]
        cells += [f"{r[s]['speedup']:.2f}x" if s in r else "-" for s in ours]
        cells.append(count)
        if cuda:
            cells += [fmt_mb(r[s]["memory"]["peak_bytes"]) if s in r else "-" for s in sides]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(settings: dict[str, Any], device: torch.device, date: str) -> str:
    dims = settings["model"]
    return (
        f"train step, {date} (UTC); {machine(device)}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}; {torch.get_num_threads()} threads\n"
        f"model d_model {dims['d_model']}, d_ff {dims['d_ff']}, {dims['num_layers']}+{dims['num_decoder_layers']} "
        f"layers ({settings['model_source']}); batch {settings['batch_size']} x {settings['source_tokens']} source "
        f"tokens, 2 target tokens; {settings['precision']}; warmup {settings['warmup']}, {settings['repeats']} "
        "interleaved timed steps per side\n"
        "ms per step: median (min); speed-up = transformers+peft eager median / that side's median (> 1: faster)"
    )


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    quiet_transformers()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        shared = shared_folder(args.shared)
        device = resolve_device(args.device, BenchmarkError)
        bf16 = use_bf16(args.precision, device, BenchmarkError)
        values = model_config(args, shared)
        batch, rows = imdb_batch(shared, args.batch_size, args.source_length, args.seed)
    except (BenchmarkError, T5PeftError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    if args.compiled is None:
        args.compiled = cuda
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    repeats = args.repeats if args.repeats is not None else (20 if cuda else 5)
    output = Path(args.output or f"train_step_{device.type}.json")
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    settings = {
        "methods": args.methods,
        "device": str(device),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "repeats": repeats,
        "batch_size": args.batch_size,
        "source_tokens": int(batch.input_ids.shape[1]),
        "max_source_length": args.source_length,
        "imdb_train_rows": rows,
        "seed": args.seed,
        "model_source": "tiny" if args.tiny else (args.config or "t5-small config.json"),
        "model": {k: values[k] for k in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers")},
        "optimizer": {"name": "AdamW", "lr": LR, "weight_decay": 0.0, "fused": cuda, "max_grad_norm": MAX_GRAD_NORM},
        "dropout": DROPOUT,
        "lora": LORA,
        "adalora": ADALORA,
        "prompt": {"num_virtual_tokens": PROMPT_TOKENS},
        "ia3": "defaults (k, v, wo; wo feedforward)",
        "sides": ["t5peft", *(["t5peft-compiled"] if args.compiled else []), REFERENCE]
        + (["transformers+peft-compiled"] if args.hf_compile else []),
        "hf_compile_methods": args.hf_compile,
        "timing": "CUDA events around each step" if cuda else "time.perf_counter around each step",
    }
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="t5peft-bench-") as tmp:
        base = Path(tmp) / "base"
        write_base_weights(values, args.seed, base)
        batch = batch.to(device)
        check = starting_point_check(base, batch, device, bf16)
        if not check["ok"]:
            notes.append(f"WARNING: the two sides do not start from the same model: {check}")
        for method in args.methods:
            print(f"[{method}] building and timing ...", file=sys.stderr, flush=True)
            torch.manual_seed(args.seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # PEFT's advice on config choices
                    warnings.simplefilter("ignore", FutureWarning)  # deprecations inside transformers / peft
                    results[method] = benchmark_method(method, base, batch, device, bf16, warmup, repeats, args)
            except Exception as err:
                failed = True
                results[method] = {"status": "error", "reason": f"{type(err).__name__}: {err}"}
                results[method]["traceback"] = traceback.format_exc()
                notes.append(f"{method}: ERROR {type(err).__name__}: {err}")
            else:
                notes.extend(f"{method}: {note}" for note in results[method]["notes"])
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    if not cuda:
        notes.append("memory: not measured on CPU")
    if device.type == "cpu":
        notes.append("CPU timings are sensitive to other jobs on the machine: compare min as well as median")
    table = markdown_table(results, device)
    title = header(settings, device, date)
    env = environment(device)
    env.update(machine=machine(device), torch=torch.__version__, threads=torch.get_num_threads())
    report = {
        "benchmark": "train_step",
        "date_utc": date,
        "settings": settings,
        "environment": env,
        "starting_point": check,
        "results": results,
        "notes": notes,
        "header": title,
        "table": table,
        "seconds": time.perf_counter() - started,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    print(title)
    print()
    print(table)
    print()
    for note in notes:
        print(f"- {note}")
    print(f"\n{report['seconds']:.0f} s in all; JSON written to {output}")
    return 1 if failed else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
