"""Pretrain a T5 on a GPU for a fixed time, probe it against random init, and keep a small checkpoint.

Run through ``studies/gpu_pretrain.sh OUTDIR`` (which sets ``PYTHONPATH=src``); the shared folder (IMDb,
the t5-small tokenizer) comes from ``$T5PEFT_SHARED``. Steps:

1. ``t5peft.pretrain.pretrain``: ``configs/models/t5-mini`` (d_model 256, 4 + 4 layers, 15.6 M parameters)
   from random weights on IMDb ``unsupervised`` + ``train`` (exact copies of test reviews dropped; ``test`` is
   never read as pretraining data), inputs of 128 tokens, batch 128, AdamW 2e-3, warmup 500 steps, cosine over
   ``--pretrain-seconds`` of training time (compilation and validation not counted), compiled step + CUDA
   graph, bf16 autocast, batches built by 4 worker processes. The run folder (with its optimizer state) stays
   in a scratch folder. If that run fails, the error is kept in results.json and the pretraining runs again
   eager with batches built in the loop (a slower path, recorded in the pretraining record).
2. The probe (``studies/pretrain_probe.py``): full fine-tuning from the backbone and from random weights of
   the same architecture, identical settings (subset, steps, learning rate, seeds 0, 1, 2), eager steps (a
   compiled step would be compiled again for every run), and the frozen-feature check of the state the label
   is read from.
3. ``OUTDIR/results.json`` (everything measured, with device, date and versions, the pretraining curve),
   ``OUTDIR/log.txt`` and ``OUTDIR/backbone/`` (config.json, sharded bf16 safetensors of at most
   ``--max-shard-mb`` MiB each and their index, tokenizer.json, pretraining.json): 8 files, each under 16 MiB,
   about 32 MiB in all, as a lent GPU machine sends back. ``t5peft train --model OUTDIR/backbone`` fine-tunes
   it (as float32: the bf16 values widened), labelled ``pretrained-here``.

``--tiny`` runs the same steps on the CPU in about a minute (t5-tiny, 30 steps, a few hundred reviews): a
check of the script, not a result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_probe import ProbeSettings, feature_pair, finetune, summary

from t5peft.engine.env import environment
from t5peft.pretrain import PretrainConfig, build_data, pretrain
from t5peft.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
# What comes back from a lent GPU is at most 8 files of at most 16 MiB: results.json, log.txt and these six (two
# shards for t5-mini). The other tokenizer files are the shared t5-small ones; tokenizer.json alone is enough.
BACKBONE_FILES = ("config.json", "pretraining.json", "tokenizer.json", "model.safetensors.index.json")
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shared = Path(os.environ.get("T5PEFT_SHARED", "../shared"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir")
    p.add_argument("--tiny", action="store_true", help="a CPU check of the script: tiny model, few steps")
    p.add_argument("--data", default=str(shared / "data" / "imdb"))
    p.add_argument("--tokenizer", default=str(shared / "models" / "t5-small"))
    p.add_argument("--model-config", default=str(REPO / "configs" / "models" / "t5-mini"))
    p.add_argument("--pretrain-seconds", type=float, default=150.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--input-length", type=int, default=128)
    p.add_argument("--no-first-sentinel", action="store_true")
    p.add_argument("--max-shard-mb", type=float, default=15.9)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--probe-epochs", type=int, default=2)
    p.add_argument("--probe-batch-size", type=int, default=32)
    p.add_argument("--probe-lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scratch", default=None, help="folder for the run's optimizer state (default: a temp folder)")
    args = p.parse_args(argv)
    if args.tiny:
        args.model_config = str(REPO / "configs" / "models" / "t5-tiny")
        args.batch_size, args.warmup_steps, args.train_size, args.test_size = 16, 5, 200, 200
        args.max_shard_mb = 4.2  # t5-tiny in bf16: two shards
    args.device = "auto"
    return args


def pretrain_config(args: argparse.Namespace, output: Path) -> PretrainConfig:
    common = dict(
        model=args.model_config,
        tokenizer=args.tokenizer,
        data=args.data,
        output=str(output),
        input_length=args.input_length,
        first_sentinel=not args.no_first_sentinel,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        export_dtype="bf16",
        max_shard_mb=args.max_shard_mb,
        progress=False,
    )
    if args.tiny:
        return PretrainConfig(**common, max_steps=30, eval_every=10, validation_documents=50, validation_examples=64)
    return PretrainConfig(
        **common,
        max_minutes=args.pretrain_seconds / 60.0,
        eval_every=1000,
        checkpoint_every=10**9,  # only the final state (kept in the scratch folder)
        validation_documents=500,
        validation_examples=1024,
    )


def copy_backbone(run: Path, target: Path) -> dict[str, int]:
    target.mkdir(parents=True, exist_ok=True)
    names = [*BACKBONE_FILES, *[p.name for p in run.glob("model-*.safetensors")]]
    names += ["model.safetensors"] if (run / "model.safetensors").exists() else []
    for name in names:
        if (run / name).exists():
            shutil.copyfile(run / name, target / name)
    return {p.name: p.stat().st_size for p in sorted(target.iterdir())}


def check_output(out: Path) -> dict:
    """What will come back from the GPU machine: at most 8 files of at most 16 MiB (log.txt counted)."""
    files = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    names = set(files) | {"log.txt", "results.json"}
    too_big = sorted(name for name, size in files.items() if size > MAX_FILE_BYTES)
    return {
        "files": len(names),
        "largest_bytes": max(files.values()),
        "too_big": too_big,
        "ok": len(names) <= MAX_FILES and not too_big,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="gpu-pretrain-"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.time()
    timings: dict[str, float] = {}
    results: dict = {"script": "studies/gpu_pretrain.py", "argv": sys.argv[1:], "environment": environment(device)}

    def save() -> None:
        results["timings_seconds"] = timings
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    cfg = pretrain_config(args, scratch / "run")
    t = time.time()
    data = build_data(cfg, load_tokenizer(args.tokenizer))
    timings["data"] = time.time() - t
    print(f"data: {len(data.train):,} examples in {timings['data']:.0f} s", flush=True)
    t = time.time()
    try:
        record = pretrain(cfg, data=data)
    except Exception:  # one shot on a lent GPU: keep the error, then try the plain path (eager, no workers)
        results["first_attempt_error"] = traceback.format_exc()
        save()
        print(results["first_attempt_error"], "retrying eager, batches built in the loop", sep="\n", flush=True)
        cfg = dataclasses.replace(cfg, output=str(scratch / "run-eager"), compile="off", data_workers=0)
        record = pretrain(cfg, data=data)
    run = Path(cfg.output)
    timings["pretrain_wall"] = time.time() - t
    results["pretraining"] = record
    results["pretraining_metrics"] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results["backbone_files"] = copy_backbone(run, out / "backbone")
    results["output_check"] = check_output(out)
    save()
    training = record["training"]
    print(
        f"pretrained {training['steps']} steps in {training['seconds']:.0f} s (+{training['compile_seconds']:.0f} s "
        f"compile), val loss {record['losses']['validation'][0]['loss']:.3f} -> "
        f"{record['losses']['validation'][-1]['loss']:.3f}",
        flush=True,
    )

    probe = ProbeSettings(
        train_size=args.train_size,
        validation_size=500 if not args.tiny else 64,
        test_size=args.test_size,
        epochs=args.probe_epochs,
        batch_size=args.probe_batch_size,
        lr=args.probe_lr,
        seeds=tuple(args.seeds),
        eval_batch_size=512 if device.type == "cuda" else 64,
    )
    results["probe"] = {"settings": probe.__dict__ | {"seeds": list(probe.seeds)}, "backbone": [], "random": []}
    backbone = out / "backbone"
    t = time.time()
    for seed in probe.seeds:
        for init, arm in (("pretrained", "backbone"), ("random", "random")):
            run = finetune(backbone, init, seed, probe, args, scratch)
            results["probe"][arm].append(run)
            print(f"probe {arm} seed {seed}: {run['test_accuracy']:.4f} ({run['wall_seconds']:.0f} s)", flush=True)
            save()
    timings["probe_wall"] = time.time() - t
    arms = {arm: summary(results["probe"][arm]) for arm in ("backbone", "random")}
    results["probe"]["summary"] = arms | {"difference": arms["backbone"]["mean"] - arms["random"]["mean"]}
    t = time.time()
    backbone_features, random_features = feature_pair(backbone, args, probe.max_source_length, device)
    results["features"] = {"backbone": backbone_features, "random": random_features}
    timings["features"] = time.time() - t
    timings["total"] = time.time() - started
    save()
    b, r = arms["backbone"], arms["random"]
    print(
        f"probe: backbone {100 * b['mean']:.2f} ± {100 * b['std']:.2f}, random init {100 * r['mean']:.2f} ± "
        f"{100 * r['std']:.2f} ({len(probe.seeds)} seeds, {args.test_size} test reviews); "
        f"total {timings['total']:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
