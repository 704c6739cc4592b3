"""The frozen base stored in fp32 / bf16 / int8 / NF4: its bytes for the big T5s, and LoRA vs QLoRA step time.

1. **Memory of the base** for t5-small, t5-base, t5-large and flan-t5-xl (their published architectures, written
   below), at fp32, bf16, int8 and NF4 (the rest fp32 or bf16), counted on the meta device with
   ``t5peft.model.storage.planned_bytes`` (shapes only: nothing is allocated). For t5-small and t5-base the count
   is checked against the storage torchao actually allocates on the CPU (random weights of their shapes,
   quantized, every distinct untyped storage's ``nbytes`` summed).
2. **Step time** of LoRA (r 8 on q and v) on the fp32 base, the bf16 base, the int8 base and the NF4 base
   (QLoRA), t5-small dimensions, one batch of real IMDb reviews, the training loop's step (eager, fp32 compute),
   the four sides interleaved in one process, median and minimum of the timed steps.

Run from the repository root (needs the ``quant`` extra and the shared folder)::

    python benchmarks/quantized_base.py --output docs/benchmarks/quantized_base_cpu.json
    python benchmarks/quantized_base.py --repeats 2 --batch-size 4     # a quick check of the script
    python benchmarks/quantized_base.py --memory-only --output docs/benchmarks/quantized_base_memory_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from t5peft import T5Config, T5ForConditionalGeneration, apply_method, load_tokenizer
from t5peft.data.sources import LabeledTexts
from t5peft.data.text2text import Batch, TaskFormat, collate, encode_split
from t5peft.engine.step import TrainStep
from t5peft.model.storage import is_quantized, planned_bytes, store_frozen

# Published architectures (the config.json of each Hub checkpoint; architecture only)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, feed_forward_proj="relu"),
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, feed_forward_proj="relu"),
    "t5-large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16, feed_forward_proj="relu"),
    "flan-t5-xl": dict(
        d_model=2048,
        d_kv=64,
        d_ff=5120,
        num_layers=24,
        num_heads=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
}
STORAGES = [  # (label, base_dtype, quantize)
    ("fp32", "fp32", "none"),
    ("bf16", "bf16", "none"),
    ("int8 (rest fp32)", "fp32", "int8"),
    ("nf4 (rest fp32)", "fp32", "nf4"),
    ("nf4 (rest bf16)", "bf16", "nf4"),
]
CHECKED_ON_CPU = ("t5-small", "t5-base")  # counted bytes against what torchao allocates, random weights

SIDES = [("lora fp32 base", "fp32", "none"), ("lora bf16 base", "bf16", "none")]
SIDES += [("lora int8 base", "fp32", "int8"), ("qlora (nf4 base)", "fp32", "nf4")]


def config_of(name: str) -> T5Config:
    return T5Config(vocab_size=32128, num_decoder_layers=ARCHITECTURES[name]["num_layers"], **ARCHITECTURES[name])


def frozen(model: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def allocated_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct storage behind the model's parameters (a quantized tensor's inner tensors)."""
    seen: dict[int, int] = {}

    def visit(tensor: torch.Tensor) -> None:
        names = tensor.__tensor_flatten__()[0] if is_quantized(tensor) else None
        if names is None:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return
        for name in names:
            visit(getattr(tensor, name))

    for param in model.parameters():
        visit(param)
    return sum(seen.values())


def memory_table() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in ARCHITECTURES:
        with torch.device("meta"):
            meta = frozen(T5ForConditionalGeneration(config_of(name)))
        table[name] = {
            "parameters": sum(p.numel() for p in meta.parameters()),
            "bytes": {label: planned_bytes(meta, dtype, scheme) for label, dtype, scheme in STORAGES},
        }
    for name in CHECKED_ON_CPU:
        torch.manual_seed(0)
        model = frozen(T5ForConditionalGeneration(config_of(name)))
        checked = {}
        for label, dtype, scheme in STORAGES:
            stored = copy.deepcopy(model)
            store_frozen(stored, dtype, scheme)
            checked[label] = {"counted": table[name]["bytes"][label], "allocated": allocated_bytes(stored)}
            del stored
        table[name]["checked_on_cpu"] = checked
    return table


def imdb_batch(shared: Path, size: int, length: int, seed: int) -> Batch:
    path = shared / "data" / "imdb" / "plain_text" / "train-00000-of-00001.parquet"
    table = pq.read_table(path, columns=["text", "label"])
    rows = sorted(np.random.default_rng(seed).choice(table.num_rows, size=size, replace=False).tolist())
    texts = table.column("text").take(rows).to_pylist()
    labels = [int(label) for label in table.column("label").take(rows).to_pylist()]
    tokenizer = load_tokenizer(shared / "models" / "t5-small")
    split = encode_split(LabeledTexts(texts, labels, str(path)), tokenizer, TaskFormat(max_source_length=length))
    return collate(split, range(size), tokenizer.pad_token_id)


def build_side(base: T5ForConditionalGeneration, dtype: str, scheme: str) -> TrainStep:
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    apply_method(model, "lora", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q", "v"])
    store_frozen(model, dtype, scheme)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    return TrainStep(model, optimizer, None, total_steps=10**6, max_grad_norm=1.0)


def step_times(shared: Path, batch_size: int, length: int, warmup: int, repeats: int) -> dict[str, Any]:
    batch = imdb_batch(shared, batch_size, length, seed=0)
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(config_of("t5-small"))
    sides = {label: build_side(base, dtype, scheme) for label, dtype, scheme in SIDES}
    times: dict[str, list[float]] = {label: [] for label in sides}
    for round_ in range(warmup + repeats):
        for label, step in sides.items():  # interleaved: drift of a shared machine falls on every side
            start = time.perf_counter()
            step(batch)
            step.read_loss()
            if round_ >= warmup:
                times[label].append(1000 * (time.perf_counter() - start))
    return {
        label: {
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "steps": len(values),
            "loss_after": sides[label].read_loss()[0] / sides[label].read_loss()[1],
        }
        for label, values in times.items()
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"CPU: {model}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=os.environ.get("T5PEFT_SHARED", "../shared"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-source-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="write the JSON here")
    parser.add_argument("--memory-only", action="store_true", help="the memory table only, no step times")
    args = parser.parse_args()
    import torchao

    results = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "settings": vars(args),
        "memory": memory_table(),
    }
    if not args.memory_only:
        results["step_time"] = step_times(
            Path(args.shared), args.batch_size, args.max_source_length, args.warmup, args.repeats
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
