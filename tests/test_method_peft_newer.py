"""DoRA, VeRA, P-tuning (v1), PEFT's prefix tuning and LayerNorm tuning: what is specific to each.

What every method must do (gradients, frozen base, closed-form and PEFT counts, t5-small counts, save/load,
identity at init, PEFT interop both ways) is checked for these five by ``test_method_contract.py``, the compiled
step by ``test_compiled_step.py``. Here: DoRA's file resolution, gradients against PEFT's (the detached norm),
dropout formula and merging; VeRA's projections (shared buffers, drawn as PEFT draws them, saved or not) and
merging; P-tuning's LSTM and its folded file; the prefix layout, positions and cached generation on encoder/decoder
depths other than the contract's; LayerNorm tuning's copies and merging. The cases are ``method_cases.CASES``, on a
transformers-initialised base of ``helpers.TINY_T5``'s sizes with a deeper encoder than decoder (PEFT's prefix layout
needs decoder <= encoder).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import TINY_T5, random_batch, relative_error
from method_cases import applied, peft_config
from oracles import hf_model, transformers
from t5peft import (
    apply_method,
    count_parameters,
    load_adapter,
    load_pretrained,
    save_adapter,
)
from t5peft.engine.step import make_loss_fn
from t5peft.methods import MethodConfigError, get_declaration, merge_method
from t5peft.methods.dora import DoraLinear
from t5peft.methods.files import read_adapter_config
from t5peft.methods.ln_tuning import LnTuningNorm
from t5peft.methods.prompt import SoftPrompt
from t5peft.methods.ptuning import BiLSTM, PromptEncoder
from t5peft.methods.registry import method_for_file
from t5peft.methods.vera import VeraLinear, VeraProjections

peft = pytest.importorskip("peft")

TOLERANCE = 1e-5
ENCODER_LAYERS, DECODER_LAYERS = 3, 2  # unequal depths; PEFT's prefix layout needs decoder <= encoder


def _reference_base(**overrides):
    values = dict(TINY_T5, seed=6, num_layers=ENCODER_LAYERS, num_decoder_layers=DECODER_LAYERS)
    return hf_model(**(values | overrides))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("base")
    _reference_base().save_pretrained(directory)
    return directory


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(seed, TINY_T5["vocab_size"])


def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _randomise(model: nn.Module, seed: int = 1) -> None:
    """Non-zero values for every trainable tensor (magnitudes kept positive), so no equality holds by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator) * 0.5
                param.copy_(param.abs() + noise.abs() if "magnitude" in name or "ln_tuning" in name else noise)


def _peft_model(base_dir: Path, case: str):
    return peft.get_peft_model(
        transformers.T5ForConditionalGeneration.from_pretrained(base_dir), peft_config(peft, case)
    )


# --------------------------------------------------------------------------------------------------
# Compiling the non-default variants' whole forward as one graph (test_compiled_step.py: the defaults); rates


@pytest.mark.parametrize("case", ["ptuning-lstm", "prefix-projected"])  # the defaults: test_compiled_step.py
def test_forward_and_loss_compile_in_one_graph(base_dir, case):
    torch._dynamo.reset()  # a fresh cache: other models' compilations of the loss function count as recompiles
    model = applied(base_dir, case).train()
    loss_fn = torch.compile(make_loss_fn(model, torch.device("cpu"), False), fullgraph=True, backend="eager")
    batch = _batch()
    _, loss = loss_fn(batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_default_learning_rates():
    rates = {name: get_declaration(name).default_lr for name in ("dora", "vera", "ptuning", "prefix", "ln_tuning")}
    assert rates == {"dora": 1e-3, "vera": 4e-3, "ptuning": 1e-3, "prefix": 1e-2, "ln_tuning": 1e-3}


# --------------------------------------------------------------------------------------------------
# DoRA: which method a LORA folder is, file keys, merging, gradients and dropout as PEFT computes them


def test_lora_folder_resolution_by_use_dora(base_dir, tmp_path):
    """A LORA folder with use_dora: true is DoRA's, without it LoRA's; the same tensors missing the magnitude
    are refused, never read as plain LoRA."""
    dora = applied(base_dir, "dora")
    save_adapter(dora, tmp_path / "dora")
    values = read_adapter_config(tmp_path / "dora")
    assert values["peft_type"] == "LORA" and values["use_dora"] is True
    assert method_for_file(values, "x").name == "dora"
    assert method_for_file({**values, "use_dora": False}, "x").name == "lora"
    assert method_for_file({k: v for k, v in values.items() if k != "use_dora"}, "x").name == "lora"

    lora = apply_method(load_pretrained(base_dir), "lora", r=4, lora_alpha=8, target_modules=["q", "v", "wo"])
    save_adapter(lora, tmp_path / "lora")
    config_path = tmp_path / "lora" / "adapter_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"use_dora": True}))
    with pytest.raises(MethodConfigError, match="missing tensors: .*lora_magnitude_vector"):
        load_adapter(load_pretrained(base_dir), tmp_path / "lora")


def test_dora_file_keys(base_dir, tmp_path):
    save_adapter(applied(base_dir, "dora"), tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.decoder.block.1.layer.2.DenseReluDense.wo.lora_magnitude_vector"
    assert tensors[key].shape == (64,)
    assert len(tensors) == 3 * (3 * ENCODER_LAYERS + 5 * DECODER_LAYERS)  # q, v (self + cross) and wo


def test_dora_merge_unmerge_and_plain_checkpoint(base_dir, tmp_path):
    model = applied(base_dir, "dora")
    _randomise(model, seed=4)
    unmerged = _logits(model, _batch())
    layers = [m for m in model.modules() if isinstance(m, DoraLinear)]
    weights = [layer.weight.detach().clone() for layer in layers]
    for layer in layers:
        layer.merge()
    assert relative_error(_logits(model, _batch()), unmerged) <= TOLERANCE
    for layer in layers:
        layer.unmerge()
    assert relative_error(_logits(model, _batch()), unmerged) <= TOLERANCE
    assert all(torch.allclose(layer.weight, w, atol=1e-6) for layer, w in zip(layers, weights, strict=True))
    plain = merge_method(model)
    assert plain.peft is None and not any(isinstance(m, DoraLinear) for m in plain.modules())
    plain.save_pretrained(tmp_path / "merged")
    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert relative_error(reference(**_batch()).logits, unmerged) <= TOLERANCE


def test_dora_gradients_equal_peft_with_the_norm_detached(base_dir):
    """Same weights, same batch: every DoRA gradient equals PEFT's (whose column norm carries no gradient)."""
    ours = applied(base_dir, "dora")
    _randomise(ours, seed=5)
    reference = _peft_model(base_dir, "dora")
    theirs = dict(reference.named_parameters())
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if param.requires_grad:
                stem, leaf = name.rsplit(".", 1) if name.endswith(".weight") else (name, "weight")
                theirs[f"base_model.model.{stem}.default.{leaf}"].copy_(param)
    ours.eval()(**_batch()).loss.backward()
    reference.eval()(**_batch()).loss.backward()
    for name, param in ours.named_parameters():
        if param.requires_grad:
            stem, leaf = name.rsplit(".", 1) if name.endswith(".weight") else (name, "weight")
            expected = theirs[f"base_model.model.{stem}.default.{leaf}"].grad
            assert relative_error(param.grad, expected) <= TOLERANCE, name


def test_dora_training_output_with_dropout_is_peft_formula():
    """Training with LoRA dropout d: W x + (m / n - 1) W d(x) + (m / n) s B A d(x), n = ||W + s B A|| per row."""
    base = nn.Linear(6, 5, bias=False)
    layer = DoraLinear(base, r=2, alpha=4, dropout=0.3, use_rslora=False).train()
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.lora_magnitude_vector.mul_(1.5)
    x = torch.randn(4, 6)
    torch.manual_seed(0)
    out = layer(x)
    torch.manual_seed(0)
    dropped = layer.lora_dropout(x)
    weight = base.weight.detach()
    delta = 2.0 * layer.lora_B.weight @ layer.lora_A.weight
    scale = layer.lora_magnitude_vector / torch.linalg.norm(weight + delta, dim=1)
    expected = x @ weight.T + (scale - 1) * (dropped @ weight.T) + scale * (dropped @ delta.T)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(dropped, x)
    out.sum().backward()
    assert layer.lora_magnitude_vector.grad is not None and layer.lora_A.weight.grad is not None


# --------------------------------------------------------------------------------------------------
# VeRA: shared projections drawn as PEFT draws them, saved or drawn again, merging, PEFT's init


def test_vera_projections_are_shared_buffers_drawn_as_peft_draws_them(base_dir):
    model = applied(base_dir, "vera-no-projection")
    holders = {id(m.projections) for m in model.modules() if isinstance(m, VeraLinear)}
    assert len(holders) == 1
    projections = next(m for m in model.modules() if isinstance(m, VeraProjections))
    assert not any("vera_A" in n or "vera_B" in n for n, _ in model.named_parameters())
    reference = _peft_model(base_dir, "vera-no-projection").base_model
    assert torch.equal(projections.vera_A, reference.vera_A["default"])  # [r, max in] = [6, d_model]
    assert torch.equal(projections.vera_B, reference.vera_B["default"])  # [max out, r] = [d_ff, 6]
    assert projections.vera_A.shape == (6, 64) and projections.vera_B.shape == (128, 6)


def test_vera_files_with_and_without_projections(base_dir, tmp_path):
    save_adapter(applied(base_dir, "vera"), tmp_path / "with")
    save_adapter(applied(base_dir, "vera-no-projection"), tmp_path / "without")
    with_keys = set(load_file(tmp_path / "with" / "adapter_model.safetensors"))
    without_keys = set(load_file(tmp_path / "without" / "adapter_model.safetensors"))
    assert {"base_model.vera_A", "base_model.vera_B"} <= with_keys
    assert not any(k.startswith("base_model.vera_") for k in without_keys)
    assert "base_model.model.encoder.block.0.layer.1.DenseReluDense.wi.vera_lambda_d" in without_keys


def test_vera_saved_projections_are_used_when_loading(base_dir, tmp_path):
    """With save_projection the file's projections are authoritative (not redrawn from the key)."""
    model = applied(base_dir, "vera")
    _randomise(model)
    projections = next(m for m in model.modules() if isinstance(m, VeraProjections))
    with torch.no_grad():
        projections.vera_A.mul_(-1.0)
    expected = _logits(model, _batch())
    save_adapter(model, tmp_path)
    assert torch.equal(_logits(load_adapter(load_pretrained(base_dir), tmp_path), _batch()), expected)


def test_vera_merge_unmerge(base_dir, tmp_path):
    model = applied(base_dir, "vera")
    _randomise(model)
    unmerged = _logits(model, _batch())
    layers = [m for m in model.modules() if isinstance(m, VeraLinear)]
    for layer in layers:
        layer.merge()
    assert relative_error(_logits(model, _batch()), unmerged) <= TOLERANCE
    for layer in layers:
        layer.unmerge()
    assert relative_error(_logits(model, _batch()), unmerged) <= TOLERANCE
    plain = merge_method(model)
    assert not any(isinstance(m, (VeraLinear, VeraProjections)) for m in plain.modules())
    plain.save_pretrained(tmp_path / "merged")
    assert relative_error(_logits(load_pretrained(tmp_path / "merged"), _batch()), unmerged) <= TOLERANCE


def test_vera_init_weights_false_is_peft_choice(base_dir):
    model = apply_method(load_pretrained(base_dir), "vera", r=4, init_weights=False)
    layer = next(m for m in model.modules() if isinstance(m, VeraLinear))
    assert torch.equal(layer.vera_lambda_b, torch.ones(64))
    assert layer.vera_lambda_d.abs().sum() > 0 and not torch.allclose(layer.vera_lambda_d, torch.full((4,), 0.1))


# --------------------------------------------------------------------------------------------------
# P-tuning: the LSTM as torch's, the file as the encoded table (the one used at inference)


def test_bilstm_equals_torch_lstm():
    torch.manual_seed(0)
    ours = BiLSTM(7, 5, num_layers=3, dropout=0.0, device="cpu", dtype=torch.float32)
    reference = nn.LSTM(7, 5, num_layers=3, bidirectional=True, batch_first=True)
    reference.load_state_dict(ours.state_dict())
    assert sorted(ours.state_dict()) == sorted(reference.state_dict())
    x = torch.randn(6, 7)
    assert torch.allclose(ours(x), reference(x[None])[0][0], atol=1e-6)


def test_ptuning_file_is_the_encoded_table_and_loads_as_a_plain_prompt(base_dir, tmp_path):
    model = applied(base_dir, "ptuning-lstm")
    assert isinstance(model.encoder.input_prefix, PromptEncoder)
    save_adapter(model, tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert list(tensors) == ["prompt_embeddings"]
    with torch.no_grad():
        assert torch.equal(tensors["prompt_embeddings"], model.encoder.input_prefix.encode())
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["encoder_reparameterization_type"] == "LSTM" and "load_table" not in config
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    assert type(loaded.encoder.input_prefix) is SoftPrompt
    assert count_parameters(loaded)["trainable"] == 6 * 64  # 3 tokens x 2 submodules
    assert loaded.peft.method.closed_form_trainable(loaded.config) == 6 * 64


def test_ptuning_saved_in_training_mode_is_the_table_used_at_inference(base_dir, tmp_path):
    """With LSTM dropout, the encoder is random in training mode: a save must write the inference table."""
    model = applied(base_dir, "ptuning-lstm", encoder_dropout=0.5).train()
    save_adapter(model, tmp_path / "a")
    save_adapter(model, tmp_path / "b")
    first, second = (load_file(tmp_path / n / "adapter_model.safetensors")["prompt_embeddings"] for n in "ab")
    assert model.encoder.input_prefix.training  # the mode is given back
    with torch.no_grad():
        used = model.encoder.input_prefix.eval().encode()
    assert torch.equal(first, second) and torch.equal(first, used)


def test_ptuning_prepends_only_the_first_tokens(base_dir):
    model = applied(base_dir, "ptuning-lstm")
    batch = _batch()
    states, mask = model.encode(batch["input_ids"], batch["attention_mask"])
    assert states.shape[1] == batch["input_ids"].shape[1] + 3 and mask.shape[1] == states.shape[1]


# --------------------------------------------------------------------------------------------------
# Prefix tuning: PEFT's layout and positions, cached generation, refused shapes, the folded projection


@pytest.mark.parametrize(
    ("encoder", "decoder", "pairs", "unused"),
    [(4, 4, [0, 2, 0, 2], [1, 3]), (3, 2, [0, 2], [1]), (5, 5, [0, 2, 4, 1, 3], [])],
)
def test_prefix_layout_matches_peft(tmp_path, encoder, decoder, pairs, unused):
    """Decoder layer i reads pair 2i mod L (L = encoder layers): with an even L half the pairs are never used."""
    base = _reference_base(num_layers=encoder, num_decoder_layers=decoder)
    base.save_pretrained(tmp_path / "base")
    reference = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3))
    _randomise(reference)
    reference.save_pretrained(tmp_path / "adapter")
    reference.eval()
    with torch.no_grad():
        expected = reference(**_batch()).logits
    model = load_adapter(load_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert model.decoder.self_prefix.pairs.tolist() == pairs
    assert relative_error(_logits(model, _batch()), expected) <= TOLERANCE
    model.train()
    model(**_batch()).loss.backward()
    grad = model.decoder.self_prefix.prompt_embeddings.grad.view(3, encoder, 2, 64)
    assert grad[:, unused].abs().sum() == 0 and grad[:, sorted(set(pairs))].abs().sum(dim=(0, 2, 3)).min() > 0


def test_prefix_reaches_only_decoder_self_attention_with_position_bias(base_dir):
    model = applied(base_dir, "prefix")
    assert model.encoder.self_prefix is None and model.decoder.cross_prefix is None
    assert model.encoder.input_prefix is None and model.decoder.self_prefix.occupies_positions
    prefixes = model.decoder.self_prefix()
    assert prefixes.shape == (DECODER_LAYERS, 2, 4, 4, 16)
    batch = _batch()
    _randomise(model)
    positioned = _logits(model, batch)
    model.decoder.self_prefix.occupies_positions = False  # the same prefixes without positions: other logits
    assert relative_error(_logits(model, batch), positioned) > 1e-3


@pytest.mark.parametrize("case", ["prefix", "prefix-projected"])
def test_prefix_cached_generation_equals_uncached_greedy(base_dir, case):
    model = applied(base_dir, case).eval()
    _randomise(model)
    batch = _batch()
    generated = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6)
    tokens = generated[:, :1]
    with torch.no_grad():
        for _ in range(generated.shape[1] - 1):
            logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=tokens).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    eos = model.config.eos_token_id
    for row in range(tokens.shape[0]):
        stop = (tokens[row] == eos).nonzero()
        end = int(stop[0]) + 1 if len(stop) else tokens.shape[1]
        assert torch.equal(generated[row, :end], tokens[row, :end])


def test_prefix_refuses_what_peft_cannot_run(tmp_path):
    deeper_decoder = tmp_path / "deeper"
    _reference_base(num_layers=2, num_decoder_layers=3).save_pretrained(deeper_decoder)
    with pytest.raises(MethodConfigError, match="decoder of 3 layers"):
        apply_method(load_pretrained(deeper_decoder), "prefix")
    other_inner = tmp_path / "inner"
    _reference_base(d_kv=8).save_pretrained(other_inner)
    with pytest.raises(MethodConfigError, match="num_heads \\* d_kv = 32 != d_model = 64"):
        apply_method(load_pretrained(other_inner), "prefix")
    with pytest.raises(MethodConfigError, match="num_transformer_submodules must be 2"):
        apply_method(load_pretrained(deeper_decoder), "prefix", num_transformer_submodules=1)


def test_prefix_projection_is_folded_when_saved(base_dir, tmp_path):
    model = applied(base_dir, "prefix-projected")
    _randomise(model)
    expected = _logits(model, _batch())
    save_adapter(model, tmp_path)
    assert load_file(tmp_path / "adapter_model.safetensors")["prompt_embeddings"].shape == (3, 3 * 2 * 64)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["prefix_projection"] is True
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    assert loaded.peft.method.config.prefix_projection is False
    assert loaded.peft.trainable == ["decoder.self_prefix.prompt_embeddings"]
    assert torch.equal(_logits(loaded, _batch()), expected)


# --------------------------------------------------------------------------------------------------
# LayerNorm tuning: trained copies merged into a plain T5, norm targets only


def test_ln_tuning_trains_copies_and_merges_into_a_plain_t5(base_dir, tmp_path):
    model = applied(base_dir, "ln_tuning")
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LnTuningNorm)]
    assert len(wrapped) == 2 * ENCODER_LAYERS + 3 * DECODER_LAYERS + 2
    assert all(n.endswith(".ln_tuning_layers.weight") for n in model.peft.trainable)
    assert not model.peft.trains_base  # an adapter, not a whole model
    _randomise(model)
    expected = _logits(model, _batch())
    plain = merge_method(model)
    assert not any(isinstance(m, LnTuningNorm) for m in plain.modules())
    plain.save_pretrained(tmp_path / "merged")
    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert relative_error(reference(**_batch()).logits, expected) <= TOLERANCE


def test_ln_tuning_targets_norms_only(base_dir):
    with pytest.raises(MethodConfigError, match="norm layers only; .* is a Linear"):
        apply_method(load_pretrained(base_dir), "ln_tuning", target_modules=["q"])
    with pytest.raises(MethodConfigError, match="match no norm layer"):
        apply_method(load_pretrained(base_dir), "ln_tuning", target_modules=["layer_norm", "norm"])
    only_final = apply_method(load_pretrained(base_dir), "ln_tuning", target_modules="final_layer_norm")
    assert sorted(only_final.peft.trainable) == [
        "decoder.final_layer_norm.ln_tuning_layers.weight",
        "encoder.final_layer_norm.ln_tuning_layers.weight",
    ]
