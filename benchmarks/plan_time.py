"""How long an experiment plan (e.g. configs/seed.toml) would take on this machine, from measured throughput.

For every method of the plan this builds the run exactly as ``t5peft compare`` would (same settings, same
training loop code, the same compiled or eager step as ``--compile`` resolves to), with random weights of the
plan's architecture (read from a local config.json, since pretrained weights may be unavailable; the cost per
step does not depend on the weight values), times ``--steps`` training steps after ``--warmup`` steps on real
IMDb batches (CUDA events on a GPU), times evaluation on ``--eval-size`` real test reviews, and extrapolates
to the full plan: every seed, every epoch, every validation log point, and the final validation and test
evaluations, run one after another. Compiling (measured once per method) is reported beside the estimate,
not in it: ``compare`` shares a compile cache between the runs of a plan.

    python benchmarks/plan_time.py --config configs/seed.toml --model-config ../shared/models/t5-small
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from t5peft.data.text2text import steps_per_epoch, train_batches
from t5peft.engine.env import environment
from t5peft.experiments.config import load_experiment
from t5peft.train.loop import Run

TRAIN_SPLIT_SIZE = 25_000  # IMDb train split (the plan holds out validation_size of it)
TEST_SPLIT_SIZE = 25_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    shared = os.environ.get("T5PEFT_SHARED", "../shared")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/seed.toml")
    p.add_argument("--model-config", default=f"{shared}/models/t5-small", help="folder with the plan's config.json")
    p.add_argument("--tokenizer", default=f"{shared}/models/t5-small")
    p.add_argument("--data", default=f"{shared}/data/imdb")
    p.add_argument("--methods", default=None, help="comma list (default: the plan's)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--eval-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default=None, choices=["auto", "on", "off"], help="default: the plan's setting")
    p.add_argument("--output", default=None, help="JSON file for the measurements and the estimate")
    return p.parse_args(argv)


def measure_method(experiment, plan, args, workdir: Path) -> dict:
    seed = experiment.seeds[0]
    cfg = experiment.run_config(plan, seed, workdir / plan.name.replace("+", "_"))
    full_train = TRAIN_SPLIT_SIZE - cfg.validation_size
    full_test = cfg.test_size or TEST_SPLIT_SIZE
    planned_steps = steps_per_epoch(cfg.train_size or full_train, cfg.batch_size) * cfg.epochs
    validation_points = math.ceil(
        planned_steps / max(1, round(2 * planned_steps / cfg.epochs / cfg.logs_per_two_epochs))
    )
    pad = 0  # T5's pad id; the tokenizer's is checked by Run
    # the measured run: same settings, random weights, a train subset just big enough for the timed steps
    cfg.model, cfg.tokenizer, cfg.data, cfg.test_data = args.model_config, args.tokenizer, args.data, None
    cfg.init, cfg.progress, cfg.device = "random", False, args.device
    cfg.compile = args.compile or cfg.compile
    cfg.train_size = cfg.batch_size * (args.steps + args.warmup)
    cfg.test_size, cfg.validation_size = args.eval_size, 16
    if plan.name == "adalora":  # time the rank-allocation phase (the costly one) over the real plan's schedule
        cfg.method_options = {**cfg.method_options, "total_step": planned_steps, "tinit": 0}
    run = Run(cfg)
    run.model.train()
    batches = [
        b.to(run.device) for b in train_batches(run.data.train, cfg.batch_size, cfg.seed, 0, pad, static=run.static)
    ]
    compile_start = time.perf_counter()
    if run.compiled:
        run.step.prepare(batches[0])
    synchronize(run.device)
    compile_seconds = time.perf_counter() - compile_start
    times = [timed(run, batch) for batch in batches]
    times = times[args.warmup :]
    run.evaluate_split(run.data.test)  # the first evaluation compiles the scorer's shapes
    result = run.evaluate_split(run.data.test)
    eval_per_example = result.seconds / result.n
    step_s = statistics.median(times)
    evaluated = (validation_points + 1) * experiment.train.get("validation_size", 1000) + full_test
    per_seed = planned_steps * step_s + evaluated * eval_per_example
    return {
        "method": plan.name,
        "compiled": run.compiled,
        "cuda_graph": run.step.cuda_graph,
        "compile_seconds": compile_seconds,
        "eval_batch_size": run.eval_batch_size,
        "step_seconds_median": step_s,
        "step_seconds_all": times,
        "eval_seconds_per_example": eval_per_example,
        "planned_steps_per_seed": planned_steps,
        "validation_points_per_seed": validation_points,
        "examples_evaluated_per_seed": evaluated,
        "seconds_per_seed": per_seed,
        "seeds": len(experiment.seeds),
        "seconds_all_seeds": per_seed * len(experiment.seeds),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Run, batch) -> float:
    """Seconds of one training step: CUDA events around it on a GPU, the host clock elsewhere."""
    if run.device.type == "cuda":
        synchronize(run.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run.step(batch)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start_s = time.perf_counter()
    run.step(batch)
    return time.perf_counter() - start_s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    experiment = load_experiment(args.config)
    wanted = args.methods.split(",") if args.methods else [m.name for m in experiment.methods]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for plan in experiment.methods:
            if plan.name in wanted:
                rows.append(measure_method(experiment, plan, args, Path(tmp)))
                print(f"{plan.name}: {rows[-1]['step_seconds_median']:.3f} s/step", file=sys.stderr)
    total = sum(r["seconds_all_seeds"] for r in rows)
    env = environment(
        torch.device(
            "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        )
    )
    lines = [
        f"Plan {args.config} on {env['device_name']}, {env['date']} (torch {env['packages']['torch']}):",
        "",
        "| method | path | ms / train step | ms / eval example | steps per seed | minutes per seed "
        "| minutes, all seeds | compile s (once) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        path = ("compiled + CUDA graph" if r["cuda_graph"] else "compiled") if r["compiled"] else "eager"
        lines.append(
            f"| {r['method']} | {path} | {1000 * r['step_seconds_median']:.2f} "
            f"| {1000 * r['eval_seconds_per_example']:.3f} | {r['planned_steps_per_seed']:,} "
            f"| {r['seconds_per_seed'] / 60:.1f} | {r['seconds_all_seeds'] / 60:.1f} | {r['compile_seconds']:.0f} |"
        )
    compile_total = sum(r["compile_seconds"] for r in rows)
    lines += [
        "",
        f"Whole plan, runs one after another: {total / 60:.1f} minutes ({total / 3600:.2f} hours), extrapolated "
        f"from the measured step and evaluation rates; plus compiling, measured {compile_total:.0f} s for one run "
        "of each method (later runs of a method reuse the compile cache).",
    ]
    print("\n".join(lines))
    if args.output:
        report = {
            "config": args.config,
            "rows": rows,
            "total_seconds": total,
            "environment": env,
            "settings": vars(args),
            "table": "\n".join(lines),
        }
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
