"""``t5peft plan-memory``: the per-device memory of a run, from the meta device, against measured peaks on the CPU.

What is compared: the growth of the resident set during a steady-state training step (the second: weights and AdamW
state already resident, gradients freed by the previous step) against the plan's ``step_peak`` (see
``ActivationTrace.step_peak``), at t5-small's real dimensions with random weights, float32 compute. Measured on the
2-core dev machine (2026-12-03), plan / measured: 0.91 to 1.08 in every case the README lists (t5-small and t5-base,
fp32, bf16 and quantized bases); the cases here, at small shapes (each step runs in a fresh process): LoRA 0.994,
full without checkpointing 0.998 (its peak is the embedding's gradient), prefix with checkpointing 1.08 (an encoder
run without gradient), LoRA + checkpointing on a bf16 + NF4 base 1.05. The issue's bound, 15 %, is the tolerance.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from memory_probe import measure_peak
from t5peft.cli import main
from t5peft.engine.memory_plan import (
    MemoryPlanError,
    PlanSettings,
    meta_model,
    parse_size,
    plan_memory,
    stored_transients,
)
from t5peft.model.family import family_config
from t5peft.model.storage import NF4_DEQUANTIZE_COPIES, planned_bytes

TOLERANCE = 0.15

STEP = """
import torch
from t5peft import T5ForConditionalGeneration, apply_method
from t5peft.data.text2text import Batch
from t5peft.engine.step import TrainStep
from t5peft.model.family import family_config

from t5peft.model.storage import store_frozen

torch.manual_seed(0)
model = apply_method(T5ForConditionalGeneration(family_config("t5-small")), {method!r}).train()
store_frozen(model, {base_dtype!r}, {quantize!r})
model.set_activation_checkpointing({checkpointing})
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
step = TrainStep(model, optimizer, total_steps=10)
generator = torch.Generator().manual_seed(0)
ids = torch.randint(2, 32000, ({batch}, {source}), generator=generator)
labels = torch.randint(2, 32000, ({batch}, {target}), generator=generator)
batch = Batch.from_tensors(ids, torch.ones_like(ids), labels)
step(batch)  # AdamW's state, and what a first step initialises once
"""


@pytest.mark.parametrize(
    ("method", "checkpointing", "batch", "source", "base_dtype", "quantize"),
    [
        ("lora", False, 4, 64, "fp32", "none"),
        ("full", False, 2, 64, "fp32", "none"),  # its peak: the embedding's gradient added, encoder still saved
        # with -m slow (12 s and 28 s here): the encoder without gradient; the LM head's float32 copy and NF4's
        # dequantization
        pytest.param("prefix", True, 4, 64, "fp32", "none", marks=pytest.mark.slow),
        pytest.param("lora", True, 4, 64, "bf16", "nf4", marks=pytest.mark.slow),
    ],
)
def test_plan_is_within_15_percent_of_the_measured_peak_at_t5_small(
    method, checkpointing, batch, source, base_dtype, quantize
):
    shape = dict(batch=batch, source=source, target=4)
    storage = dict(base_dtype=base_dtype, quantize=quantize)
    code = STEP.format(method=method, checkpointing=checkpointing, **shape, **storage)
    measured = measure_peak(code, "step(batch)", timeout=600)
    settings = PlanSettings(
        family_config("t5-small"),
        "t5-small",
        method,
        batch_size=shape["batch"],
        source_length=shape["source"],
        target_length=shape["target"],
        activation_checkpointing=checkpointing,
        **storage,
    )
    planned = plan_memory(settings).step_peak
    ratio = planned / measured["growth_bytes"]
    assert abs(ratio - 1) <= TOLERANCE, (ratio, planned, measured)


def test_counts_and_strategies():
    config = family_config("t5-base")
    ddp = plan_memory(PlanSettings(config, "t5-base", "full", batch_size=8, world_size=2))
    assert ddp.parameters == ddp.trainable == 222_903_552
    assert ddp.weights == ddp.gradients == 4 * ddp.parameters and ddp.optimizer == 8 * ddp.parameters
    assert ddp.gradient_buckets == ddp.gradients
    fsdp = plan_memory(PlanSettings(config, "t5-base", "full", batch_size=8, world_size=2, strategy="fsdp"))
    assert fsdp.weights == ddp.weights // 2 and fsdp.gradient_buckets == 0 and fsdp.gathered_blocks > 0
    lora = plan_memory(PlanSettings(config, "t5-base", "lora", batch_size=8, base_dtype="bf16"))
    kept = ("layer_norm", "relative_attention_bias")  # a bf16 base keeps its norms and position tables in float32
    norms = sum(p.numel() for name, p in meta_model(lora.settings).named_parameters() if any(k in name for k in kept))
    assert lora.weights == 2 * (lora.parameters - lora.trainable - norms) + 4 * (lora.trainable + norms)
    nf4 = plan_memory(PlanSettings(config, "t5-base", "lora", batch_size=8, base_dtype="bf16", quantize="nf4"))
    assert nf4.weights == planned_bytes(meta_model(nf4.settings), "bf16", "nf4") + 4 * nf4.trainable
    assert nf4.weights < lora.weights
    # the dense copies while computing: the bf16 LM head (tied: the embedding) in float32, NF4's wi dequantized
    transients = stored_transients(meta_model(nf4.settings), nf4.settings)
    assert transients.head == 4 * config.vocab_size * config.d_model
    assert transients.block == NF4_DEQUANTIZE_COPIES * 4 * config.d_model * config.d_ff
    assert stored_transients(meta_model(lora.settings), dataclasses.replace(lora.settings, base_dtype="fp32")).head == 0
    checkpointed = plan_memory(PlanSettings(config, "t5-base", "lora", batch_size=8, activation_checkpointing=True))
    assert checkpointed.activations < lora.activations / 3
    assert checkpointed.activations_other == lora.activations


def test_cli_prints_the_plan_and_the_verdict(capsys):
    argv = ["plan-memory", "--model", "t5-11b", "--batch-size", "64", "--base-dtype", "bf16", "--strategy", "fsdp"]
    argv += ["--world-size", "8", "--activation-checkpointing", "--device-memory", "80GB"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "11,3" in out and "fits in 80 GB" in out
    assert main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["fits"] is True and record["world_size"] == 8 and record["bytes"]["total"] < 80e9


@pytest.mark.parametrize(
    "extra",
    [
        ["--model", "t5-huge"],
        ["--model", "t5-small", "--batch-size", "3", "--world-size", "2"],
        ["--model", "t5-small", "--base-dtype", "fp16"],
        ["--model", "t5-small", "--method", "full", "--quantize", "nf4"],
        ["--model", "t5-small", "--device-memory", "lots"],
        ["--model", "t5-small", "--method", "nope"],
    ],
)
def test_bad_input_is_one_line_exit_2(extra, capsys):
    try:
        code = main(["plan-memory", *extra])
    except SystemExit as stop:  # argparse's own errors (an unknown choice)
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("t5peft plan-memory: error:")


def test_sizes():
    assert parse_size("80GB") == 80 * 10**9 and parse_size("24GiB") == 24 * 2**30 and parse_size("512") == 512
    with pytest.raises(MemoryPlanError):
        parse_size("12 parsecs")
