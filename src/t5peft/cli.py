"""Command line: t5peft train | evaluate | predict | compare | report | methods | pretrain | push | plan-memory."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._version import __version__
from .errors import T5PeftError

DESCRIPTION = """\
T5 from scratch and parameter-efficient fine-tuning on IMDb sentiment.

Commands: train (fine-tune with one method), evaluate (re-score a finished run), predict (label reviews),
methods (list methods and options), compare (run an experiment file), report (re-render a results JSON),
push (upload a run to the Hugging Face Hub), plan-memory (memory per device of a run, before loading anything).
Run 't5peft COMMAND --help' for a command's options.
"""

EPILOG = """\
Errors you can fix (a missing file, a bad option) are printed as one line and exit with status 2; an
unexpected error is reported as a bug (status 1) and -v shows its traceback. Ctrl-C exits with status 130.
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except where the help text already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if "default:" in help_text or action.default in (None, argparse.SUPPRESS):
            return help_text  # said in words, or nothing to say
        if action.nargs == 0 and isinstance(action.default, bool):  # a flag: store_true or store_false
            return f"{help_text} (default: off)"
        return super()._get_help_string(action)


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value``: value read as JSON when it parses (numbers, true, lists), a comma list as a list of
    strings, anything else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw.split(",") if "," in raw else raw


def _defaults(settings_class: type) -> argparse.Namespace:
    """The default of every field of a settings dataclass, read from its fields: building one would check it, which
    imports torch (the task format), and ``--help`` must start without torch."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(settings_class):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return argparse.Namespace(**values)


TENSORBOARD_DEFAULT = "<output>/tensorboard"  # --tensorboard without a folder


def _add_tensorboard_argument(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument(
        "--tensorboard",
        nargs="?",
        const=TENSORBOARD_DEFAULT,
        default=None,
        metavar="DIR",
        help=f"write TensorBoard events (scalars at every log point, HParams at the end) to DIR (default DIR: {where}; "
        "needs the extra t5peft[tensorboard])",
    )


def _tensorboard_dir(args: argparse.Namespace, default: Path) -> str | None:
    """``--tensorboard``'s folder: DIR as given, ``default`` for the bare flag, None without it."""
    if args.tensorboard is None:
        return None
    return str(default) if args.tensorboard == TENSORBOARD_DEFAULT else args.tensorboard


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .data.tasks import task_names
    from .engine.settings import BASE_DTYPES, QUANTIZE_SCHEMES
    from .methods.registry import method_names
    from .train.settings import TrainConfig

    d = _defaults(TrainConfig)
    p.add_argument("--model", default=d.model, help="folder with config.json (+ weights), or a Hub id")
    p.add_argument(
        "--data",
        default=None,
        help="Hub-layout folder or Hub id, aclImdb dir/tar.gz, csv/tsv/jsonl/json/parquet file "
        "(default: the task's Hub dataset, imdb: stanfordnlp/imdb)",
    )
    p.add_argument(
        "--task",
        default=d.task,
        help=f"built-in task: {', '.join(task_names())}; the four options below change its columns and format",
    )
    p.add_argument(
        "--text-column",
        default=None,
        metavar="NAME[,NAME]",
        help="column(s) holding the text (default: the task's, imdb: text); several: give --template",
    )
    p.add_argument("--label-column", default=None, help="column holding the label (default: the task's, imdb: label)")
    p.add_argument(
        "--template",
        default=None,
        help="the source text, columns as {name}, e.g. 'premise: {premise} hypothesis: {hypothesis}' "
        "(default: the task's, imdb: 'Review: {text}')",
    )
    p.add_argument(
        "--test-data",
        default=None,
        help="test source (default: the test split of --data; for a single --data file, 10%% of it held out, "
        "or --test-size rows)",
    )
    p.add_argument("--output", required=True, help="run folder")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: --model)")
    p.add_argument(
        "--init",
        choices=["pretrained", "random"],
        default=d.init,
        help="random: weights drawn from --seed with --model's architecture (every output says so)",
    )
    p.add_argument("--method", default=d.method, help=", ".join(method_names()))
    p.add_argument(
        "--option",
        "-o",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. -o r=16 -o target_modules=q,k,v (default: the method's; see `t5peft methods`)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training reviews")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: 512 when compiled, else 64")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's, see t5peft methods)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="share of steps with linear warmup")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping norm")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout rate of the model")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights, method, data order and subsets")
    p.add_argument(
        "--validation-size", type=int, default=d.validation_size, help="training reviews held out for validation"
    )
    p.add_argument(
        "--train-size", type=int, default=None, help="train on a seeded subset of this many reviews (default: all)"
    )
    p.add_argument(
        "--test-size", type=int, default=None, help="test on a seeded subset of this many reviews (default: all)"
    )
    p.add_argument(
        "--logs-per-two-epochs", type=int, default=d.logs_per_two_epochs, help="log points (validation) per 2 epochs"
    )
    p.add_argument("--max-source-length", type=int, default=d.max_source_length, help="source tokens kept")
    p.add_argument(
        "--truncation-side",
        choices=["right", "left", "both"],
        default=d.truncation_side,
        help="right keeps the head of a long review, left the tail, both head + tail",
    )
    p.add_argument("--strip-html", action="store_true", help="replace <br /> tags by spaces")
    p.add_argument(
        "--prefix", default=None, help="text put before the text of a one-column task (default: the task's, 'Review: ')"
    )
    p.add_argument(
        "--label-words",
        nargs="+",
        default=None,
        metavar="WORD",
        help="the target word(s) of each class, in class order, comma- or space-separated: neg,neu,pos; they name "
        "the classes, and labels in the data may be the words or class indices (default: the task's, imdb: "
        "negative,positive)",
    )
    p.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default=d.precision, help="auto: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=d.compile,
        help="torch.compile the step (+ CUDA graphs on CUDA); auto: on for CUDA, off on the CPU",
    )
    p.add_argument(
        "--strategy",
        choices=["auto", "ddp", "fsdp"],
        default=d.strategy,
        help="under torchrun: ddp (DistributedDataParallel; auto with more than one rank) or fsdp (FSDP2 per T5 "
        "block); --batch-size stays the global batch",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; one line per log point instead")
    p.add_argument(
        "--skip-empty",
        action="store_true",
        help="leave out rows whose text is empty (counted in results.json) instead of refusing the data",
    )
    p.add_argument(
        "--allow-missing-classes",
        action="store_true",
        help="a set with no reviews of a class is a loud warning (recorded in results.json), not an error",
    )
    _add_tensorboard_argument(p, "<output>/tensorboard")
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO_ID",
        help="at the end, upload final/ with its model card to this Hub repository, as t5peft push does "
        "(default: no upload)",
    )
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each T5 block's activations in the backward pass: less memory, one more forward",
    )
    p.add_argument(
        "--base-dtype",
        choices=list(BASE_DTYPES),
        default=d.base_dtype,
        help="adapter methods: store the frozen base weights in bf16 (trained ones and AdamW stay float32)",
    )
    p.add_argument(
        "--quantize",
        choices=list(QUANTIZE_SCHEMES),
        default=d.quantize,
        help="adapter methods: quantize the frozen q, k, v, o, wi weights with torchao (nf4: QLoRA's 4-bit "
        "NormalFloat with double quantization; int8: per-row); wo, embeddings and lm_head stay unquantized",
    )


def _train_config(args: argparse.Namespace):
    """A TrainConfig from the parsed arguments: every option is named after its setting, but three."""
    import dataclasses

    from .train.settings import TrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values.update(method_options=dict(args.option), label_words=_words(args.label_words), progress=not args.no_progress)
    values["tensorboard"] = _tensorboard_dir(args, Path(args.output) / "tensorboard")
    return TrainConfig(**values)


def _words(given: list[str] | None) -> tuple[str, ...] | None:
    """``--label-words neg,neu,pos`` or ``--label-words neg neu pos`` as one tuple of words."""
    if given is None:
        return None
    return tuple(word.strip() for item in given for word in item.split(",") if word.strip())


def cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import Run

    run = Run.start(_train_config(args))
    results = run.run()
    if run.dist.is_writer:  # under torchrun, one summary
        _print_summary(results)
    return 0


def _print_data_checks(data: dict) -> None:
    """The class balance of each set, and what the data checks let through (missing classes, empty rows)."""
    balance = data.get("class_balance")
    if balance:
        sets = "; ".join(
            f"{name} " + " / ".join(f"{count:,} {word}" for word, count in counts.items())
            for name, counts in balance.items()
        )
        print(f"  class balance: {sets}")
    for problem in data.get("missing_classes") or ():
        print(f"  WARNING: {problem} (--allow-missing-classes)")
    for name, skipped in (data.get("skipped_empty") or {}).items():
        if skipped["count"]:
            print(f"  skipped: {skipped['count']:,} empty review(s) in the {name} source (--skip-empty)")


def _print_summary(results: dict) -> None:
    test, params, timing, data = results["test"], results["parameters"], results["training"], results["data"]
    overlap = data["overlap"]
    task = data.get("task", {"name": "imdb"})
    rows = "reviews" if task["name"] == "imdb" else "examples"
    print(f"method {results['method']} ({results['weights']} weights), seed {results['seed']}")
    if task["name"] != "imdb" or task.get("classes") not in (None, ["negative", "positive"]):
        changed = " with your settings" if "with overrides" in task.get("origin", "") else ""
        print(f"  task: {task['name']}{changed}, classes {', '.join(task['classes'])}, source {task['template']!r}")
    print(f"  trainable parameters: {params['trainable']:,} of {params['base']:,} ({params['trainable_percent']:.3f}%)")
    print(f"  test accuracy: {test['accuracy']:.4f} on {test['n']:,} {rows}, loss {test['loss']:.4f}")
    if len(test["confusion"]) > 2 or task["name"] != "imdb":
        print(f"  test macro-F1: {test['macro_f1']:.4f}; confusion (rows true, columns predicted): {test['confusion']}")
    metric = test.get("metric", {"name": "accuracy"})
    if metric["name"] != "accuracy":
        print(f"  test {metric['name']} (the task's metric of record): {metric['value']:.4f}")
    print(f"  test set: {data['test_from']}")
    for split, skipped in data.get("unlabelled_rows", {}).items():
        print(f"  unlabelled rows (label -1) left out of {split}, never scored: {skipped['count']:,}")
    print(
        f"  overlap: {overlap['test_in_train']:,} of the {test['n']:,} test {rows} also occur in the training "
        f"{rows}, {overlap['test_in_validation']:,} in the validation {rows}"
    )
    print(f"  validation accuracy: {results['validation']['accuracy']:.4f}")
    _print_data_checks(data)
    print(
        f"  training: {timing['seconds']:.1f} s, {timing['examples_per_s']:.1f} examples/s, "
        f"{timing['tokens_per_s']:.0f} tokens/s ({timing['precision']})"
    )
    print(f"  machine: {results['environment']['device_name']}")
    folder = Path(results["config"]["output"])
    entries = (entry for entry in folder.iterdir() if not entry.name.startswith("."))  # the lock file
    files = sorted(f"{entry.name}/" if entry.is_dir() else entry.name for entry in entries)
    print(f"  run folder: {folder} ({', '.join(files)})")
    if results.get("pretraining"):
        from .pretrain.loop import weights_summary

        print(f"  backbone: {weights_summary(results['pretraining'])}")


def _add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    from .pretrain.settings import EXPORT_DTYPES, SCHEDULES, PretrainConfig

    d = _defaults(PretrainConfig)
    p.add_argument("--model", required=True, help="folder with config.json (--init random) or a checkpoint")
    p.add_argument(
        "--init",
        choices=["random", "pretrained"],
        default=d.init,
        help="random: weights drawn from --seed; pretrained: continue pretraining --model's weights",
    )
    p.add_argument("--data", default=d.data, help="IMDb-layout folder or Hub id, or a .txt/.jsonl/.parquet/.csv file")
    p.add_argument("--output", required=True, help="folder for the checkpoint and the run's files")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id (default: --model)")
    p.add_argument(
        "--splits", nargs="+", default=None, help="splits of an IMDb-layout source (default: unsupervised train)"
    )
    p.add_argument("--test-data", default=None, help="texts never to pretrain on (default: the source's test split)")
    p.add_argument(
        "--keep-test-overlap",
        dest="exclude_test_overlap",
        action="store_false",
        help="keep documents that are exact copies of test texts (they are counted either way)",
    )
    p.add_argument("--input-length", type=int, default=d.input_length)
    p.add_argument("--noise-density", type=float, default=d.noise_density)
    p.add_argument("--mean-noise-span-length", type=float, default=d.mean_noise_span_length)
    p.add_argument(
        "--no-first-sentinel",
        dest="first_sentinel",
        action="store_false",
        help="targets start with the first span's tokens instead of <extra_id_0> (a variant of T5's objective)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --max-steps, or 1000")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="where the cosine ends, x peak")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--max-steps", type=int, default=None, help="step budget (the schedule runs over it)")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="time budget in training minutes (alone: the schedule too)"
    )
    p.add_argument("--validation-documents", type=int, default=d.validation_documents)
    p.add_argument("--validation-examples", type=int, default=d.validation_examples)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument(
        "--export-steps",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[],
        help="comma list of steps at which to also write a checkpoint (exports/step-N)",
    )
    p.add_argument("--export-dtype", choices=list(EXPORT_DTYPES), default=d.export_dtype)
    p.add_argument("--max-shard-mb", type=float, default=None, help="write sharded safetensors of at most N MiB")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision)
    p.add_argument("--compile", choices=["auto", "on", "off"], default=d.compile)
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    _add_tensorboard_argument(p, "<output>/tensorboard")
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each T5 block's activations in the backward pass: less memory, one more forward",
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from .pretrain.loop import pretrain
    from .pretrain.settings import PretrainConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig) if hasattr(args, f.name)}
    values["tensorboard"] = _tensorboard_dir(args, Path(args.output) / "tensorboard")
    record = pretrain(PretrainConfig(**values, progress=not args.no_progress))
    training, losses = record["training"], record["losses"]
    print(f"pretrained {record['parameters']:,} parameters: {training['steps']:,} steps ({training['stopped_by']})")
    print(f"  validation loss: {losses['validation'][0]['loss']:.4f} -> {losses['validation'][-1]['loss']:.4f}")
    print(f"  training: {training['minutes']:.2f} min, {training['input_tokens_per_s']:.0f} input tokens/s")
    print(f"  checkpoint: {args.output} (fine-tune it with: t5peft train --model {args.output} ...)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .train.runs import evaluate_run

    report = evaluate_run(
        args.run,
        data=args.data,
        split=args.split,
        size=args.size,
        batch_size=args.batch_size,
        generate=args.generate,
        device=args.device,
        progress=not args.no_progress,
    )
    print(json.dumps(report, indent=2))
    return 0


PREDICT_TEXT_CHARS = 80  # of each review, in predict's JSON lines unless --full-text


def cmd_predict(args: argparse.Namespace) -> int:
    from .train.runs import check_texts, load_run, predict, read_texts
    from .train.settings import TrainError

    if args.file is not None and args.texts:
        raise TrainError("give reviews as arguments or with --file, not both")
    if args.file is not None or args.texts == ["-"]:
        reviews = read_texts(args.file or "-")
        numbered = [("line", number) for number in reviews.numbers]
        texts = reviews.texts
        if reviews.blank_lines:
            print(f"t5peft predict: {reviews.source}: {reviews.blank_lines} blank line(s) passed over", file=sys.stderr)
    elif args.texts:
        texts = args.texts
        check_texts(texts)
        numbered = [("argument", number) for number in range(1, len(texts) + 1)]
    else:
        raise TrainError("no reviews: give them as arguments, with --file PATH, or '-' to read standard input")
    run = load_run(args.run, args.device)
    for (kind, number), text, (label, probability) in zip(numbered, texts, predict(run, texts), strict=True):
        shown = text if args.full_text else text[:PREDICT_TEXT_CHARS]
        row = {kind: number, "text": shown, "text_truncated": len(shown) < len(text)}
        print(json.dumps({**row, "label": label, "probability": round(probability, 4)}))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from .methods.registry import METHODS  # the declarations: no torch import

    for declaration in METHODS:
        options = ", ".join(
            f"{f.name}={f.default if f.default is not dataclasses.MISSING else f.default_factory()}"
            for f in dataclasses.fields(declaration.config_class)
        )
        file_format = declaration.file_format
        claims = "".join(f" {k}={v}" for k, v in file_format.claims.items())
        print(
            f"{declaration.name:12s} lr {declaration.default_lr:g}  peft_type {file_format.peft_type}{claims}  "
            f"options: {options or '-'}"
        )
    print(
        "\nevery method but full also takes --base-dtype bf16 (frozen weights stored in bf16) and --quantize nf4|int8 "
        "(frozen q, k, v, o, wi quantized with torchao, dequantized on the fly; wo, embeddings and lm_head kept)"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiments.compare import CompareInterrupted, run_compare
    from .experiments.config import ExperimentError
    from .experiments.console import configure_logging

    if args.merge is not None:  # compare --merge DIR... --output OUT: report DIR... --output OUT
        if args.config is not None:
            raise ExperimentError("--merge merges the folders of finished shares; it takes no --config")
        return merge_folders([Path(p) for p in args.merge], Path(args.output), html=False)
    if args.config is None:
        raise ExperimentError("--config is required (or --merge DIR... to merge the shares of a plan)")
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        run_compare(
            args.config,
            args.output,
            device=args.device,
            progress=not args.no_progress,
            jobs=args.jobs,
            devices=args.devices,
            compile=args.compile,
            rerun_changed=args.rerun_changed,
            tensorboard=_tensorboard_dir(args, Path(args.output) / "tensorboard"),
            shard=args.shard,
        )
    except CompareInterrupted as err:
        print(f"t5peft compare: {err}", file=sys.stderr)
        return CompareInterrupted.exit_code
    except KeyboardInterrupt:  # before any run started, or while the report was being written
        print("t5peft compare: interrupted; run the same command again to continue", file=sys.stderr)
        return CompareInterrupted.exit_code
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .train.publish import push_run

    url = push_run(args.run, args.repo_id, private=args.private, revision=args.revision)
    where = f" (revision {args.revision})" if args.revision else ""
    print(f"pushed {args.run}/final with its model card to {url}{where}")
    return 0


def _add_push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finished run folder (t5peft train --output)")
    p.add_argument("repo_id", help="the Hub repository, owner/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, help="a branch to upload to (created if missing; default: main)")


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.config import ExperimentError

    paths = [Path(p) for p in args.results]
    if len(paths) == 1 and (not paths[0].is_dir() or args.output is None):  # a results JSON or a compare folder
        from .experiments.report import render_report

        for path in render_report(paths[0], args.output, html=args.html):
            print(path)
        return 0
    if args.output is None:
        raise ExperimentError("merging compare folders needs --output (a folder for the merged results)")
    return merge_folders(paths, Path(args.output), html=args.html)


def merge_folders(paths: list[Path], output: Path, html: bool) -> int:
    """``report DIR... --output OUT`` and ``compare --merge DIR... --output OUT``: the shares' run folders merged."""
    from .experiments.shards import merge_shares

    results = merge_shares(paths, output)
    print(results)
    if html:
        from .experiments.report import render_report

        for path in render_report(results, output, html=True):
            print(path)
    return 0


PLAN_MEMORY_DESCRIPTION = (
    "The memory per device a training run needs (weights, gradients, AdamW state, activations), worked out on the "
    "meta device before anything is loaded or downloaded: --model is a folder with config.json or a name of the T5 "
    "family (t5-small ... t5-11b, google/t5-v1_1-*, google/flan-t5-*). Activations are counted from one traced "
    "forward pass of that shape, in float32."
)


def _add_plan_memory_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="folder with config.json, or a T5 family name such as t5-large")
    p.add_argument("--method", default="lora", help="a method of `t5peft methods`")
    p.add_argument(
        "--option", "-o", action="append", type=parse_option, default=[], metavar="KEY=VALUE", help="method option"
    )
    p.add_argument("--batch-size", type=int, default=16, help="global training batch size")
    p.add_argument("--max-source-length", type=int, default=128, help="source tokens per example")
    p.add_argument("--target-length", type=int, default=2, help="target tokens per example (IMDb: a label word)")
    p.add_argument(
        "--base-dtype", default="fp32", choices=["fp32", "bf16"], help="storage of the frozen weights (as train's)"
    )
    p.add_argument(
        "--quantize",
        default="none",
        choices=["none", "nf4", "int8"],
        help="the frozen q, k, v, o, wi weights quantized (as train's --quantize)",
    )
    p.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"], help="how the world size shares the run")
    p.add_argument("--world-size", type=int, default=1, help="devices (processes) the run is spread over")
    p.add_argument("--activation-checkpointing", action="store_true", help="plan with activation checkpointing")
    p.add_argument("--device-memory", default=None, help="memory of one device, e.g. 80GB or 24GiB: says if it fits")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def cmd_plan_memory(args: argparse.Namespace) -> int:
    from .engine.memory_plan import MemoryPlanError, PlanSettings, format_plan, parse_size, plan_memory
    from .engine.runtime import architecture

    device_memory = None if args.device_memory is None else parse_size(args.device_memory)
    settings = PlanSettings(
        config=architecture(args.model, MemoryPlanError),
        model=args.model,
        method=args.method,
        options=dict(args.option),
        batch_size=args.batch_size,
        source_length=args.max_source_length,
        target_length=args.target_length,
        base_dtype=args.base_dtype,
        quantize=args.quantize,
        strategy=args.strategy,
        world_size=args.world_size,
        activation_checkpointing=args.activation_checkpointing,
    )
    plan = plan_memory(settings)
    if args.json:
        record = plan.as_dict()
        if device_memory is not None:
            record.update(device_memory=device_memory, fits=plan.total <= device_memory)
        print(json.dumps(record, indent=2))
    else:
        print(format_plan(plan, device_memory))
    return 0


def _add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("--data", default=None, help="another data source (default: the run's own test set)")
    p.add_argument(
        "--split",
        default=None,
        help="split of --data or of the run's data: train, test, or a Hub split such as validation (default: the "
        "task's test split)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="a seeded sample of N reviews, stratified by label, of the whole split (default: the run's test set)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--generate", action="store_true", help="also score by greedy generation and compare")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument("texts", nargs="*", help="reviews to label; '-' reads one review per line from standard input")
    p.add_argument(
        "--file",
        default=None,
        help="read one review per line from this file ('-': standard input); lines end at \\n only, blank ones are "
        "passed over",
    )
    p.add_argument(
        "--full-text",
        action="store_true",
        help=f"print each review whole (default: its first {PREDICT_TEXT_CHARS} characters, with text_truncated)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def _add_no_arguments(p: argparse.ArgumentParser) -> None:
    pass


COMPARE_DESCRIPTION = (
    "Run every (method, learning rate, seed) of an experiment file, each in its own process with "
    "its output in <output>/runs/<run>/run.log, then write t5_peft_results.json, results.md and two figures. "
    "Finished runs are reused and partial ones resumed, but only when they were made with the settings the "
    "file asks for now; otherwise compare stops and names them (see --rerun-changed). A failed run is "
    "reported in one line and the others go on; compare then exits with status 2. Ctrl-C: exit 130, with "
    "the command that continues. nproc_per_node = N in the file's [train] runs each run on N processes "
    "(torchrun --standalone)."
)


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=None, help="experiment file (TOML); relative paths in it are taken from its folder"
    )
    p.add_argument("--output", required=True, help="comparison folder (created; reused by a later compare)")
    p.add_argument("--device", default=None, help="override the experiment's device (auto, cpu, cuda, cuda:N)")
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=None,
        help="override the experiment's compile setting (auto: on for CUDA, off on the CPU)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs at once, each its own process (default: 1, or one per --devices GPU)",
    )
    p.add_argument(
        "--devices",
        default=None,
        metavar="0,1,...",
        help="spread the runs over these GPUs (CUDA_VISIBLE_DEVICES per run)",
    )
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="run again the runs whose saved settings differ from the file's; their old folders are moved to "
        "<output>/superseded/ (nothing is deleted)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars; still one line per finished run")
    _add_tensorboard_argument(p, "<output>/tensorboard, one run per run folder")
    p.add_argument(
        "--shard",
        default=None,
        metavar="i/N",
        help="run only the i-th of N shares of the plan (1-based; merge the shares with --merge DIR... --output)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="instead of running: merge the folders of the shares of one plan (--shard) into --output, as t5peft "
        "report DIR... --output does",
    )


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "results",
        nargs="+",
        help="a comparison's t5_peft_results.json or its folder, to render again; or the folders of the shares of "
        "one plan (compare --shard) to merge into --output",
    )
    p.add_argument("--output", default=None, help="folder (default: beside the JSON; required to merge folders)")
    p.add_argument(
        "--html",
        action="store_true",
        help="also write report.html: one self-contained page (figures embedded, the table, per-method curves, "
        "every run's settings, the environment), viewable offline",
    )


class OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line and a pointer to ``--help``, not the whole usage text (exit 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def described(err: OSError) -> str:
    """An operating-system error as what was expected, not ``[Errno 21] Is a directory: 'runs/smoke'``."""
    where = err.filename if err.filename is not None else "a file"
    if isinstance(err, IsADirectoryError):
        return f"{where}: is a folder; a file was expected here"
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        return f"{where}: is a file (or a path through one); a folder was expected here"
    if isinstance(err, FileNotFoundError):
        return f"{where}: no such file or folder"
    if isinstance(err, PermissionError):
        return f"{where}: permission denied"
    return f"{where}: {err.strerror or err}"


def _flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each setting that the command's options set under another spelling, and its option: ``validation_size`` ->
    ``--validation-size``."""
    flags = {}
    for action in parser._actions:  # argparse has no public list of a parser's options
        long = [option for option in action.option_strings if option.startswith("--")]
        if long and "_" in action.dest:
            flags[action.dest] = long[0]
    return flags


def named_as_typed(message: str, flags: dict[str, str]) -> str:
    """An error that names settings, with each named as its option (the user typed ``--validation-size``, not
    ``validation_size``); names inside paths and longer words are left alone."""
    if not flags:
        return message
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    return re.sub(rf"(?<![\w/.-])({names})(?![\w/-])", lambda match: flags[match.group(1)], message)


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``commands`` names the subcommands whose options are built (None: all).

    Every subcommand is listed either way. Building only the invoked one's options keeps ``--help``,
    ``--version`` and the light commands from importing what the others' defaults need (torch, for now).
    """
    parser = OneLineErrors(
        prog="t5peft", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log details (INFO messages; compare: DEBUG, each launch) and show the traceback of a bug",
    )
    volume.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors (compare: failed and interrupted runs, not each finished run or the table)",
    )
    parser.add_argument("--version", action="version", version=f"t5peft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)

    def command(
        name: str,
        add_arguments: Callable[[argparse.ArgumentParser], None],
        run: Callable[[argparse.Namespace], int],
        **kwargs: Any,
    ) -> None:
        p = sub.add_parser(name, **kwargs)
        if commands is None or name in commands:
            add_arguments(p)
        p.set_defaults(func=run, flags=_flags_of(p))

    command(
        "train",
        _add_train_arguments,
        cmd_train,
        help="fine-tune on IMDb with one method",
        formatter_class=HelpFormatter,
    )
    command(
        "pretrain",
        _add_pretrain_arguments,
        cmd_pretrain,
        help="pretrain T5 with span corruption (from scratch or continued)",
        formatter_class=HelpFormatter,
    )
    command(
        "evaluate",
        _add_evaluate_arguments,
        cmd_evaluate,
        help="evaluate a finished run folder",
        formatter_class=HelpFormatter,
    )
    command(
        "predict",
        _add_predict_arguments,
        cmd_predict,
        help="label reviews with a finished run",
        formatter_class=HelpFormatter,
    )
    command(
        "methods", _add_no_arguments, cmd_methods, help="list the methods, their default learning rates and options"
    )
    command(
        "compare",
        _add_compare_arguments,
        cmd_compare,
        help="run an experiment file (every method x lr x seed) and write the report",
        description=COMPARE_DESCRIPTION,
    )
    command(
        "report",
        _add_report_arguments,
        cmd_report,
        help="re-render the figure and table from a results JSON, or merge the shares of a compare",
    )
    command(
        "push",
        _add_push_arguments,
        cmd_push,
        help="upload a finished run's adapter (or model) and its model card to the Hugging Face Hub",
        description="Upload final/ of a finished run with a model card (README.md) to REPO_ID. The token comes "
        "from HF_TOKEN or `hf auth login`; t5peft never writes it anywhere.",
    )
    command(
        "plan-memory",
        _add_plan_memory_arguments,
        cmd_plan_memory,
        help="memory per device of a training run, before anything is loaded",
        description=PLAN_MEMORY_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    return parser


def invoked_command(argv: Sequence[str]) -> str | None:
    """The subcommand that ``argv`` names: its first word that is not an option (no global option takes a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _resume_command(argv: list[str]) -> str:
    words = ["t5peft", *argv]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(commands=[invoked_command(argv) or ""])
    args = parser.parse_args(argv, namespace=argparse.Namespace(argv=argv))
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    from .engine.settings import TrainInterrupted  # torch-free

    try:
        return args.func(args)
    except TrainInterrupted as err:  # Ctrl-C in train or pretrain: where it stopped, and the command that continues
        if err.quiet:
            return 130
        print(f"t5peft {args.command}: {err}", file=sys.stderr)
        again = _resume_command(argv) if err.resumable else shlex.join(["t5peft", *argv])
        print(f"to continue: {again}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"t5peft {args.command}: interrupted", file=sys.stderr)
        return 130
    except (T5PeftError, OSError) as err:  # the user's input, files or machine: one line, no traceback
        message = str(err) if isinstance(err, T5PeftError) else described(err)
        print(f"t5peft {args.command}: error: {named_as_typed(message, args.flags)}", file=sys.stderr)
        return 2
    except Exception as err:
        print(f"t5peft {args.command}: internal error (a bug in t5peft): {type(err).__name__}: {err}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        else:
            print("run again with -v to see the traceback, and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
