"""Does a backbone pretrained here help fine-tuning? Pretrain, then probe: backbone vs random init.

``study`` pretrains one architecture on IMDb ``unsupervised`` + ``train`` (test copies dropped, see
``t5peft.pretrain.loop.prepare_texts``) with ``t5peft.pretrain.pretrain``, writing snapshots at
``--export-steps``, and probes every snapshot. ``probe`` probes existing backbone folders.

The probe: full fine-tuning with ``t5peft.train.loop.train`` (the project's own loop) from the backbone
(``init=pretrained``, every result says ``pretrained-here``) and from random weights of the same architecture
(``init=random``), with identical settings: the same training subset, validation and test subsets, steps,
learning rate and seeds (3 by default). It reports test accuracy, mean and standard deviation (n-1) over
seeds, for each arm, and the difference. The random arm depends only on the architecture and the settings,
so it is run once per study.

Also measured per backbone (``--features``, or the ``features`` command alone): how much the state the label is
read from depends on the review. The label is scored at the first decoder step, and in span corruption the
first target token is always ``<extra_id_0>``: a backbone may learn that decoder step 0 need not look at the
input. For 1,000 training and 1,000 test reviews it takes (a) the input embeddings and (b) the encoder output,
each averaged over the review's tokens, and (c) the last decoder layer's state at step 0 (before the LM head),
fits a logistic regression on the frozen training features and reports test accuracy, and for (c) the spread
across reviews (mean squared distance to the mean state divided by the mean squared norm: 0 = the same state
for every review).

Everything is written to one JSON (rewritten after every run, so an interrupted study resumes where it
stopped) and a PNG: probe accuracy against pretraining steps and minutes.

    python studies/pretrain_probe.py study --name tiny-l128 --model-config configs/models/t5-tiny \\
        --steps 3000 --export-steps 500,1000,2000 --out-dir docs/pretraining --work /tmp/pretrain-study
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from t5peft.data.sources import load_split, split_validation
from t5peft.data.text2text import TaskFormat, encode_split, eval_batches
from t5peft.engine.env import environment
from t5peft.model import T5ForConditionalGeneration, load_pretrained
from t5peft.pretrain import PretrainConfig, PretrainData, build_data, pretrain
from t5peft.tokenizer import load_tokenizer
from t5peft.train.loop import train
from t5peft.train.settings import TrainConfig

SHARED = os.environ.get("T5PEFT_SHARED", "../shared")


# --------------------------------------------------------------------------------------------------
# Fine-tuning probe


@dataclasses.dataclass
class ProbeSettings:
    train_size: int = 4000
    validation_size: int = 500
    test_size: int = 2000
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-3
    dropout: float = 0.1
    max_source_length: int = 128
    warmup_ratio: float = 0.06
    seeds: tuple[int, ...] = (0, 1, 2)
    compile: str = "off"  # a compiled step would be compiled again for every run: eager everywhere
    eval_batch_size: int = 64


def finetune(model_dir: Path, init: str, seed: int, probe: ProbeSettings, args: argparse.Namespace, work: Path) -> dict:
    """One full fine-tuning run with the project's loop; returns its accuracies, steps and time.

    ``args`` gives ``data``, ``tokenizer`` and ``device``.
    """
    output = work / f"ft-{init}-{seed}-{time.time_ns()}"
    cfg = TrainConfig(
        model=str(model_dir),
        tokenizer=args.tokenizer,
        init=init,
        data=args.data,
        output=str(output),
        method="full",
        seed=seed,
        train_size=probe.train_size,
        validation_size=probe.validation_size,
        test_size=probe.test_size,
        epochs=probe.epochs,
        batch_size=probe.batch_size,
        eval_batch_size=probe.eval_batch_size,
        lr=probe.lr,
        dropout=probe.dropout,
        max_source_length=probe.max_source_length,
        warmup_ratio=probe.warmup_ratio,
        logs_per_two_epochs=2,
        device=args.device,
        compile=probe.compile,
        progress=False,
    )
    start = time.time()
    results = train(cfg)
    shutil.rmtree(output, ignore_errors=True)  # the fine-tuned weights are not kept
    return {
        "seed": seed,
        "weights": results["weights"],
        "test_accuracy": results["test"]["accuracy"],
        "test_n": results["test"]["n"],
        "validation_accuracy": results["validation"]["accuracy"],
        "steps": results["training"]["steps"],
        "train_seconds": results["training"]["seconds"],
        "wall_seconds": time.time() - start,
        "load_average": _load(),
    }


def summary(runs: list[dict]) -> dict:
    accuracies = [r["test_accuracy"] for r in runs]
    return {
        "mean": statistics.mean(accuracies),
        "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "n": len(accuracies),
        "validation_mean": statistics.mean(r["validation_accuracy"] for r in runs),
    }


# --------------------------------------------------------------------------------------------------
# Frozen-feature check of the state the label is read from


def _encoded(args: argparse.Namespace, tokenizer, n: int, length: int):
    task = TaskFormat("Review: ", ("negative", "positive"), length, "right", False)
    train_all = load_split(args.data, "train")
    _, train = split_validation(train_all, size=n, seed=123)
    _, test = split_validation(load_split(args.data, "test"), size=n, seed=123)
    return encode_split(train, tokenizer, task), encode_split(test, tokenizer, task)


@torch.no_grad()
def _features(model, split, pad_id: int) -> dict[str, torch.Tensor]:
    """Float32 features on the CPU, computed on the model's device: the input embeddings and the encoder output
    averaged over the review's tokens, the last decoder layer's state at step 0, and the labels."""
    columns: dict[str, list[torch.Tensor]] = {"embedding": [], "encoder": [], "decoder": [], "labels": []}
    device = model.device
    for indices, batch in eval_batches(split, 64, pad_id):
        batch = batch.to(device)
        mask = batch.attention_mask
        hidden, _ = model.encode(batch.input_ids, mask)
        start = torch.zeros((len(indices), 1), dtype=torch.long, device=device)
        state = model.decoder(model.shared(start), None, encoder_hidden_states=hidden, encoder_attention_mask=mask)
        columns["embedding"].append(_mean(model.shared(batch.input_ids), mask))
        columns["encoder"].append(_mean(hidden, mask))
        columns["decoder"].append(state[:, 0].float().cpu())
        columns["labels"].append(torch.as_tensor([split.labels[i] for i in indices]))
    return {name: torch.cat(values) for name, values in columns.items()}


def _mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).float().cpu()


def _logistic_accuracy(train_x, train_y, test_x, test_y) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = train_x @ weight + bias
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, train_y.float()) + 1e-3 * weight.square().sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((test_x @ weight + bias > 0).long() == test_y).float().mean())


def _spread(states: torch.Tensor) -> float:
    centred = states - states.mean(0)
    return float(centred.square().sum(1).mean() / states.square().sum(1).mean())


def features(model, encoded, pad_id: int) -> dict:
    """The frozen-feature check (module docstring) of ``model`` on ``encoded`` = (train split, test split)."""
    model.eval()
    train_split, test_split = encoded
    train, test = _features(model, train_split, pad_id), _features(model, test_split, pad_id)

    def accuracy(name: str) -> float:
        return _logistic_accuracy(train[name], train["labels"], test[name], test["labels"])

    return {
        "embedding_mean_accuracy": accuracy("embedding"),
        "encoder_mean_accuracy": accuracy("encoder"),
        "decoder_step0_accuracy": accuracy("decoder"),
        "decoder_step0_spread": _spread(torch.cat([train["decoder"], test["decoder"]])),
        "reviews": [len(train_split), len(test_split)],
    }


# --------------------------------------------------------------------------------------------------
# The study file


class StudyFile:
    """The JSON of a study, rewritten after every run (an interrupted study skips what is done)."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {**header, "random": {}, "points": {}}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def architecture_key(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("_name_or_path", None)
    config.pop("dropout_rate", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


class SharedRandomArms:
    """Random-init runs depend only on the architecture, the probe settings and the data: kept in one file
    beside the studies, so a later study of the same architecture and probe reuses them (and says so)."""

    def __init__(self, path: Path, arch: str, probe: ProbeSettings, data: str) -> None:
        settings = {k: v for k, v in dataclasses.asdict(probe).items() if k != "seeds"}
        self.path = path
        self.key = hashlib.sha256(json.dumps([arch, settings, data], sort_keys=True).encode()).hexdigest()[:16]
        stored = json.loads(path.read_text()) if path.exists() else {}
        self.arm = stored.get(self.key, {"runs": [], "shared_key": self.key})

    def save(self, arm: dict) -> None:
        stored = json.loads(self.path.read_text()) if self.path.exists() else {}
        stored[self.key] = {k: v for k, v in arm.items() if k != "features"}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(stored, indent=2) + "\n")


def probe_backbone(study: StudyFile, key: str, backbone: Path, probe: ProbeSettings, args, work: Path) -> None:
    """Fill ``study.data["points"][key]`` with the backbone's runs (and the random arm once per architecture)."""
    arch = architecture_key(backbone)
    shared = SharedRandomArms(Path(args.out_dir) / "random-arms.json", arch, probe, args.data)
    random_arm = study.data["random"].setdefault(arch, shared.arm)
    point = study.data["points"].setdefault(key, {"runs": []})
    record = json.loads((backbone / "pretraining.json").read_text())
    point.update(
        backbone=str(backbone),
        step=record["training"]["steps"],
        minutes=record["training"]["minutes"],
        val_loss=record["losses"]["validation"][-1]["loss"],
        architecture=arch,
    )
    for seed in probe.seeds:
        if seed not in [r["seed"] for r in random_arm["runs"]]:
            random_arm["runs"].append(finetune(backbone, "random", seed, probe, args, work))
            random_arm["summary"] = summary(random_arm["runs"])
            study.save()
            shared.save(random_arm)
            _say(f"random seed {seed}: {random_arm['runs'][-1]['test_accuracy']:.4f}")
        if seed not in [r["seed"] for r in point["runs"]]:
            point["runs"].append(finetune(backbone, "pretrained", seed, probe, args, work))
            point["summary"] = summary(point["runs"])
            point["difference"] = point["summary"]["mean"] - random_arm["summary"]["mean"]
            study.save()
            _say(f"{key} seed {seed}: {point['runs'][-1]['test_accuracy']:.4f}")
    if args.features and "features" not in point:
        device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
        point["features"], random_features = feature_pair(backbone, args, probe.max_source_length, device)
        random_arm.setdefault("features", random_features)
        study.save()


def feature_pair(backbone: Path, args: argparse.Namespace, length: int, device: torch.device) -> tuple[dict, dict]:
    """The frozen-feature check of the backbone and of random weights of its architecture (seed 0)."""
    tokenizer = load_tokenizer(args.tokenizer)
    encoded = _encoded(args, tokenizer, 1000, length)
    model = load_pretrained(backbone, device=device)
    torch.manual_seed(0)
    random_model = T5ForConditionalGeneration(model.config).to(device)
    pad = tokenizer.pad_token_id
    return features(model, encoded, pad), features(random_model, encoded, pad)


def cached_data(cfg: PretrainConfig, tokenizer, cache: Path) -> PretrainData:
    """:func:`build_data`, kept in ``cache`` (arrays in .npz without pickle, the rest in JSON): tokenising all of
    IMDb takes minutes on a busy 2-core CPU, and every study of one input length packs the same data."""
    key = hashlib.sha256(json.dumps([cfg.data_settings(), tokenizer.source], sort_keys=True).encode()).hexdigest()
    arrays_path, meta_path = cache / f"data-{key[:16]}.npz", cache / f"data-{key[:16]}.json"
    arrays = ("train", "validation", "sentinels", "train_documents", "validation_documents")
    if arrays_path.exists() and meta_path.exists():
        with np.load(arrays_path, allow_pickle=False) as stored:
            values = {name: stored[name] for name in arrays}
        return PretrainData(**values, **json.loads(meta_path.read_text()))
    data = build_data(cfg, tokenizer)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(arrays_path, **{name: getattr(data, name) for name in arrays})
    meta = {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name not in arrays}
    meta_path.write_text(json.dumps(meta))
    return data


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --------------------------------------------------------------------------------------------------
# Figure


def plot(study: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((p for p in study["points"].values() if p.get("summary")), key=lambda p: p["step"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x_key, label in ((axes[0], "step", "pretraining steps"), (axes[1], "minutes", "pretraining minutes")):
        xs = [p[x_key] for p in points]
        means = [100 * p["summary"]["mean"] for p in points]
        stds = [100 * p["summary"]["std"] for p in points]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label="from the backbone")
        for arch in {p["architecture"] for p in points}:
            rnd = study["random"].get(arch, {}).get("summary")
            if rnd:
                mean, std = 100 * rnd["mean"], 100 * rnd["std"]
                ax.axhline(mean, color="gray", linestyle="--", label="from random init (mean ± std)")
                ax.axhspan(mean - std, mean + std, color="gray", alpha=0.15)
        ax.set_xlabel(label)
        ax.set_ylabel("probe test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    probe = study["probe"]
    fig.suptitle(
        f"{study['name']}: full fine-tuning on {probe['train_size']:,} reviews x {probe['epochs']} epochs, "
        f"{probe['test_size']:,} test reviews, {len(probe['seeds'])} seeds — {study['machine']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(studies: list[dict], path: Path) -> Path:
    """Every study in one figure: probe accuracy against pretraining steps and minutes, one line per study
    (random init drawn at 0 steps), one panel per probe setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = sorted({json.dumps(s["probe"], sort_keys=True) for s in studies})
    fig, axes = plt.subplots(len(probes), 2, figsize=(11, 3.6 * len(probes)), squeeze=False)
    for row, probe_json in enumerate(probes):
        probe = json.loads(probe_json)
        for col, (x_key, label) in enumerate((("step", "pretraining steps"), ("minutes", "pretraining minutes"))):
            ax = axes[row][col]
            for study in (s for s in studies if json.dumps(s["probe"], sort_keys=True) == probe_json):
                points = sorted((p for p in study["points"].values() if p.get("summary")), key=lambda p: p["step"])
                arm = next(iter(study["random"].values()))["summary"]
                xs = [0.0] + [p[x_key] for p in points]
                means = [100 * arm["mean"]] + [100 * p["summary"]["mean"] for p in points]
                stds = [100 * arm["std"]] + [100 * p["summary"]["std"] for p in points]
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=study["name"])
            ax.set_xlabel(label)
            ax.set_ylabel("probe test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.set_title(
                f"fine-tuning {probe['train_size']:,} reviews x {probe['epochs']} epochs, lr {probe['lr']:g}; "
                f"{probe['test_size']:,} test reviews (x = 0: random init)",
                fontsize=8,
            )
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Commands


def probe_settings(args: argparse.Namespace) -> ProbeSettings:
    return ProbeSettings(
        train_size=args.train_size,
        validation_size=args.validation_size,
        test_size=args.test_size,
        epochs=args.epochs,
        batch_size=args.probe_batch_size,
        lr=args.probe_lr,
        dropout=args.probe_dropout,
        max_source_length=args.max_source_length,
        seeds=tuple(args.seeds),
        eval_batch_size=args.eval_batch_size,
    )


def header(args: argparse.Namespace, probe: ProbeSettings, device: torch.device) -> dict:
    env = environment(device)
    return {
        "name": args.name,
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "machine": env["device_name"],
        "date": env["date"],
        "git_commit": env["git_commit"],
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": _load(),
        "probe": dataclasses.asdict(probe),
    }


def open_study(args: argparse.Namespace) -> tuple[ProbeSettings, StudyFile, Path]:
    """The probe settings, the study's JSON file (resumed if it exists) and its work folder."""
    probe = probe_settings(args)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    out_json = Path(args.out_dir) / f"{args.name}.json"
    study = StudyFile(out_json, header(args, probe, device))
    work = Path(args.work) / args.name
    work.mkdir(parents=True, exist_ok=True)
    return probe, study, work


def cmd_study(args: argparse.Namespace) -> None:
    probe, study, work = open_study(args)
    cfg = PretrainConfig(
        model=args.model_config,
        tokenizer=args.tokenizer,
        data=args.data,
        output=str(work / "backbone"),
        input_length=args.input_length,
        first_sentinel=not args.no_first_sentinel,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        max_steps=args.steps,
        max_minutes=args.minutes,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        export_steps=args.export_steps,
        export_dtype=args.export_dtype,
        max_shard_mb=args.max_shard_mb,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        validation_documents=args.validation_documents,
        device=args.device,
        resume=(work / "backbone" / "pretrain_config.json").exists(),
        progress=args.progress,
    )
    if "pretraining" not in study.data:
        _say(f"pretraining {args.name}")
        data = cached_data(cfg, load_tokenizer(args.tokenizer), Path(args.work) / "cache")
        _say(f"data: {len(data.train):,} training examples of {data.input_length} tokens")
        record = pretrain(cfg, data=data)
        study.data["pretraining"] = {
            key: record[key]
            for key in ("architecture", "parameters", "objective", "training", "losses", "machine", "export")
        }
        study.data["pretraining"]["data"] = {
            "documents": record["data"]["texts"]["documents"],
            "splits": record["data"]["texts"]["splits"],
            "test_split_used": record["data"]["texts"]["test_split_used"],
            "test_overlap": record["data"]["texts"].get("test_overlap"),
            "exclusions": record["data"]["texts"].get("exclusions"),
            "train": record["data"]["train"],
            "validation": record["data"]["validation"],
        }
        study.save()
        _say(f"pretrained: {record['training']['steps']} steps, {record['training']['minutes']:.1f} min")
    backbones = [(f"step-{s}", work / "backbone" / "exports" / f"step-{s:07d}") for s in cfg.export_steps]
    backbones.append(("final", work / "backbone"))
    for key, folder in backbones:
        if folder.is_dir():
            probe_backbone(study, key, folder, probe, args, work)
    study.data["load_average_at_end"] = _load()
    study.save()
    plot(study.data, study.path.with_suffix(".png"))
    _say(f"wrote {study.path}")


def cmd_features(args: argparse.Namespace) -> None:
    """The frozen-feature check alone, for backbone folders, into ``<out-dir>/<name>.json``."""
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    path = Path(args.out_dir) / f"{args.name}.json"
    result = json.loads(path.read_text()) if path.exists() else header(args, probe_settings(args), device)
    result.pop("probe", None)
    result.setdefault("backbones", {})
    for backbone in args.backbone:
        ours, random_features = feature_pair(Path(backbone), args, args.max_source_length, device)
        record = json.loads((Path(backbone) / "pretraining.json").read_text())
        result["backbones"][backbone] = {"step": record["training"]["steps"], "features": ours}
        result.setdefault("random_init", {})[architecture_key(Path(backbone))] = random_features
        _say(f"{backbone}: {ours}")
        path.write_text(json.dumps(result, indent=2) + "\n")


def cmd_probe(args: argparse.Namespace) -> None:
    probe, study, work = open_study(args)
    for backbone in args.backbone:
        probe_backbone(study, Path(backbone).name, Path(backbone), probe, args, work)
    study.data["load_average_at_end"] = _load()
    study.save()
    plot(study.data, study.path.with_suffix(".png"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["study", "probe", "features", "plot", "plot-all"])
    p.add_argument("--name", required=True)
    p.add_argument("--out-dir", default="docs/pretraining")
    p.add_argument("--work", default="/tmp/pretrain-study", help="backbones and fine-tuning runs (not committed)")
    p.add_argument("--data", default=f"{SHARED}/data/imdb")
    p.add_argument("--tokenizer", default=f"{SHARED}/models/t5-small")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy 2-core CPU)")
    p.add_argument("--progress", action="store_true")
    # pretraining
    p.add_argument("--model-config", default="configs/models/t5-tiny")
    p.add_argument("--input-length", type=int, default=128)
    p.add_argument("--no-first-sentinel", action="store_true", help="targets without the leading <extra_id_0>")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--export-steps", type=lambda t: [int(x) for x in t.split(",") if x], default=[])
    p.add_argument("--export-dtype", default="fp32")
    p.add_argument("--max-shard-mb", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--validation-documents", type=int, default=500)
    # probe
    p.add_argument("--backbone", nargs="*", default=[], help="probe: backbone folders; plot-all: study JSON files")
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--validation-size", type=int, default=500)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--probe-batch-size", type=int, default=16)
    p.add_argument("--probe-lr", type=float, default=1e-3)
    p.add_argument("--probe-dropout", type=float, default=0.1)
    p.add_argument("--max-source-length", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--features", action="store_true", help="also the frozen-feature check (see the docstring)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "study":
        cmd_study(args)
    elif args.command == "probe":
        cmd_probe(args)
    elif args.command == "features":
        cmd_features(args)
    elif args.command == "plot-all":
        studies = [json.loads(Path(p).read_text()) for p in args.backbone]  # --backbone takes the JSON files here
        plot_all(studies, Path(args.out_dir) / f"{args.name}.png")
    else:
        path = Path(args.out_dir) / f"{args.name}.json"
        plot(json.loads(path.read_text()), path.with_suffix(".png"))


if __name__ == "__main__":
    main()
