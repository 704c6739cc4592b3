"""Every method through the compiled training step: ``torch.compile`` (one graph) and, on CUDA, CUDA graphs + bf16.

For each method, on a tiny random-init T5 (``configs/models/t5-tiny``, no data files needed: a fixed batch of
random token ids), with every dropout at zero (the model's and each method's ``*dropout`` option) so that the
compiled and the eager computation can be compared:

* the eager loss of the first batch (the same autocast setting), then ``--steps`` steps of
  :class:`t5peft.train.step.TrainStep` with ``compile=True`` (on CUDA also captured as a CUDA graph);
* checks: every step's loss is finite, the first compiled step's loss equals the eager loss within
  ``--tolerance`` (relative), every trainable tensor moved, every frozen parameter and every buffer is
  bit-identical to before (AdaLoRA's rank mask excepted: it is its allocation's output).

It prints one line per method and writes JSON (``--output``) with the machine, the date and what it measured.
Exit status 1 if any check failed. Run from the repository root::

    python benchmarks/compiled_methods.py                       # all registered methods
    python benchmarks/compiled_methods.py --methods dora,vera --output compiled.json
    python benchmarks/compiled_methods.py --methods ptuning:encoder_reparameterization_type=LSTM  # with options
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from t5peft import T5Config, T5ForConditionalGeneration, apply_method  # noqa: E402
from t5peft.data.text2text import Batch  # noqa: E402
from t5peft.methods import get_method_class, method_names  # noqa: E402
from t5peft.train.step import TrainStep, make_loss_fn  # noqa: E402

TINY = REPO / "configs" / "models" / "t5-tiny" / "config.json"


def no_dropout_options(name: str) -> dict[str, float]:
    return {o: 0.0 for o in get_method_class(name).config_class.option_names() if o.endswith("dropout")}


def fixed_batch(device: torch.device, batch: int = 8, length: int = 32) -> Batch:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, 32000, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1::2, length // 2 :] = 0
    labels = torch.randint(2, 32000, (batch, 2), generator=generator)
    return Batch.from_tensors(input_ids.to(device), attention_mask.to(device), labels.to(device))


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value:key=value`` (values read as JSON where they parse)."""
    name, *pairs = spec.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def check_method(spec: str, device: torch.device, steps: int, tolerance: float) -> dict[str, Any]:
    name, options = parse_spec(spec)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config.from_json_file(TINY))
    model.set_dropout(0.0)
    model = apply_method(model.to(device), name, **(no_dropout_options(name) | options)).train()
    bf16 = device.type == "cuda"
    batch = fixed_batch(device)
    tensors = (batch.input_ids, batch.attention_mask, batch.labels)
    with torch.no_grad():
        eager = float(make_loss_fn(model, device, bf16)(*tensors)[0])
    method = model.peft.method
    optimizer = torch.optim.AdamW(method.param_groups(model, method.default_lr, 0.0))
    method.on_train_begin(model, steps)
    trainable = set(model.peft.trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if not n.endswith("rank_mask")}
    runner = TrainStep(model, optimizer, total_steps=steps, bf16=bf16, compile=True)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        runner(batch)
        losses.append(runner.read_loss()[0])
        runner.reset_loss()
    seconds = time.perf_counter() - start
    params = dict(model.named_parameters())
    still = sorted(n for n in trainable if torch.equal(params[n], before[n]))
    changed = sorted(n for n in before if n not in trainable and not torch.equal(params[n], before[n]))
    changed += sorted(n for n, b in model.named_buffers() if n in buffers and not torch.equal(b, buffers[n]))
    relative = abs(losses[0] - eager) / abs(eager)
    problems = []
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        problems.append("non-finite loss")
    if relative > tolerance:
        problems.append(f"first compiled loss {losses[0]:.6f} vs eager {eager:.6f}")
    if still:
        problems.append(f"trainable tensors that did not move: {still[:3]}")
    if changed:
        problems.append(f"frozen tensors that changed: {changed[:3]}")
    return {
        "method": spec,
        "ok": not problems,
        "problems": problems,
        "eager_loss": eager,
        "losses": losses,
        "first_loss_relative_difference": relative,
        "cuda_graph": runner.cuda_graph,
        "bf16": bf16,
        "seconds_including_compile": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=2e-2, help="relative, compiled vs eager first loss")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = []
    for name in args.methods.split(","):
        try:
            result = check_method(name, device, args.steps, args.tolerance)
        except Exception as err:  # one method's failure must not hide the others'
            result = {"method": name, "ok": False, "problems": [f"{type(err).__name__}: {err}"]}
            traceback.print_exc()
        results.append(result)
        extra = f"rel diff {result['first_loss_relative_difference']:.2e}" if "losses" in result else ""
        print(f"{name:24s} {'ok' if result['ok'] else 'FAILED'} {extra} {'; '.join(result['problems'])}", flush=True)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": str(TINY.relative_to(REPO)),
        "steps": args.steps,
        "results": results,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
