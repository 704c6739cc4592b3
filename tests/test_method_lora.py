"""LoRA and full fine-tuning specifics, and the generic method machinery (registry, option errors, adapter files).

What every method must do (gradients, frozen base, counts, save/load, identity at init, PEFT interop both ways) is
checked for LoRA and full fine-tuning by ``test_method_contract.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import logits, perturb, relative_error, save_tiny_base
from helpers import tiny_batch as _batch
from method_cases import applied
from oracles import hf_from, peft_load
from t5peft import apply_method, count_parameters, load_adapter, load_pretrained, save_adapter
from t5peft.methods import MethodConfigError, merge_method
from t5peft.methods.lora import LoraLinear

TOLERANCE = 1e-5


def test_save_load_round_trip_keeps_options_and_file_type(tiny_base_dir, tmp_path):
    model = applied(tiny_base_dir, "lora", use_rslora=True)
    trainable = model.peft.trainable
    assert trainable and all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in trainable)
    perturb(model)
    save_adapter(model, tmp_path / "adapter")
    again = load_adapter(load_pretrained(tiny_base_dir), tmp_path / "adapter")
    assert torch.equal(logits(again, _batch()), logits(model, _batch()))
    assert again.peft.method.config.use_rslora is True
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "SEQ_2_SEQ_LM"


def test_merge_and_unmerge_reproduce_unmerged_logits(tiny_base_dir, tmp_path):
    model = applied(tiny_base_dir, "lora")
    perturb(model, seed=3)
    unmerged = logits(model, _batch())
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for layer in layers:
        layer.merge()
    assert relative_error(logits(model, _batch()), unmerged) <= TOLERANCE
    for layer in layers:
        layer.unmerge()
    assert relative_error(logits(model, _batch()), unmerged) <= TOLERANCE
    # merged into a plain T5: saves as a normal checkpoint that both t5peft and transformers read
    plain = merge_method(model)
    assert plain.peft is None and not any(isinstance(m, LoraLinear) for m in plain.modules())
    plain.save_pretrained(tmp_path / "merged")
    again = load_pretrained(tmp_path / "merged")
    assert relative_error(logits(again, _batch()), unmerged) <= TOLERANCE
    assert relative_error(logits(hf_from(tmp_path / "merged"), _batch()), unmerged) <= TOLERANCE


def test_a_model_with_lora_is_not_saved_as_a_plain_checkpoint(tiny_base_dir, tmp_path):
    model = applied(tiny_base_dir, "lora")
    with pytest.raises(Exception, match="merge or remove the PEFT method first"):
        model.save_pretrained(tmp_path / "x")


def test_full_fine_tuning_trains_everything(tiny_base_dir):
    model = apply_method(load_pretrained(tiny_base_dir), "full")
    counts = count_parameters(model)
    assert counts["trainable"] == counts["base"] == model.num_parameters()
    with pytest.raises(MethodConfigError, match="use save_pretrained"):
        save_adapter(model, "unused")


def test_wi_on_a_gated_t5_adapts_wi_0_and_wi_1_and_peft_loads_the_file(tmp_path):
    """``-o target_modules=wi`` on a T5 v1.1 / flan-t5 architecture: both gated input projections get LoRA, the file
    names them (PEFT matches names exactly, so ``wi`` alone would match nothing there) and PEFT loads it to the same
    logits (the count: the contract suite)."""
    base = save_tiny_base(tmp_path / "gated", feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = apply_method(load_pretrained(base), "lora", r=4, target_modules="wi")
    adapted = sorted({name.rsplit(".", 3)[1] for name in model.peft.trainable})
    assert adapted == ["wi_0", "wi_1"] and len(model.peft.trainable) == 2 * 2 * (2 + 3)
    perturb(model)
    save_adapter(model, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"] == ["wi_0", "wi_1"]
    expected = logits(model, _batch())
    assert relative_error(logits(peft_load(base, tmp_path / "adapter"), _batch()), expected) <= TOLERANCE
    assert torch.equal(logits(load_adapter(load_pretrained(base), tmp_path / "adapter"), _batch()), expected)


def test_registry_and_option_errors(tiny_base_dir):
    # the registered names: tests/test_method_contract.py::test_every_registered_method_has_a_contract
    with pytest.raises(MethodConfigError, match="has no option 'rank'; its options are: r, lora_alpha"):
        apply_method(load_pretrained(tiny_base_dir), "lora", rank=4)
    with pytest.raises(MethodConfigError, match="unknown method 'qlora'"):
        apply_method(load_pretrained(tiny_base_dir), "qlora")
    with pytest.raises(MethodConfigError, match="target_modules \\['qq'\\] match no linear layer"):
        apply_method(load_pretrained(tiny_base_dir), "lora", target_modules=["q", "qq"])
    with pytest.raises(MethodConfigError, match="lora_dropout must be in"):
        apply_method(load_pretrained(tiny_base_dir), "lora", lora_dropout=1.5)
    model = apply_method(load_pretrained(tiny_base_dir), "lora")
    with pytest.raises(MethodConfigError, match="already has method 'lora'"):
        apply_method(model, "ia3")


def _saved_adapter(tiny_base_dir: Path, directory: Path) -> Path:
    model = applied(tiny_base_dir, "lora")
    perturb(model)
    return save_adapter(model, directory)


def test_bad_adapter_folders(tiny_base_dir, tmp_path):
    folder = _saved_adapter(tiny_base_dir, tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    state = load_file(weights)
    key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
    save_file({k: v for k, v in state.items() if k != key}, weights)
    with pytest.raises(MethodConfigError, match=f"missing tensors: {key}"):
        load_adapter(load_pretrained(tiny_base_dir), folder)
    save_file({**state, key: torch.zeros(5, 64)}, weights)
    with pytest.raises(MethodConfigError, match=r"q.lora_A.weight: file \(5, 64\), model \(4, 64\)"):
        load_adapter(load_pretrained(tiny_base_dir), folder)
    save_file(state, weights)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": "yes"}))
    with pytest.raises(MethodConfigError, match="use_dora='yes' is not supported"):
        load_adapter(load_pretrained(tiny_base_dir), folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))  # DoRA's: no magnitudes
    with pytest.raises(MethodConfigError, match="missing tensors: .*lora_magnitude_vector"):
        load_adapter(load_pretrained(tiny_base_dir), folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    with pytest.raises(MethodConfigError, match="peft_type 'LOHA' is not supported"):
        load_adapter(load_pretrained(tiny_base_dir), folder)
    weights.write_bytes(weights.read_bytes()[:100])
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MethodConfigError, match="not a readable safetensors file"):
        load_adapter(load_pretrained(tiny_base_dir), folder)
