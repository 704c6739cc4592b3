"""Bottleneck adapters and (IA)^3 specifics: placement, the modules by hand, init, options, file layout, merge, PEFT's
config fields. What every method must do is checked for both by ``test_method_contract.py``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import logits, perturb, relative_error
from helpers import tiny_batch as _batch
from method_cases import applied
from oracles import peft_model
from t5peft import apply_method, load_adapter, load_pretrained, save_adapter
from t5peft.methods import MethodConfigError, merge_method
from t5peft.methods.adapter import BottleneckAdapter
from t5peft.methods.declarations.ia3 import IA3Config
from t5peft.methods.ia3 import IA3Linear

TOLERANCE = 1e-5


def test_loaded_config_equals_saved_config(tiny_base_dir, tmp_path):
    for case in ("adapter-pfeiffer", "adapter-houlsby", "ia3", "ia3-custom"):
        model = applied(tiny_base_dir, case)
        save_adapter(model, tmp_path / case)
        loaded = load_adapter(load_pretrained(tiny_base_dir), tmp_path / case)
        assert loaded.peft.method.config == model.peft.method.config, case


def test_adapter_with_init_scale_is_not_identity(tiny_base_dir):
    """``init_scale > 0`` is Houlsby's near-identity init: close to, but not exactly, the base model."""
    batch = _batch()
    expected = logits(load_pretrained(tiny_base_dir), batch)
    torch.manual_seed(0)
    near = logits(apply_method(load_pretrained(tiny_base_dir), "adapter", init_scale=1e-3), batch)
    assert not torch.equal(near, expected)
    assert relative_error(near, expected) < 1e-2


# --------------------------------------------------------------------------------------------------
# Bottleneck adapters: placement, the module by hand, initialisation, dropout, options, file layout


def _adapter_paths(model) -> list[str]:
    return sorted(name for name, module in model.named_modules() if isinstance(module, BottleneckAdapter))


def test_adapter_placement(tiny_base_dir):
    pfeiffer = _adapter_paths(applied(tiny_base_dir, "adapter-pfeiffer"))
    assert pfeiffer == sorted(
        [f"encoder.block.{i}.layer.1.adapter" for i in range(2)]
        + [f"decoder.block.{i}.layer.2.adapter" for i in range(3)]
    )
    houlsby = _adapter_paths(applied(tiny_base_dir, "adapter-houlsby"))
    assert houlsby == sorted(
        [f"encoder.block.{i}.layer.{j}.adapter" for i in range(2) for j in (0, 1)]
        + [f"decoder.block.{i}.layer.{j}.adapter" for i in range(3) for j in (0, 1, 2)]
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


def test_adapter_zero_init_and_shapes(tiny_base_dir):
    model = applied(tiny_base_dir, "adapter-houlsby")
    params = dict(model.named_parameters())
    assert params["encoder.block.0.layer.1.adapter.down.weight"].shape == (8, 64)  # 64 // 8
    assert params["encoder.block.0.layer.1.adapter.up.weight"].shape == (64, 8)
    assert params["decoder.block.1.layer.1.adapter.up.bias"].shape == (64,)
    for name, param in params.items():
        if ".adapter.up." in name or ".adapter.down.bias" in name:
            assert not param.any(), name
        elif ".adapter.down.weight" in name:
            assert param.any(), name


def test_adapter_dropout_only_in_training(tiny_base_dir):
    model = apply_method(load_pretrained(tiny_base_dir), "adapter", adapter_dropout=0.5)
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
def test_adapter_rejects_bad_options(tiny_base_dir, options):
    with pytest.raises(MethodConfigError):
        apply_method(load_pretrained(tiny_base_dir), "adapter", **options)


def test_adapter_file_layout(tiny_base_dir, tmp_path):
    model = applied(tiny_base_dir, "adapter-pfeiffer")
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "T5PEFT_BOTTLENECK"
    assert config["placement"] == "pfeiffer" and config["reduction_factor"] == 16
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.encoder.block.0.layer.1.adapter.down.weight" in keys
    assert "base_model.model.decoder.block.1.layer.2.adapter.up.bias" in keys
    assert len(keys) == (2 + 3) * 4


# --------------------------------------------------------------------------------------------------
# (IA)^3: the scaling by hand, targets and keys, feedforward defaults, merging


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


def test_ia3_targets_and_keys(tiny_base_dir):
    model = applied(tiny_base_dir, "ia3")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, IA3Linear)}
    assert len(layers) == 2 * 3 + 3 * 5  # encoder k, v, wo; decoder self k, v, cross k, v, wo
    for name, layer in layers.items():
        assert layer.is_feedforward == name.endswith(".wo"), name
        assert name.rsplit(".", 1)[-1] in ("k", "v", "wo")
    params = dict(model.named_parameters())
    assert params["encoder.block.0.layer.0.SelfAttention.k.ia3_l"].shape == (64, 1)
    assert params["decoder.block.0.layer.2.DenseReluDense.wo.ia3_l"].shape == (1, 128)
    assert "encoder.block.0.layer.0.SelfAttention.k.weight" in params


def test_ia3_feedforward_defaults_follow_targets():
    assert IA3Config().feedforward_modules == ["wo"]
    assert IA3Config(target_modules=["q", "v"]).feedforward_modules == []
    with pytest.raises(MethodConfigError, match="subset"):
        IA3Config(target_modules=["k", "v"], feedforward_modules=["wo"])
    with pytest.raises(MethodConfigError):
        IA3Config(target_modules=[])


def test_ia3_merge_matches_unmerged(tiny_base_dir, tmp_path):
    model = applied(tiny_base_dir, "ia3-custom")
    perturb(model)
    batch = _batch()
    expected = logits(model, batch)
    merged = merge_method(model)
    assert not any(isinstance(m, IA3Linear) for m in merged.modules())
    assert relative_error(logits(merged, batch), expected) < TOLERANCE
    merged.save_pretrained(tmp_path)  # a plain checkpoint again
    assert relative_error(logits(load_pretrained(tmp_path), batch), expected) < TOLERANCE


# --------------------------------------------------------------------------------------------------
# (IA)^3: PEFT's config fields read at their neutral values, others refused


def test_ia3_peft_config_fields_neutral_and_refused(tiny_base_dir, tmp_path):
    peft = pytest.importorskip("peft")
    peft_model(tiny_base_dir, peft.IA3Config(task_type="SEQ_2_SEQ_LM")).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    values = json.loads(path.read_text())
    load_adapter(load_pretrained(tiny_base_dir), tmp_path)  # every field PEFT wrote is understood
    values["fan_in_fan_out"] = True
    path.write_text(json.dumps(values))
    with pytest.raises(MethodConfigError, match="fan_in_fan_out"):
        load_adapter(load_pretrained(tiny_base_dir), tmp_path)
