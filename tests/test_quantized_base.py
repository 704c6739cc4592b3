"""The frozen base stored in bf16 or quantized (NF4 / int8 through torchao): ``model.storage`` and
``engine.precision``, under LoRA, in training runs on real reviews, resume, the adapter folder and the command line.

The quantized tests use :data:`QUANT_T5` (d_model 128, d_kv 32, 4 heads, d_ff 256): NF4 needs weight counts that are
multiples of 64 x 256 (blocks of 64, their scales quantized in groups of 256), which the 64-wide tiny T5 does not have.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import as_batch, logits, perturb, random_batch
from t5peft import T5Config, T5ForConditionalGeneration
from t5peft.cli import main
from t5peft.engine import step as step_module
from t5peft.engine.precision import store_base
from t5peft.engine.settings import BASE_DTYPES, QUANTIZE_SCHEMES
from t5peft.engine.step import TrainStep, make_loss_fn
from t5peft.experiments.config import ExperimentError, parse_experiment
from t5peft.experiments.results import base_precision, counted_memory
from t5peft.methods import (
    apply_method,
    count_parameters,
    get_method_class,
    load_adapter,
    merge_method,
    method_names,
    save_trained,
)
from t5peft.methods.base import MethodConfigError
from t5peft.model import storage
from t5peft.model.storage import base_bytes, dense, is_quantized, store_frozen
from t5peft.model.t5 import load_pretrained
from t5peft.train.loop import Run, train
from t5peft.train.runs import load_run
from t5peft.train.settings import TrainError
from tiny_runs import tiny_run_config

pytest.importorskip("torchao")

QUANT_T5 = dict(vocab_size=1000, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4)
QUANTIZED = ("q", "k", "v", "o", "wi")


def quant_model(seed: int = 0, **overrides) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**{**QUANT_T5, **overrides}))


def lora_model(seed: int = 0, **options) -> T5ForConditionalGeneration:
    """A LoRA model with random B (so that the update and its gradients are not zero) and no dropout anywhere."""
    model = quant_model(seed)
    model.set_dropout(0.0)
    torch.manual_seed(seed + 1)
    apply_method(model, "lora", lora_dropout=0.0, **options)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def dequantized_copy(model: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
    """The same model with every stored weight replaced by its dequantized float32 value, as a plain parameter."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        for key, param in list(module._parameters.items()):
            if param is not None and not param.requires_grad:
                module._parameters[key] = torch.nn.Parameter(dense(param, torch.float32), requires_grad=False)
        if isinstance(module, storage.Embedding):
            module.compute_dtype = None
    return copied


def test_settings_choices_match_the_storage():
    assert tuple(storage.BASE_DTYPES) == BASE_DTYPES
    assert QUANTIZE_SCHEMES == storage.QUANTIZE_SCHEMES


# ---------------------------------------------------------------------------------------------------------
# bf16 base


def test_bf16_base_keeps_trained_parameters_and_adamw_in_float32():
    model = lora_model(target_modules=["q", "v"])
    fp32_bytes = base_bytes(model)
    store_frozen(model, "bf16")
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    matrices = {n for n in frozen if n.rsplit(".", 2)[-2] in storage.LOW_PRECISION_LEAVES}
    assert matrices and all(frozen[n].dtype == torch.bfloat16 for n in matrices)
    assert all(frozen[n].dtype == torch.float32 for n in set(frozen) - matrices)  # norms, relative bias
    # the norms and relative bias kept in float32 are 2,176 numbers of 1,046,400: the base is 0.5 + 0.002 of fp32
    assert base_bytes(model) / fp32_bytes == pytest.approx(0.5, abs=0.003)
    optimizer = torch.optim.AdamW(trained.values(), lr=1e-2)
    batch = random_batch(0, QUANT_T5["vocab_size"])
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    states = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    assert states and {t.dtype for t in states} == {torch.float32}


# ---------------------------------------------------------------------------------------------------------
# Quantized base


def test_nf4_round_trip_error_is_within_the_nf4_bound():
    """Each weight of a T5 feed-forward matrix comes back from NF4 within half the largest gap between two NF4
    code values times its block's absmax, plus what double quantization changes in the scale.

    Derivation: a block of 64 weights is divided by its absmax ``s`` and rounded to the nearest of the 16 NF4 values
    ``c`` in [-1, 1] (error at most ``gap / 2`` there); it is dequantized with the stored scale ``s'`` (``s`` kept
    as int8 per group of 256 blocks, plus a float factor per group and a mean), so
    ``|x - c s'| <= |x - c s| + |c| |s - s'| <= s gap / 2 + |s - s'|``. The largest NF4 gap is 0.3038 (between -1
    and -0.6962): 0.1519 of the absmax. Measured on this tensor: 0.1536 of the absmax at most, above 0.1519 only
    through the scale's own rounding (``s' / s`` within 0.9965-1.0032)."""
    model = quant_model()
    for param in model.parameters():
        param.requires_grad_(False)
    weight = model.encoder.block[0].layer[1].DenseReluDense.wi.weight.detach().clone()
    store_frozen(model, quantize="nf4")
    stored = model.encoder.block[0].layer[1].DenseReluDense.wi.weight
    assert is_quantized(stored)
    codes = stored.nf4.sort().values
    half_gap = ((codes[1:] - codes[:-1]).max() / 2).item()
    assert half_gap == pytest.approx(0.1519, abs=1e-4)
    scales = stored.dequantize_scalers(stored.quantized_scalers, stored.quantization_factor, 256)
    blocks, back = weight.reshape(-1, 64), dense(stored, torch.float32).reshape(-1, 64)
    absmax = blocks.abs().max(dim=1).values
    bound = absmax * half_gap + (absmax - scales).abs()
    error = (blocks - back).abs().max(dim=1).values
    assert torch.all(error <= bound * (1 + 1e-6) + 1e-7)
    assert (error / absmax).max() > 0.1  # it was quantized: the error comes near the bound


@pytest.mark.parametrize(
    ("base_dtype", "quantize", "low", "high"),
    [
        ("bf16", "none", 5e-4, 0.006),
        ("fp32", "int8", 2e-3, 0.02),
        ("fp32", "nf4", 0.03, 0.2),
        ("bf16", "nf4", 0.03, 0.2),
    ],
)
def test_logits_of_a_stored_base_stay_within_the_measured_tolerance(base_dtype, quantize, low, high):
    """Largest logit difference / largest |logit|, random-init QUANT_T5, seeds 0-4, measured 2026-12-03 on this
    2-core Xeon: bf16 0.0023-0.0031, int8 0.0068-0.0105, nf4 0.101-0.129, bf16 + nf4 0.089-0.122. The bounds are
    about twice the largest measured value, and the lower ones say each storage changed the weights at all."""
    for seed in (0, 1):
        model = quant_model(seed)
        batch = random_batch(seed, QUANT_T5["vocab_size"])
        reference = logits(model, batch)
        for param in model.parameters():
            param.requires_grad_(False)
        store_frozen(model, base_dtype, quantize)
        relative = ((logits(model, batch) - reference).abs().max() / reference.abs().max()).item()
        assert low < relative < high


def test_only_q_k_v_o_wi_are_quantized_by_default_and_wo_on_request():
    model = lora_model(target_modules=["q", "v"])
    before = count_parameters(model)
    counts = store_frozen(model, quantize="nf4")
    assert count_parameters(model) == before  # a quantized weight still counts its weights
    quantized = {n.rsplit(".", 2)[-2] for n, p in model.named_parameters() if is_quantized(p)}
    assert quantized == set(QUANTIZED)
    assert counts["quantized"] == sum(p.numel() for p in model.parameters() if is_quantized(p))
    assert not is_quantized(model.shared.weight) and model.shared.weight.dtype == torch.float32
    with_wo = quant_model()
    for param in with_wo.parameters():
        param.requires_grad_(False)
    store_frozen(with_wo, quantize="int8", quantize_wo=True)
    assert {n.rsplit(".", 2)[-2] for n, p in with_wo.named_parameters() if is_quantized(p)} == {*QUANTIZED, "wo"}


@pytest.mark.parametrize(("base_dtype", "quantize"), [("fp32", "nf4"), ("bf16", "nf4"), ("fp32", "int8")])
def test_lora_gradients_on_a_quantized_base_equal_those_on_its_dequantized_float32_copy(base_dtype, quantize):
    model = lora_model(target_modules=["q", "k", "v", "o", "wi", "wo"])
    store_frozen(model, base_dtype, quantize)
    reference = dequantized_copy(model)
    batch = random_batch(0, QUANT_T5["vocab_size"])
    for m in (model, reference):
        m(**batch).loss.backward()
    grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_quantized_base_takes_its_bytes_from_the_quantized_tensors():
    """NF4: half a byte per weight + one int8 scale per 64 + a float32 factor per 64 x 256 (+ the mean and the
    16-value table): 0.5159 bytes per weight; int8: 1 byte + a float32 scale and an int8 zero point per row."""
    model = quant_model()
    for param in model.parameters():
        param.requires_grad_(False)
    stored = model.encoder.block[0].layer[0].SelfAttention.q.weight
    n, rows = stored.numel(), stored.shape[0]
    store_frozen(model, quantize="nf4")
    q = model.encoder.block[0].layer[0].SelfAttention.q.weight
    assert storage.tensor_bytes(q) == n // 2 + n // 64 + 4 * (n // 64 // 256) + 4 + 16 * 4
    int8 = quant_model()
    for param in int8.parameters():
        param.requires_grad_(False)
    store_frozen(int8, quantize="int8")
    assert storage.tensor_bytes(int8.encoder.block[0].layer[0].SelfAttention.q.weight) == n + rows * (4 + 1)


@pytest.mark.parametrize("base_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("quantize", ["none", "nf4", "int8"])
def test_bytes_counted_on_the_meta_device_equal_the_stored_tensors(base_dtype, quantize):
    """The count the README's memory table comes from (shapes only, on the meta device) against the bytes of the
    tensors store_frozen makes, LoRA on q and v trained (float32) and everything else frozen."""
    with torch.device("meta"):
        meta = T5ForConditionalGeneration(T5Config(**QUANT_T5))
    apply_method(meta, "lora", target_modules=["q", "v"])
    model = lora_model(target_modules=["q", "v"])
    store_frozen(model, base_dtype, quantize)
    assert storage.planned_bytes(meta, base_dtype, quantize) == base_bytes(model)


def test_a_trained_weight_of_another_dtype_is_an_error_not_a_silent_missing_gradient():
    layer = storage.Linear(4, 3, bias=False).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="a trained torch.bfloat16 weight met a torch.float32 input"):
        layer(torch.ones(2, 4))
    layer.weight.requires_grad_(False)
    assert layer(torch.ones(2, 4)).dtype == torch.float32


def test_merging_into_a_quantized_base_is_refused():
    model = lora_model()
    store_frozen(model, quantize="nf4")
    with pytest.raises(MethodConfigError, match="the base is quantized"):
        merge_method(model)


def test_store_base_refuses_full_fine_tuning_and_other_devices():
    model = quant_model()
    apply_method(model, "full")
    with pytest.raises(TrainError, match="trains base weights"):
        store_base(model, "bf16", "none", torch.device("cpu"), TrainError)
    with pytest.raises(TrainError, match=r"--quantize nf4: torchao's quantized weights run on cpu/cuda, not on mps"):
        store_base(lora_model(), "fp32", "nf4", torch.device("mps"), TrainError)
    with pytest.raises(TrainError, match="--quantize nf4: .* not a multiple of 16384"):
        tiny = T5ForConditionalGeneration(T5Config(**{**QUANT_T5, "d_model": 64, "d_kv": 16}))
        apply_method(tiny, "lora")
        store_base(tiny, "fp32", "nf4", torch.device("cpu"), TrainError)


# ---------------------------------------------------------------------------------------------------------
# Training runs on real reviews


@pytest.fixture
def quant_config_dir(tmp_path: Path, t5_small_dir: Path) -> Path:
    """QUANT_T5's dimensions with t5-small's vocabulary (random weights: --init random reads only config.json)."""
    config = json.loads((t5_small_dir / "config.json").read_text())
    config.update({k: v for k, v in QUANT_T5.items() if k != "vocab_size"})
    folder = tmp_path / "quant-t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def quant_run(imdb_dir, t5_small_dir, model_dir, output, **overrides):
    settings = dict(
        model=str(model_dir),
        method="lora",
        quantize="nf4",
        train_size=240,
        validation_size=16,
        test_size=16,
        batch_size=8,
        epochs=1,
        max_source_length=64,
        lr=5e-3,
        dropout=0.0,
        logs_per_two_epochs=20,
    )
    return tiny_run_config(imdb_dir, t5_small_dir, output, **{**settings, **overrides})


def test_lora_on_an_nf4_base_learns_real_reviews_in_30_steps(imdb_dir, t5_small_dir, quant_config_dir, tmp_path):
    """240 reviews, batch 8: 30 steps, a log point every 3. Measured (2026-12-03, this machine): the mean training
    loss of steps 1-3 is 10.18, that of steps 28-30 2.90 (3.5x less); the test asks for 2x."""
    results = train(quant_run(imdb_dir, t5_small_dir, quant_config_dir, tmp_path / "run"))
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert results["training"]["steps"] == 30 and len(losses) == 10
    assert losses[-1] < losses[0] / 2
    record = results["base_storage"]
    assert record["quantize"] == "nf4" and record["base_dtype"] == "fp32"
    assert record["quantized_weights"] == 6 * 4 * 128 * 128 + 4 * 128 * 256  # 6 attentions, 4 FFNs
    saved = json.loads((tmp_path / "run" / "final" / "base_quantization.json").read_text())
    assert saved["quantize"] == "nf4" and saved["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert saved["quantized_modules"] == sorted(QUANTIZED)
    assert saved["quantization_config"]["llm_int8_skip_modules"] == ["lm_head", "shared", "wo"]
    reloaded = load_run(tmp_path / "run").model  # evaluate / predict meet the adapter with the base it trained on
    assert sum(p.numel() for p in reloaded.parameters() if is_quantized(p)) == record["quantized_weights"]


def test_an_nf4_run_resumed_after_its_first_epoch_ends_bit_identical(
    imdb_dir, t5_small_dir, quant_config_dir, tmp_path
):
    """The checkpoint holds only the LoRA tensors; the resumed run re-creates the NF4 base from the same weights."""
    overrides = dict(train_size=48, epochs=2, logs_per_two_epochs=3)
    whole = train(quant_run(imdb_dir, t5_small_dir, quant_config_dir, tmp_path / "whole", **overrides))

    class StopAfterFirstEpoch(Run):
        def pause_after(self, step, train_seconds):
            pause = super().pause_after(step, train_seconds)
            if step == self.steps_per_epoch:
                return type(pause)(log=pause.log, checkpoint=True, stop="test: stopped after epoch 1")
            return pause

    cfg = quant_run(imdb_dir, t5_small_dir, quant_config_dir, tmp_path / "split", **overrides)
    first = StopAfterFirstEpoch.start(cfg)
    first.resume_if_asked()
    first.write_settings()
    first.fit()
    assert first.position.global_step == first.steps_per_epoch
    first.lock.release()  # as run() does at its end
    cfg.resume = True
    resumed = train(cfg)
    a = load_file(tmp_path / "whole" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole["test"]["accuracy"] == resumed["test"]["accuracy"]


def test_bf16_base_run_counts_half_the_frozen_bytes(imdb_dir, t5_small_dir, quant_config_dir, tmp_path):
    sizes = dict(quantize="none", train_size=16, logs_per_two_epochs=2)
    fp32 = train(quant_run(imdb_dir, t5_small_dir, quant_config_dir, tmp_path / "fp32", **sizes))
    bf16 = train(quant_run(imdb_dir, t5_small_dir, quant_config_dir, tmp_path / "bf16", base_dtype="bf16", **sizes))
    ratio = bf16["base_storage"]["frozen_bytes"] / fp32["base_storage"]["frozen_bytes"]
    assert ratio == pytest.approx(0.5, abs=0.002)
    assert bf16["parameters"] == fp32["parameters"]


# ---------------------------------------------------------------------------------------------------------
# The command line


def test_full_with_a_quantized_base_is_one_line_and_writes_nothing(imdb_dir, tmp_path, capsys):
    out = tmp_path / "run"
    for flags, message in (
        (["--method", "full", "--quantize", "nf4"], "--quantize nf4 stores the frozen base, but method 'full'"),
        (["--method", "full", "--base-dtype", "bf16"], "--base-dtype bf16 stores the frozen base"),
    ):
        assert main(["train", "--output", str(out), "--data", str(imdb_dir), *flags]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert not out.exists()
    with pytest.raises(SystemExit) as exited:
        main(["train", "--output", str(out), "--quantize", "nf8"])
    assert exited.value.code == 2 and "--quantize: invalid choice: 'nf8'" in capsys.readouterr().err
    assert not out.exists()


def test_help_and_methods_document_the_base_storage():
    helped = subprocess.run(
        [sys.executable, "-m", "t5peft", "train", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--quantize {none,nf4,int8}" in helped.stdout and "--base-dtype {fp32,bf16}" in helped.stdout
    methods = subprocess.run(
        [sys.executable, "-m", "t5peft", "methods"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--quantize nf4|int8" in methods.stdout and "--base-dtype bf16" in methods.stdout


# ---------------------------------------------------------------------------------------------------------
# Experiment files, results and the table


def test_experiment_rows_on_a_stored_base(tmp_path):
    values = {
        "experiment": {"methods": ["lora", "lora@nf4", "ia3"], "seeds": [0]},
        "methods": {"ia3": {"base_dtype": "bf16"}, "lora@nf4": {"lr": 1e-3}},
    }
    experiment = parse_experiment(values, "x.toml")
    rows = {m.name: m for m in experiment.methods}
    assert list(rows) == ["lora", "lora@nf4", "ia3@bf16"]  # [methods.ia3] base_dtype = "bf16" names its row
    qlora = experiment.run_config(rows["lora@nf4"], 0, tmp_path)
    assert (qlora.method, qlora.quantize, qlora.base_dtype, qlora.lr) == ("lora", "nf4", "fp32", 1e-3)
    assert experiment.run_config(rows["ia3@bf16"], 0, tmp_path).base_dtype == "bf16"
    assert [r.name for r in experiment.runs()] == ["lora-seed0", "lora_nf4-seed0", "ia3_bf16-seed0"]
    with pytest.raises(ExperimentError, match=r"x.toml \[experiment\] methods: 'lora@nf5': unknown base storage"):
        parse_experiment({"experiment": {"methods": ["lora@nf5"]}}, "x.toml")
    with pytest.raises(ExperimentError, match=r"\[methods.lora@nf4\]: quantize = 'int8' contradicts the row name"):
        parse_experiment({"experiment": {"methods": ["lora@nf4"]}, "methods": {"lora@nf4": {"quantize": "int8"}}}, "x")
    with pytest.raises(ExperimentError, match="a second 'lora@nf4' row"):
        parse_experiment(
            {"experiment": {"methods": ["lora@nf4", "lora"]}, "methods": {"lora": {"quantize": "nf4"}}}, "x"
        )
    with pytest.raises(ExperimentError, match="method 'full' trains every weight"):
        parse_experiment({"experiment": {"methods": ["full@nf4"]}}, "x.toml")


def test_counted_memory_takes_a_stored_base_at_its_stored_bytes():
    parameters = {"trainable": 1000, "total": 101_000}
    fp32 = counted_memory(parameters)
    assert fp32["weights"] == 4 * 101_000
    stored = {"base_dtype": "fp32", "quantize": "nf4", "frozen_bytes": 60_000}
    nf4 = counted_memory(parameters, stored)
    assert nf4["weights"] == 60_000 + 4 * 1000 and nf4["training_state"] == fp32["training_state"]
    assert counted_memory(parameters, {**stored, "quantize": "none", "frozen_bytes": 400_000}) == fp32
    assert base_precision(stored) == "nf4" and base_precision(None) == "fp32"
    assert base_precision({**stored, "base_dtype": "bf16"}) == "nf4 (bf16 rest)"


# ---------------------------------------------------------------------------------------------------------
# Interop: a QLoRA adapter is a LoRA adapter


def test_a_qlora_adapter_loads_in_peft_on_the_unquantized_base(tmp_path):
    """Trained-looking LoRA weights saved from an NF4 base: the folder records the base's quantization in
    base_quantization.json beside PEFT's two files, and PEFT loads the adapter onto the transformers T5 of the same
    (unquantized) checkpoint with the logits t5peft gives on that base."""
    from oracles import peft_load

    base_dir = tmp_path / "base"
    quant_model(3).save_pretrained(base_dir)
    model = load_pretrained(base_dir)
    apply_method(model, "lora", target_modules=["q", "v", "wi"])
    perturb(model)
    store_frozen(model, quantize="nf4")
    adapter = tmp_path / "adapter"
    save_trained(model, adapter)
    record = json.loads((adapter / "base_quantization.json").read_text())
    assert record["quantization_config"]["load_in_4bit"] and record["library"] == "torchao"
    assert "quantiz" not in (adapter / "adapter_config.json").read_text()  # PEFT's config stays PEFT's
    ours = load_adapter(load_pretrained(base_dir), adapter)
    batch = random_batch(0, QUANT_T5["vocab_size"])
    torch.testing.assert_close(logits(peft_load(base_dir, adapter), batch), logits(ours, batch), rtol=1e-5, atol=1e-5)
    # and the folder (PEFT's layout) loaded onto the base quantized again is the trained model, to the bit
    again = load_adapter(load_pretrained(base_dir), adapter)
    store_frozen(again, quantize="nf4")
    assert torch.equal(logits(again, batch), logits(model, batch))


# ---------------------------------------------------------------------------------------------------------
# Compiled


STORED = [("bf16", "none"), ("fp32", "nf4"), ("fp32", "int8")]


@pytest.mark.parametrize(("base_dtype", "quantize"), STORED)
def test_a_stored_base_compiles_without_graph_breaks(base_dtype, quantize):
    """As tests/test_compiled_step.py does for every method: the training loss of LoRA on the stored base, with its
    backward, as one graph (fullgraph, dynamo only)."""
    torch._dynamo.reset()
    batch = random_batch(0, QUANT_T5["vocab_size"])
    model = lora_model(target_modules=["q", "v", "wi"])
    store_frozen(model, base_dtype, quantize)
    loss_fn = torch.compile(make_loss_fn(model, torch.device("cpu"), False), fullgraph=True, backend="eager")
    _, total = loss_fn(batch["input_ids"], batch["attention_mask"], batch["labels"])
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize(("base_dtype", "quantize"), STORED)
def test_the_compiled_step_on_a_stored_base_trains_as_eager(base_dtype, quantize, monkeypatch):
    """3 steps of the compiled step (aot_eager: forward and backward traced, eager's kernels) against eager,
    float32: the summed losses within 8 float32 ulps per step (measured: equal). About 2 minutes per case on the
    shared 2-core machine: -m slow."""
    batch = random_batch(0, QUANT_T5["vocab_size"])
    monkeypatch.setenv(step_module.BACKEND_VARIABLE, "aot_eager")
    losses = []
    for compile in (False, True):
        torch._dynamo.reset()
        model = lora_model(target_modules=["q", "v", "wi"])
        store_frozen(model, base_dtype, quantize)
        params = [p for p in model.parameters() if p.requires_grad]
        runner = TrainStep(model, torch.optim.AdamW(params, lr=1e-3), total_steps=3, compile=compile)
        for _ in range(3):
            runner(as_batch(batch))
        losses.append(runner.read_loss()[0])
    assert abs(losses[0] - losses[1]) <= 8 * 3 * torch.finfo(torch.float32).eps * abs(losses[0])


ADAPTER_METHODS = [m for m in method_names() if m != "full"]


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_every_adapter_method_trains_on_an_nf4_base_with_a_bf16_rest(method):
    """Every method's gradients on the stored base equal those on its dequantized float32 copy: the methods compute
    through storage.linear / storage.dense, whatever the storage (default options, dropouts 0, trained tensors
    perturbed so that none is at its initial value)."""
    model = quant_model(0)
    model.set_dropout(0.0)
    options = {f.name: 0.0 for f in dataclasses.fields(get_method_class(method).config_class) if "dropout" in f.name}
    torch.manual_seed(1)
    apply_method(model, method, **options)
    perturb(model)
    store_frozen(model, "bf16", "nf4")
    assert any(is_quantized(p) for p in model.parameters())
    reference = dequantized_copy(model)
    batch = random_batch(0, QUANT_T5["vocab_size"])
    for m in (model, reference):
        m(**batch).loss.backward()
    grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_qlora_row_in_the_summary_table_and_figure_2():
    """A LoRA row and its QLoRA row (fake records as the results file holds them): the summary keeps them apart,
    counts the QLoRA row's frozen weights at their stored bytes, and the table and figure 2 say so."""
    pytest.importorskip("matplotlib")
    from t5peft.experiments.figures import build_memory_figure
    from t5peft.experiments.table import markdown_table
    from test_report import BASE, fake_run, results_of

    lora = [fake_run("lora", seed, 1e-3, 0.7, 0.7) for seed in (0, 1)]
    qlora = [{**run, "method": "lora@nf4"} for run in lora]
    stored_bytes = BASE // 2  # what the run's base_storage says its frozen weights take as stored
    for run in qlora:
        run["base_storage"] = {"base_dtype": "fp32", "quantize": "nf4", "frozen_bytes": stored_bytes}
    plan = [{"name": n, "lr": 1e-3, "options": {}, "overrides": {}} for n in ("lora", "lora@nf4")]
    results = results_of(lora + qlora, plan)
    summary = results["summary"]
    assert list(summary) == ["lora", "lora@nf4"]
    assert summary["lora"]["base_precision"] == "fp32" and summary["lora@nf4"]["base_precision"] == "nf4"
    trainable = summary["lora"]["trainable_parameters"]
    assert summary["lora"]["counted_memory_bytes"]["weights"] == 4 * (BASE + trainable)
    assert summary["lora@nf4"]["counted_memory_bytes"]["weights"] == stored_bytes + 4 * trainable
    table = markdown_table(results)
    assert "| lora@nf4 |" in table and "- lora@nf4: nf4, all weights counted" in table
    figure = build_memory_figure(results)
    caption = " ".join(t.get_text() for t in figure.texts)
    assert "stored in" in caption and "NF4" in caption
