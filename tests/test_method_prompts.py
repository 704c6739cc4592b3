"""Prompt tuning, deep prompts (P-Tuning v2) and the LoRA + prompt hybrid.

Each method: gradients only on its parameters, a bit-identical frozen base after training, exact parameter
counts for t5-small, save/load with identical logits, what an untrained one does to the logits; PEFT interop
for prompt tuning, PEFT's refusal of the others; method-specific behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import train_steps
from oracles import hf_model, random_batch, relative_error
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
from t5peft.methods.prompt import PROMPT_MODEL_KEY, SAMPLE_VOCAB_LIMIT
from t5peft.methods.ptuning2 import SITES, DeepPrefix, ProjectedDeepPrefix

peft = pytest.importorskip("peft")

TOLERANCE = 1e-5
VOCAB = 1000  # a small vocabulary keeps the tests fast; the real tokenizer's ids need the full one

# name -> (method, options); every generic property runs on each
CASES = {
    "prompt": ("prompt", dict(num_virtual_tokens=5)),
    "prompt-2-submodules": ("prompt", dict(num_virtual_tokens=4, num_transformer_submodules=2)),
    "ptuning2": ("ptuning2", dict(num_virtual_tokens=3)),
    "ptuning2-projected": ("ptuning2", dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=24)),
    "ptuning2-encoder-only": ("ptuning2", dict(num_virtual_tokens=2, decoder_self=False, decoder_cross=False)),
    "lora+prompt": ("lora+prompt", dict(num_virtual_tokens=3, r=4)),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny random transformers T5 (3 decoder layers, unlike the 2 encoder layers) saved as a checkpoint."""
    directory = tmp_path_factory.mktemp("base")
    _reference_base().save_pretrained(directory)
    return directory


def _reference_base():
    return hf_model(seed=4, num_decoder_layers=3, vocab_size=VOCAB)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(seed, VOCAB)


def _logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _randomise(model: nn.Module, seed: int = 1) -> None:
    """Non-zero values for every trainable tensor, so no equality passes by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def _applied(base_dir: Path, case: str):
    method, options = CASES[case]
    return apply_method(load_pretrained(base_dir), method, **options)


def _train(model, steps: int = 3) -> None:
    """The training loop's step."""
    train_steps(model, _batch, steps)


def _t5_small_meta(t5_small_dir: Path) -> T5ForConditionalGeneration:
    with torch.device("meta"):
        return T5ForConditionalGeneration(T5Config.from_json_file(t5_small_dir / "config.json"))


# --------------------------------------------------------------------------------------------------
# 1-2: gradients reach only the method's parameters; the frozen base stays bit-identical


@pytest.mark.parametrize("case", CASES)
def test_only_method_parameters_get_gradients(base_dir, case):
    model = _applied(base_dir, case).train()
    _randomise(model)  # LoRA's B = 0 would leave A without gradient
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
    model = _applied(base_dir, case)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model)
    trainable = set(model.peft.trainable)
    for name, param in model.named_parameters():
        if name in trainable:
            # LoRA's A gets no gradient while B is still 0 at step 1, but moves afterwards
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"{name} changed"


# --------------------------------------------------------------------------------------------------
# 3: exact trainable-parameter counts (t5-small: L=6 per stack, d_model=inner=512, 8 heads of 64)


def _lora_qv_t5_small(r: int) -> int:
    return 18 * 2 * r * (512 + 512)  # q and v of 6 encoder self, 6 decoder self, 6 decoder cross attentions


def _deep_direct(layers: int, n: int, inner: int = 512) -> int:
    return layers * 2 * n * inner


def _deep_projected(layers: int, n: int, hidden: int, d_model: int = 512, inner: int = 512) -> int:
    return n * d_model + (d_model * hidden + hidden) + (hidden * layers * 2 * inner + layers * 2 * inner)


COUNTS = [
    ("prompt", {}, 20 * 512, 10_240),
    ("prompt", dict(num_virtual_tokens=100, num_transformer_submodules=2), 100 * 2 * 512, 102_400),
    ("ptuning2", {}, 3 * _deep_direct(6, 20), 368_640),
    ("ptuning2", dict(num_virtual_tokens=16, decoder_cross=False), 2 * _deep_direct(6, 16), 196_608),
    ("ptuning2", dict(prefix_projection=True), 3 * _deep_projected(6, 20, 512), 10_274_304),
    (
        "ptuning2",
        dict(prefix_projection=True, encoder_hidden_size=64, encoder_self=False),
        2 * _deep_projected(6, 20, 64),
        884_864,
    ),
    ("lora+prompt", {}, _lora_qv_t5_small(8) + 20 * 512, 305_152),
]


@pytest.mark.parametrize(("method", "options", "formula", "expected"), COUNTS)
def test_trainable_parameter_count_t5_small(t5_small_dir, method, options, formula, expected):
    model = apply_method(_t5_small_meta(t5_small_dir), method, **options)
    counts = count_parameters(model)
    assert formula == expected
    assert counts["trainable"] == expected
    assert counts["base"] == 60_506_624


@pytest.mark.parametrize("submodules", [1, 2])
def test_prompt_count_equals_peft(base_dir, submodules):
    options = dict(num_virtual_tokens=7, num_transformer_submodules=submodules)
    ours = count_parameters(apply_method(load_pretrained(base_dir), "prompt", **options))["trainable"]
    config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", **options)
    theirs = peft.get_peft_model(_reference_base(), config).get_nb_trainable_parameters()[0]
    assert ours == theirs == 7 * submodules * 64


# --------------------------------------------------------------------------------------------------
# 4: save -> load into a fresh base gives identical logits


@pytest.mark.parametrize("case", CASES)
def test_save_load_identical_logits(base_dir, case, tmp_path):
    model = _applied(base_dir, case)
    _randomise(model)
    expected = _logits(model, _batch())
    save_adapter(model, tmp_path)
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    assert torch.equal(_logits(loaded, _batch()), expected)
    assert count_parameters(loaded)["trainable"] > 0


def test_projected_prefixes_are_folded_when_saved(base_dir, tmp_path):
    model = _applied(base_dir, "ptuning2-projected")
    assert all(isinstance(m, ProjectedDeepPrefix) for m in _prefix_modules(model))
    _train(model)
    expected = _logits(model, _batch())
    save_adapter(model, tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    prefix = "base_model.model."
    sites = ("encoder.self_prefix", "decoder.self_prefix", "decoder.cross_prefix")
    assert sorted(tensors) == sorted(f"{prefix}{site}.prefixes" for site in sites)
    assert tensors[f"{prefix}encoder.self_prefix.prefixes"].shape == (2, 2, 4, 3, 16)
    assert tensors[f"{prefix}decoder.cross_prefix.prefixes"].shape == (3, 2, 4, 3, 16)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["prefix_projection"] is True  # as trained

    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    assert loaded.peft.method.config.prefix_projection is False
    assert all(type(m) is DeepPrefix for m in _prefix_modules(loaded))
    assert sorted(loaded.peft.trainable) == sorted(f"{site}.prefixes" for site in sites)
    assert torch.equal(_logits(loaded, _batch()), expected)


def test_hybrid_file_holds_both_sets(base_dir, tmp_path):
    model = _applied(base_dir, "lora+prompt")
    save_adapter(model, tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "prompt_embeddings" in keys
    assert "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight" in keys
    assert "base_model.model.decoder.block.2.layer.1.EncDecAttention.v.lora_B.weight" in keys
    assert len(keys) == 1 + 2 * 2 * (2 + 3 + 3)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "T5PEFT_LORA_PROMPT"
    assert config["prompt_lr"] == 0.3 and config["r"] == 4 and config["num_virtual_tokens"] == 3
    assert "skip_init" not in config


# --------------------------------------------------------------------------------------------------
# 5: none of these is neutral when untrained


@pytest.mark.parametrize("case", CASES)
def test_untrained_method_changes_logits(base_dir, case):
    """Prompts add encoder positions and deep prompts add attention keys: the logits always move."""
    base = load_pretrained(base_dir)
    expected = _logits(base, _batch())
    model = _applied(base_dir, case)
    assert not torch.allclose(_logits(model, _batch()), expected, atol=1e-3)


def test_untrained_hybrid_equals_its_prompt_alone(base_dir):
    hybrid = _applied(base_dir, "lora+prompt")
    prompt_only = apply_method(load_pretrained(base_dir), "prompt", num_virtual_tokens=3)
    with torch.no_grad():
        prompt_only.encoder.input_prefix.prompt_embeddings.copy_(hybrid.encoder.input_prefix.prompt_embeddings)
    assert torch.equal(_logits(hybrid, _batch()), _logits(prompt_only, _batch()))


# --------------------------------------------------------------------------------------------------
# 6: Hugging Face PEFT interop (prompt tuning), PEFT's refusal of our own formats


@pytest.mark.parametrize("submodules", [1, 2])
def test_prompt_file_loads_in_peft_with_same_logits(base_dir, tmp_path, submodules):
    model = apply_method(
        load_pretrained(base_dir), "prompt", num_virtual_tokens=6, num_transformer_submodules=submodules
    )
    _randomise(model)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["num_transformer_submodules"] == submodules
    assert (config["token_dim"], config["num_layers"], config["num_attention_heads"]) == (64, 2, 4)
    reference = peft.PeftModel.from_pretrained(_reference_base(), tmp_path).eval()
    batch = _batch()
    with torch.no_grad():
        expected = reference(**batch).logits
    assert relative_error(_logits(model, batch), expected) <= TOLERANCE


@pytest.mark.parametrize("submodules", [1, 2])
def test_peft_prompt_file_loads_with_same_logits(base_dir, tmp_path, submodules):
    config = peft.PromptTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5, num_transformer_submodules=submodules
    )
    reference = peft.get_peft_model(_reference_base(), config)
    with torch.no_grad():
        for param in reference.prompt_encoder.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    reference.save_pretrained(tmp_path)
    reference.eval()
    batch = _batch()
    with torch.no_grad():
        expected = reference(**batch).logits
    model = load_adapter(load_pretrained(base_dir), tmp_path)
    assert model.encoder.input_prefix.prompt_embeddings.shape == (5 * submodules, 64)
    assert relative_error(_logits(model, batch), expected) <= TOLERANCE


@pytest.mark.parametrize("case", ["ptuning2", "lora+prompt"])
def test_peft_refuses_our_own_formats(base_dir, tmp_path, case):
    save_adapter(_applied(base_dir, case), tmp_path)
    with pytest.raises(Exception):  # noqa: B017  (PEFT's own error, whatever its class)
        peft.PeftModel.from_pretrained(_reference_base(), tmp_path)


# --------------------------------------------------------------------------------------------------
# Prompt tuning specifics


def test_prompt_without_mask_equals_mask_of_ones(base_dir):
    model = _applied(base_dir, "prompt")
    batch = _batch()
    ids = batch["input_ids"]
    with_mask = _logits(model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=batch["labels"]))
    assert torch.equal(_logits(model, dict(input_ids=ids, labels=batch["labels"])), with_mask)
    encoder_states, mask = model.encode(ids)
    assert encoder_states.shape[1] == ids.shape[1] + 5
    assert mask.shape == (3, 14) and bool(mask.all())


def test_prompt_extends_the_mask_and_ignores_padding(base_dir):
    """Padding stays masked behind the prompt: changing padded tokens does not change the logits."""
    model = _applied(base_dir, "prompt")
    batch = _batch()
    _, mask = model.encode(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(mask, torch.cat([torch.ones(3, 5, dtype=mask.dtype), batch["attention_mask"]], dim=1))
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7))
    assert torch.equal(_logits(model, changed), _logits(model, batch))


def test_prompt_sample_vocab_copies_rows_of_real_pieces():
    """Rows are embeddings of sentencepiece ids (< 32000): never sentinels nor padding rows; seeded."""
    config = T5Config(vocab_size=32128, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=4)
    torch.manual_seed(0)
    model = apply_method(T5ForConditionalGeneration(config), "prompt", num_virtual_tokens=200)
    rows = model.encoder.input_prefix.prompt_embeddings
    matches = (rows[:, None, :] == model.shared.weight[None]).all(-1)  # [rows, vocab]
    ids = matches.float().argmax(1)
    assert bool(matches.any(1).all()) and int(ids.max()) < SAMPLE_VOCAB_LIMIT
    assert len(set(ids.tolist())) > 190
    torch.manual_seed(0)
    again = apply_method(T5ForConditionalGeneration(config), "prompt", num_virtual_tokens=200)
    assert torch.equal(again.encoder.input_prefix.prompt_embeddings, rows)


def test_prompt_random_init_is_standard_normal(base_dir):
    model = apply_method(load_pretrained(base_dir), "prompt", num_virtual_tokens=50, prompt_tuning_init="RANDOM")
    rows = model.encoder.input_prefix.prompt_embeddings
    assert abs(rows.std().item() - 1.0) < 0.1 and abs(rows.mean().item()) < 0.1


def test_prompt_text_init_matches_peft(t5_small_dir, tokenizer, tmp_path):
    """PEFT's TEXT initialisation (its own tokenizer, ids repeated to 2n rows) equals ours, path or ids."""
    base_dir = tmp_path / "full-vocabulary"
    hf_model(seed=5).save_pretrained(base_dir)
    text = "Classify the sentiment of this review"
    ids = tokenizer.encode(text)[0]
    assert len(ids) < 9 < 2 * len(ids)
    peft_config = peft.PromptTuningConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=9,
        num_transformer_submodules=2,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(t5_small_dir),
    )
    reference = peft.get_peft_model(hf_model(seed=5), peft_config)
    expected = reference.prompt_encoder["default"].embedding.weight.detach()
    common = dict(num_virtual_tokens=9, num_transformer_submodules=2, prompt_tuning_init="TEXT")
    by_path = apply_method(
        load_pretrained(base_dir),
        "prompt",
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(t5_small_dir),
        **common,
    )
    by_ids = apply_method(load_pretrained(base_dir), "prompt", prompt_tuning_init_ids=ids, **common)
    assert torch.equal(by_path.encoder.input_prefix.prompt_embeddings, expected)
    assert torch.equal(by_ids.encoder.input_prefix.prompt_embeddings, expected)
    common.update(num_virtual_tokens=2)  # 4 rows: the ids cut, not repeated
    short = apply_method(load_pretrained(base_dir), "prompt", prompt_tuning_init_ids=ids, **common)
    assert torch.equal(short.encoder.input_prefix.prompt_embeddings, by_ids.shared.weight[ids[:4]])


def test_prompt_text_file_loads_without_its_tokenizer(base_dir, tmp_path):
    options = dict(num_virtual_tokens=4, prompt_tuning_init="TEXT")
    model = apply_method(load_pretrained(base_dir), "prompt", prompt_tuning_init_ids=[5, 6, 7], **options)
    save_adapter(model, tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    del config["prompt_tuning_init_ids"]
    config.update(prompt_tuning_init_text="some text", tokenizer_name_or_path=str(tmp_path / "no-such-tokenizer"))
    config_path.write_text(json.dumps(config))
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    assert torch.equal(_logits(loaded, _batch()), _logits(model, _batch()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_virtual_tokens=0), "num_virtual_tokens"),
        (dict(prompt_tuning_init="WORDS"), "prompt_tuning_init"),
        (dict(prompt_tuning_init="TEXT"), "prompt_tuning_init_ids"),
        (dict(prompt_tuning_init="TEXT", prompt_tuning_init_text="hi"), "tokenizer_name_or_path"),
        (dict(prompt_tuning_init_ids=[3, 4]), "only used with"),
        (dict(prompt_tuning_init="TEXT", prompt_tuning_init_ids=[]), "non-empty"),
        (dict(prompt_tuning_init="TEXT", prompt_tuning_init_ids=[40000]), "outside the vocabulary"),
        (dict(num_transformer_submodules=3), "num_transformer_submodules"),
        (dict(token_dim=512), "token_dim=512"),
        (dict(wrong=1), "no option 'wrong'"),
    ],
)
def test_prompt_config_errors(base_dir, options, message):
    with pytest.raises(MethodConfigError, match=message):
        apply_method(load_pretrained(base_dir), "prompt", **options)


def test_prompt_file_for_another_model_is_refused(base_dir, tmp_path):
    save_adapter(_applied(base_dir, "prompt"), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(config | {"num_layers": 6}))
    with pytest.raises(MethodConfigError, match="num_layers=6"):
        load_adapter(load_pretrained(base_dir), tmp_path)


# --------------------------------------------------------------------------------------------------
# Deep prompt specifics


def _prefix_modules(model) -> list[nn.Module]:
    found = [model.encoder.self_prefix, model.decoder.self_prefix, model.decoder.cross_prefix]
    return [m for m in found if m is not None]


@pytest.mark.parametrize("site", ["encoder_self", "decoder_self", "decoder_cross"])
@pytest.mark.parametrize("projected", [False, True])
def test_switching_a_site_off_removes_exactly_its_parameters(base_dir, site, projected):
    options = dict(num_virtual_tokens=3, prefix_projection=projected)
    everything = set(apply_method(load_pretrained(base_dir), "ptuning2", **options).peft.trainable)
    without = set(apply_method(load_pretrained(base_dir), "ptuning2", **options, **{site: False}).peft.trainable)
    owner = ".".join(SITES[site]) + "."  # e.g. "decoder.cross_prefix."
    assert without < everything
    removed = everything - without
    assert removed and removed == {n for n in everything if n.startswith(owner)}


def test_deep_prompt_output_shapes(base_dir):
    model = _applied(base_dir, "ptuning2-projected")
    assert model.encoder.self_prefix().shape == (2, 2, 4, 3, 16)
    assert model.decoder.self_prefix().shape == (3, 2, 4, 3, 16)
    assert model.decoder.cross_prefix().shape == (3, 2, 4, 3, 16)


def test_deep_prompt_config_errors(base_dir):
    with pytest.raises(MethodConfigError, match="enable at least one"):
        apply_method(load_pretrained(base_dir), "ptuning2", encoder_self=False, decoder_self=False, decoder_cross=False)
    with pytest.raises(MethodConfigError, match="encoder_hidden_size"):
        apply_method(load_pretrained(base_dir), "ptuning2", prefix_projection=True, encoder_hidden_size=0)


@pytest.mark.parametrize("case", ["ptuning2", "ptuning2-projected", "lora+prompt", "prompt"])
def test_cached_generation_equals_uncached_greedy(base_dir, case):
    model = _applied(base_dir, case).eval()
    _randomise(model)
    batch = _batch()
    generated = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6)
    tokens = generated[:, :1]
    with torch.no_grad():
        for _ in range(generated.shape[1] - 1):
            logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=tokens).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    eos = model.config.eos_token_id
    for row in range(tokens.shape[0]):  # generate pads after EOS; compare up to it
        stop = (tokens[row] == eos).nonzero()
        end = int(stop[0]) + 1 if len(stop) else tokens.shape[1]
        assert torch.equal(generated[row, :end], tokens[row, :end])


def test_decoder_self_prefixes_equal_peft_prefix_tuning_without_position_bias(base_dir, tmp_path):
    """Same prefixes give the same logits as PEFT's PREFIX_TUNING once the decoder's position bias is zero.

    With the bias on they differ by design: transformers gives PEFT's prefixes relative position bias as
    earlier decoder positions, t5peft gives them none (see ``t5peft.methods.ptuning2``). PEFT's default
    num_transformer_submodules=2 is used: with 1, PEFT passes T5 a self-attention-only cache that fails
    with a padding mask. Each layer's prefix is read from the cache PEFT builds, whatever its layout.
    """
    n = 4
    reference_base = _reference_base()
    with torch.no_grad():
        reference_base.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
    reference_base.save_pretrained(tmp_path / "base")
    config = peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=n, num_layers=3)
    reference = peft.get_peft_model(reference_base, config).eval()
    with torch.no_grad():
        weight = reference.prompt_encoder["default"].embedding.weight
        weight.copy_(torch.randn_like(weight))
        layers = reference.get_prompt(1).self_attention_cache.layers
        prefixes = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in layers])
    assert prefixes.shape == (3, 2, 4, n, 16)
    options = dict(num_virtual_tokens=n, encoder_self=False, decoder_cross=False)
    model = apply_method(load_pretrained(tmp_path / "base"), "ptuning2", **options)
    with torch.no_grad():
        model.decoder.self_prefix.prefixes.copy_(prefixes)
    batch = dict(_batch())
    batch["decoder_input_ids"] = model.shift_right(batch.pop("labels"))
    with torch.no_grad():
        expected = reference(**batch).logits
    assert relative_error(_logits(model, batch), expected) <= TOLERANCE
    with torch.no_grad():
        model.decoder.self_prefix.prefixes.mul_(1.5)
    assert relative_error(_logits(model, batch), expected) > 1e-3


# --------------------------------------------------------------------------------------------------
# Hybrid specifics


def test_hybrid_param_groups(base_dir):
    model = _applied(base_dir, "lora+prompt")
    groups = model.peft.method.param_groups(model, 2e-3, 0.05)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(2e-3, 0.05), (0.3, 0.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    lora_names = {names[id(p)] for p in groups[0]["params"]}
    assert [names[id(p)] for p in groups[1]["params"]] == [PROMPT_MODEL_KEY]
    assert lora_names == set(model.peft.trainable) - {PROMPT_MODEL_KEY}
    assert all(".lora_A." in n or ".lora_B." in n for n in lora_names) and len(lora_names) == 2 * 2 * 8
    custom = apply_method(load_pretrained(base_dir), "lora+prompt", prompt_lr=0.1)
    assert custom.peft.method.param_groups(custom, 1e-3, 0.0)[1]["lr"] == 0.1
    assert model.peft.method.default_lr == 1e-3


def test_hybrid_trains_each_group_at_its_rate(base_dir):
    """One AdamW step moves each parameter by about its group's learning rate (Adam's normalised step)."""
    model = _applied(base_dir, "lora+prompt").train()
    _randomise(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.peft.method.param_groups(model, 1e-3, 0.0))
    model(**_batch()).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name in before:
            step = (param.detach() - before[name]).abs().max().item()
            rate = 0.3 if name == PROMPT_MODEL_KEY else 1e-3
            assert rate * 0.9 < step < rate * 1.1, name


def test_prompt_and_hybrid_config_errors(base_dir):
    with pytest.raises(MethodConfigError, match="prompt_lr"):
        apply_method(load_pretrained(base_dir), "lora+prompt", prompt_lr=0)
    with pytest.raises(MethodConfigError, match="r must be"):
        apply_method(load_pretrained(base_dir), "lora+prompt", r=0)
    with pytest.raises(MethodConfigError, match="prompt_tuning_init"):
        apply_method(load_pretrained(base_dir), "lora+prompt", prompt_tuning_init="nope")
