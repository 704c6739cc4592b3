"""Bottleneck adapters and (IA)^3: gradients, frozen base, exact counts, save/load, identity at init, PEFT interop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import train_steps
from oracles import hf_model, relative_error
from oracles import random_batch as _batch
from t5peft import (
    T5Config,
    T5ForConditionalGeneration,
    apply_method,
    count_parameters,
    load_adapter,
    load_pretrained,
    save_adapter,
)
from t5peft.methods import MethodConfigError
from t5peft.methods.adapter import BottleneckAdapter
from t5peft.methods.ia3 import IA3Linear, merge_ia3

peft = pytest.importorskip("peft")

TOLERANCE = 1e-5

# name -> (method, options); every required property runs on each
CASES = {
    "adapter-pfeiffer": ("adapter", {}),
    "adapter-houlsby": ("adapter", dict(placement="houlsby", non_linearity="gelu", reduction_factor=8)),
    "ia3": ("ia3", {}),
    "ia3-custom": ("ia3", dict(target_modules=["q", "o", "wi", "wo"], feedforward_modules=["wi", "wo"])),
    # PEFT tests feedforward names as plain suffixes of the module path: "o" also makes every wo feedforward
    "ia3-suffix": ("ia3", dict(target_modules=["o", "wo"], feedforward_modules=["o"])),
}
IA3_CASES = [c for c in CASES if c.startswith("ia3")]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny random transformers T5 saved as a Hugging Face checkpoint (the shared base of every test)."""
    directory = tmp_path_factory.mktemp("base")
    hf_model(seed=3).save_pretrained(directory)
    return directory


def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _randomise(model: nn.Module, seed: int = 1) -> None:
    """Non-zero, non-one values for every trainable tensor, so no equality passes by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator) * 0.5
                param.copy_(noise + 1.0 if param.shape[-1] == 1 or param.shape[0] == 1 else noise)


def _applied(base_dir: Path, case: str):
    method, options = CASES[case]
    return apply_method(load_pretrained(base_dir), method, **options)


# --------------------------------------------------------------------------------------------------
# 1-2: gradients reach only the method's parameters; the frozen base stays bit-identical


@pytest.mark.parametrize("case", CASES)
def test_only_method_parameters_get_gradients(base_dir, case):
    model = _applied(base_dir, case).train()
    _randomise(model)  # so every adapter tensor has a non-zero gradient
    model(**_batch()).loss.backward()
    trainable = set(model.peft.trainable)
    assert trainable
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


@pytest.mark.parametrize("case", CASES)
def test_base_weights_unchanged_after_training_steps(base_dir, case):
    model = _applied(base_dir, case).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, _batch, 3)
    trainable = set(model.peft.trainable)
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"{name} changed"


# --------------------------------------------------------------------------------------------------
# 3: exact trainable-parameter counts for t5-small


def _t5_small(t5_small_dir: Path) -> T5ForConditionalGeneration:
    with torch.device("meta"):
        return T5ForConditionalGeneration(T5Config.from_json_file(t5_small_dir / "config.json"))


@pytest.mark.parametrize(
    ("placement", "per_block_enc", "per_block_dec", "expected"),
    [("pfeiffer", 1, 1, 399_744), ("houlsby", 2, 3, 999_360)],
)
def test_adapter_count_t5_small(t5_small_dir, placement, per_block_enc, per_block_dec, expected):
    model = apply_method(_t5_small(t5_small_dir), "adapter", placement=placement)
    c = model.config
    b = c.d_model // 16
    per_adapter = 2 * c.d_model * b + b + c.d_model  # down W + b, up W + b
    formula = (per_block_enc * c.num_layers + per_block_dec * c.num_decoder_layers) * per_adapter
    assert per_adapter == 33_312
    assert formula == expected
    counts = count_parameters(model)
    assert counts["trainable"] == expected
    assert counts["base"] == 60_506_624


def test_ia3_count_t5_small(t5_small_dir):
    model = apply_method(_t5_small(t5_small_dir), "ia3")
    c = model.config
    inner = c.num_heads * c.d_kv
    formula = c.num_layers * (2 * inner + c.d_ff) + c.num_decoder_layers * (4 * inner + c.d_ff)
    assert formula == 43_008
    assert count_parameters(model)["trainable"] == formula
    assert count_parameters(model)["base"] == 60_506_624


# --------------------------------------------------------------------------------------------------
# 4-5: save/load round trip; untrained adapters are the identity


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip(base_dir, case, tmp_path):
    model = _applied(base_dir, case)
    _randomise(model)
    save_adapter(model, tmp_path)
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    batch = _batch()
    base_logits = _logits(load_pretrained(base_dir), batch)
    logits = _logits(model, batch)
    assert not torch.allclose(logits, base_logits), "the adapter must change the model for this test to mean much"
    assert torch.equal(_logits(loaded, batch), logits)
    assert loaded.peft.method.config == model.peft.method.config


@pytest.mark.parametrize("case", CASES)
def test_untrained_is_identity(base_dir, case):
    batch = _batch()
    expected = _logits(load_pretrained(base_dir), batch)
    assert torch.equal(_logits(_applied(base_dir, case), batch), expected)


def test_adapter_with_init_scale_is_not_identity(base_dir):
    """``init_scale > 0`` is Houlsby's near-identity init: close to, but not exactly, the base model."""
    batch = _batch()
    expected = _logits(load_pretrained(base_dir), batch)
    torch.manual_seed(0)
    logits = _logits(apply_method(load_pretrained(base_dir), "adapter", init_scale=1e-3), batch)
    assert not torch.equal(logits, expected)
    assert relative_error(logits, expected) < 1e-2


# --------------------------------------------------------------------------------------------------
# Bottleneck adapters: placement, module formula, options, file layout


def _adapter_paths(model) -> list[str]:
    return sorted(name for name, module in model.named_modules() if isinstance(module, BottleneckAdapter))


def test_adapter_placement(base_dir):
    pfeiffer = _adapter_paths(_applied(base_dir, "adapter-pfeiffer"))
    assert pfeiffer == sorted(
        [f"encoder.block.{i}.layer.1.adapter" for i in range(2)]
        + [f"decoder.block.{i}.layer.2.adapter" for i in range(2)]
    )
    houlsby = _adapter_paths(_applied(base_dir, "adapter-houlsby"))
    assert houlsby == sorted(
        [f"encoder.block.{i}.layer.{j}.adapter" for i in range(2) for j in (0, 1)]
        + [f"decoder.block.{i}.layer.{j}.adapter" for i in range(2) for j in (0, 1, 2)]
    )


@pytest.mark.parametrize(
    ("name", "act"),
    [("relu", torch.relu), ("gelu", nn.functional.gelu), ("silu", nn.functional.silu), ("tanh", torch.tanh)],
)
def test_adapter_module_by_hand(name, act):
    torch.manual_seed(0)
    adapter = BottleneckAdapter(8, 3, name, dropout=0.0, init_scale=0.5)
    with torch.no_grad():
        adapter.down.bias.normal_()
        adapter.up.bias.normal_()
    y = torch.randn(2, 4, 8)
    down, up = adapter.down, adapter.up
    expected = y + act(y @ down.weight.T + down.bias) @ up.weight.T + up.bias
    torch.testing.assert_close(adapter(y), expected)


def test_adapter_zero_init_and_shapes(base_dir):
    model = _applied(base_dir, "adapter-houlsby")
    params = dict(model.named_parameters())
    assert params["encoder.block.0.layer.1.adapter.down.weight"].shape == (8, 64)  # 64 // 8
    assert params["encoder.block.0.layer.1.adapter.up.weight"].shape == (64, 8)
    assert params["decoder.block.1.layer.1.adapter.up.bias"].shape == (64,)
    for name, param in params.items():
        if ".adapter.up." in name or ".adapter.down.bias" in name:
            assert not param.any(), name
        elif ".adapter.down.weight" in name:
            assert param.any(), name


def test_adapter_dropout_only_in_training(base_dir):
    model = apply_method(load_pretrained(base_dir), "adapter", adapter_dropout=0.5)
    adapter = model.encoder.block[0].layer[1].adapter
    with torch.no_grad():
        adapter.up.weight.normal_()
    y = torch.randn(2, 3, 64)
    adapter.eval()
    assert torch.equal(adapter(y), adapter(y))
    adapter.train()
    torch.manual_seed(0)
    first = adapter(y)
    assert not torch.equal(first, adapter(y))


@pytest.mark.parametrize(
    "options",
    [
        dict(placement="parallel"),
        dict(reduction_factor=0),
        dict(reduction_factor=2.5),
        dict(non_linearity="swish"),
        dict(adapter_dropout=1.0),
        dict(init_scale=-0.1),
        dict(reduction_factor=128),  # 64 // 128 == 0: no bottleneck
        dict(r=8),
    ],
)
def test_adapter_rejects_bad_options(base_dir, options):
    with pytest.raises(MethodConfigError):
        apply_method(load_pretrained(base_dir), "adapter", **options)


def test_adapter_file_layout_and_peft_refuses_it(base_dir, tmp_path):
    model = _applied(base_dir, "adapter-pfeiffer")
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "T5PEFT_BOTTLENECK"
    assert config["placement"] == "pfeiffer" and config["reduction_factor"] == 16
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.encoder.block.0.layer.1.adapter.down.weight" in keys
    assert "base_model.model.decoder.block.1.layer.2.adapter.up.bias" in keys
    assert len(keys) == 4 * 4
    with pytest.raises(Exception):  # noqa: B017  (PEFT's own error for an unknown peft_type)
        peft.PeftModel.from_pretrained(hf_model(seed=3), str(tmp_path))


# --------------------------------------------------------------------------------------------------
# (IA)^3: the scaling by hand, validation, merge


def test_ia3_linear_by_hand():
    torch.manual_seed(0)
    base = nn.Linear(6, 4, bias=False)
    x = torch.randn(2, 3, 6)
    output_scaled = IA3Linear(base, is_feedforward=False, init_ones=False)
    assert output_scaled.ia3_l.shape == (4, 1)
    torch.testing.assert_close(output_scaled(x), (x @ base.weight.T) * output_scaled.ia3_l[:, 0])
    input_scaled = IA3Linear(base, is_feedforward=True, init_ones=False)
    assert input_scaled.ia3_l.shape == (1, 6)
    torch.testing.assert_close(input_scaled(x), (x * input_scaled.ia3_l[0]) @ base.weight.T)
    assert input_scaled.weight is base.weight


def test_ia3_targets_and_keys(base_dir):
    model = _applied(base_dir, "ia3")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, IA3Linear)}
    assert len(layers) == 2 * 3 + 2 * 5  # encoder k, v, wo; decoder self k, v, cross k, v, wo
    for name, layer in layers.items():
        assert layer.is_feedforward == name.endswith(".wo"), name
        assert name.rsplit(".", 1)[-1] in ("k", "v", "wo")
    params = dict(model.named_parameters())
    assert params["encoder.block.0.layer.0.SelfAttention.k.ia3_l"].shape == (64, 1)
    assert params["decoder.block.0.layer.2.DenseReluDense.wo.ia3_l"].shape == (1, 128)
    assert "encoder.block.0.layer.0.SelfAttention.k.weight" in params


def test_ia3_feedforward_defaults_follow_targets():
    from t5peft.methods.ia3 import IA3Config

    assert IA3Config().feedforward_modules == ["wo"]
    assert IA3Config(target_modules=["q", "v"]).feedforward_modules == []
    with pytest.raises(MethodConfigError, match="subset"):
        IA3Config(target_modules=["k", "v"], feedforward_modules=["wo"])
    with pytest.raises(MethodConfigError):
        IA3Config(target_modules=[])


def test_ia3_merge_matches_unmerged(base_dir, tmp_path):
    model = _applied(base_dir, "ia3-custom")
    _randomise(model)
    batch = _batch()
    expected = _logits(model, batch)
    merged = merge_ia3(model)
    assert not any(isinstance(m, IA3Linear) for m in merged.modules())
    assert relative_error(_logits(merged, batch), expected) < TOLERANCE
    merged.save_pretrained(tmp_path)  # a plain checkpoint again
    assert relative_error(_logits(load_pretrained(tmp_path), batch), expected) < TOLERANCE


# --------------------------------------------------------------------------------------------------
# 6: (IA)^3 interop with Hugging Face PEFT, both ways, and equal counts


def _peft_config(case: str):
    options = dict(CASES[case][1])
    return peft.IA3Config(task_type="SEQ_2_SEQ_LM", **options)


def _hf_logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("case", IA3_CASES)
def test_ia3_ours_loads_in_peft(base_dir, case, tmp_path):
    model = _applied(base_dir, case)
    _randomise(model)
    save_adapter(model, tmp_path)
    batch = _batch()
    reference = peft.PeftModel.from_pretrained(hf_model(seed=3), str(tmp_path))
    assert relative_error(_hf_logits(reference, batch), _logits(model, batch)) <= TOLERANCE


@pytest.mark.parametrize("case", IA3_CASES)
def test_ia3_peft_loads_in_ours(base_dir, case, tmp_path):
    reference = peft.get_peft_model(hf_model(seed=3), _peft_config(case))
    _randomise(reference)
    reference.save_pretrained(tmp_path)
    batch = _batch()
    expected = _hf_logits(reference, batch)
    ours = load_adapter(load_pretrained(base_dir), tmp_path)
    assert relative_error(_logits(ours, batch), expected) <= TOLERANCE
    assert not torch.allclose(expected, _logits(load_pretrained(base_dir), batch))


@pytest.mark.parametrize("case", IA3_CASES)
def test_ia3_count_matches_peft(base_dir, case):
    reference = peft.get_peft_model(hf_model(seed=3), _peft_config(case))
    assert count_parameters(_applied(base_dir, case))["trainable"] == reference.get_nb_trainable_parameters()[0]


def test_ia3_peft_config_fields_neutral_and_refused(base_dir, tmp_path):
    peft.get_peft_model(hf_model(seed=3), _peft_config("ia3")).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    values = json.loads(path.read_text())
    load_adapter(load_pretrained(base_dir), tmp_path)  # every field PEFT wrote is understood
    values["fan_in_fan_out"] = True
    path.write_text(json.dumps(values))
    with pytest.raises(MethodConfigError, match="fan_in_fan_out"):
        load_adapter(load_pretrained(base_dir), tmp_path)
