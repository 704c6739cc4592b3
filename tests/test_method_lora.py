"""LoRA and full fine-tuning, and the generic method machinery (registry, freezing, counting, adapter files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oracles import hf_model, relative_error, transformers
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
from t5peft.methods import MethodConfigError, method_names
from t5peft.methods.lora import LoraLinear, merge_lora

peft = pytest.importorskip("peft")

TOLERANCE = 1e-5
OPTIONS = dict(r=4, lora_alpha=8, target_modules=["q", "v", "wo"])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("base")
    hf_model(seed=5).save_pretrained(directory)
    return directory


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _randomize_lora(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def test_only_lora_parameters_get_gradients_and_base_stays_bit_identical(base_dir):
    model = apply_method(load_pretrained(base_dir), "lora", **OPTIONS)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(3):
        model(**_batch(step)).loss.backward()
        for name, param in model.named_parameters():
            assert (param.grad is not None) == (name in trainable), name
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_untrained_lora_leaves_logits_unchanged(base_dir):
    plain = load_pretrained(base_dir)
    expected = _logits(plain, _batch())
    assert torch.equal(_logits(apply_method(plain, "lora", **OPTIONS), _batch()), expected)


def test_t5_small_count_is_the_closed_form(t5_small_dir):
    config = T5Config.from_json_file(t5_small_dir / "config.json")
    with torch.device("meta"):
        model = apply_method(T5ForConditionalGeneration(config), "lora")
    # q and v of 6 encoder self-, 6 decoder self- and 6 cross-attentions: 36 layers of r * (512 + 512)
    assert count_parameters(model)["trainable"] == 36 * 8 * (512 + 512) == 294_912
    assert count_parameters(model)["base"] == 60_506_624


def test_count_equals_peft(base_dir):
    ours = apply_method(load_pretrained(base_dir), "lora", **OPTIONS)
    config = peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8, target_modules=["q", "v", "wo"])
    theirs = peft.get_peft_model(transformers.T5ForConditionalGeneration.from_pretrained(base_dir), config)
    assert count_parameters(ours)["trainable"] == theirs.get_nb_trainable_parameters()[0]


def test_save_load_round_trip(base_dir, tmp_path):
    model = apply_method(load_pretrained(base_dir), "lora", **OPTIONS, use_rslora=True)
    _randomize_lora(model)
    save_adapter(model, tmp_path / "adapter")
    again = load_adapter(load_pretrained(base_dir), tmp_path / "adapter")
    assert torch.equal(_logits(again, _batch()), _logits(model, _batch()))
    assert again.peft.method.config.use_rslora is True
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "SEQ_2_SEQ_LM"


def test_our_file_loads_in_peft_with_same_logits(base_dir, tmp_path):
    ours = apply_method(load_pretrained(base_dir), "lora", **OPTIONS)
    _randomize_lora(ours, seed=1)
    save_adapter(ours, tmp_path / "adapter")
    base = transformers.T5ForConditionalGeneration.from_pretrained(base_dir)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    expected, batch = _logits(ours, _batch()), _batch()
    with torch.no_grad():
        actual = theirs(**batch).logits
    assert relative_error(actual, expected) <= TOLERANCE
    assert not torch.equal(expected, _logits(load_pretrained(base_dir), _batch())), "the adapter must matter"


def test_peft_file_loads_in_t5peft_with_same_logits(base_dir, tmp_path):
    config = peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8, target_modules=["q", "v", "wo"])
    theirs = peft.get_peft_model(transformers.T5ForConditionalGeneration.from_pretrained(base_dir), config)
    _randomize_lora(theirs, seed=2)
    theirs.save_pretrained(tmp_path / "peft")
    ours = load_adapter(load_pretrained(base_dir), tmp_path / "peft")
    theirs.eval()
    batch = _batch()
    with torch.no_grad():
        expected = theirs(**batch).logits
    assert relative_error(_logits(ours, batch), expected) <= TOLERANCE


def test_merge_and_unmerge_reproduce_unmerged_logits(base_dir, tmp_path):
    model = apply_method(load_pretrained(base_dir), "lora", **OPTIONS)
    _randomize_lora(model, seed=3)
    unmerged = _logits(model, _batch())
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for layer in layers:
        layer.merge()
    assert relative_error(_logits(model, _batch()), unmerged) <= TOLERANCE
    for layer in layers:
        layer.unmerge()
    assert relative_error(_logits(model, _batch()), unmerged) <= TOLERANCE
    # merged into a plain T5: saves as a normal checkpoint that both t5peft and transformers read
    plain = merge_lora(model)
    assert plain.peft is None and not any(isinstance(m, LoraLinear) for m in plain.modules())
    plain.save_pretrained(tmp_path / "merged")
    again = load_pretrained(tmp_path / "merged")
    assert relative_error(_logits(again, _batch()), unmerged) <= TOLERANCE
    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert relative_error(reference(**_batch()).logits, unmerged) <= TOLERANCE


def test_a_model_with_lora_is_not_saved_as_a_plain_checkpoint(base_dir, tmp_path):
    model = apply_method(load_pretrained(base_dir), "lora", **OPTIONS)
    with pytest.raises(Exception, match="merge or remove the PEFT method first"):
        model.save_pretrained(tmp_path / "x")


def test_full_fine_tuning_trains_everything(base_dir):
    model = apply_method(load_pretrained(base_dir), "full")
    counts = count_parameters(model)
    assert counts["trainable"] == counts["base"] == model.num_parameters()
    with pytest.raises(MethodConfigError, match="use save_pretrained"):
        save_adapter(model, "unused")


def test_registry_and_option_errors(base_dir):
    assert set(method_names()) == {
        *("full", "lora", "adalora", "adapter", "prompt", "ptuning2", "lora+prompt", "ia3"),
        *("dora", "vera", "ptuning", "prefix", "ln_tuning"),
    }
    with pytest.raises(MethodConfigError, match="has no option 'rank'; its options are: r, lora_alpha"):
        apply_method(load_pretrained(base_dir), "lora", rank=4)
    with pytest.raises(MethodConfigError, match="unknown method 'qlora'"):
        apply_method(load_pretrained(base_dir), "qlora")
    with pytest.raises(MethodConfigError, match="target_modules \\['qq'\\] match no linear layer"):
        apply_method(load_pretrained(base_dir), "lora", target_modules=["q", "qq"])
    with pytest.raises(MethodConfigError, match="lora_dropout must be in"):
        apply_method(load_pretrained(base_dir), "lora", lora_dropout=1.5)
    model = apply_method(load_pretrained(base_dir), "lora")
    with pytest.raises(MethodConfigError, match="already has method 'lora'"):
        apply_method(model, "ia3")


def _saved_adapter(base_dir: Path, directory: Path) -> Path:
    model = apply_method(load_pretrained(base_dir), "lora", **OPTIONS)
    _randomize_lora(model)
    return save_adapter(model, directory)


def test_bad_adapter_folders(base_dir, tmp_path):
    folder = _saved_adapter(base_dir, tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    state = load_file(weights)
    key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"
    save_file({k: v for k, v in state.items() if k != key}, weights)
    with pytest.raises(MethodConfigError, match=f"missing tensors: {key}"):
        load_adapter(load_pretrained(base_dir), folder)
    save_file({**state, key: torch.zeros(5, 64)}, weights)
    with pytest.raises(MethodConfigError, match=r"q.lora_A.weight: file \(5, 64\), model \(4, 64\)"):
        load_adapter(load_pretrained(base_dir), folder)
    save_file(state, weights)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": "yes"}))
    with pytest.raises(MethodConfigError, match="use_dora='yes' is not supported"):
        load_adapter(load_pretrained(base_dir), folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))  # DoRA's: no magnitudes
    with pytest.raises(MethodConfigError, match="missing tensors: .*lora_magnitude_vector"):
        load_adapter(load_pretrained(base_dir), folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    with pytest.raises(MethodConfigError, match="peft_type 'LOHA' is not supported"):
        load_adapter(load_pretrained(base_dir), folder)
    weights.write_bytes(weights.read_bytes()[:100])
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MethodConfigError, match="not a readable safetensors file"):
        load_adapter(load_pretrained(base_dir), folder)
