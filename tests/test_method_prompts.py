"""Prompt tuning, deep prompts (P-Tuning v2) and the LoRA + prompt hybrid: what is special to each.

What every method must do (gradients, frozen base, counts, save/load, what an untrained one does to the logits,
PEFT interop for prompt tuning and PEFT's refusal of the others) is checked by ``test_method_contract.py``.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import TINY, TINY_T5, logits, perturb, relative_error, train_steps
from helpers import tiny_batch as _batch
from method_cases import applied
from oracles import hf_model, peft_model
from t5peft import T5Config, T5ForConditionalGeneration, apply_method, load_adapter, load_pretrained, save_adapter
from t5peft.cli import main as cli_main
from t5peft.methods import MethodConfigError
from t5peft.methods.declarations.prompt import PROMPT_MODEL_KEY
from t5peft.methods.declarations.ptuning2 import SITES
from t5peft.methods.prompt import SAMPLE_VOCAB_LIMIT
from t5peft.methods.ptuning2 import DeepPrefix, ProjectedDeepPrefix

TOLERANCE = 1e-5
VOCAB = TINY_T5["vocab_size"]  # a small vocabulary keeps the tests fast; the real tokenizer's ids need the full one


# --------------------------------------------------------------------------------------------------
# Files: folded prefixes, the hybrid's two sets, the model's dimensions


def test_projected_prefixes_are_folded_when_saved(tiny_base_dir, tmp_path):
    model = applied(tiny_base_dir, "ptuning2-projected")
    assert all(isinstance(m, ProjectedDeepPrefix) for m in _prefix_modules(model))
    train_steps(model, _batch, 3)
    expected = logits(model, _batch())
    save_adapter(model, tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    prefix = "base_model.model."
    sites = ("encoder.self_prefix", "decoder.self_prefix", "decoder.cross_prefix")
    assert sorted(tensors) == sorted(f"{prefix}{site}.prefixes" for site in sites)
    assert tensors[f"{prefix}encoder.self_prefix.prefixes"].shape == (2, 2, 4, 3, 16)
    assert tensors[f"{prefix}decoder.cross_prefix.prefixes"].shape == (3, 2, 4, 3, 16)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["prefix_projection"] is True  # as trained

    loaded = load_adapter(load_pretrained(tiny_base_dir), tmp_path)
    assert loaded.peft.method.config.prefix_projection is False
    assert all(type(m) is DeepPrefix for m in _prefix_modules(loaded))
    assert sorted(loaded.peft.trainable) == sorted(f"{site}.prefixes" for site in sites)
    assert torch.equal(logits(loaded, _batch()), expected)


def test_hybrid_file_holds_both_sets(tiny_base_dir, tmp_path):
    model = applied(tiny_base_dir, "lora+prompt")
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


def test_untrained_hybrid_equals_its_prompt_alone(tiny_base_dir):
    hybrid = applied(tiny_base_dir, "lora+prompt")
    prompt_only = apply_method(load_pretrained(tiny_base_dir), "prompt", num_virtual_tokens=3)
    with torch.no_grad():
        prompt_only.encoder.input_prefix.prompt_embeddings.copy_(hybrid.encoder.input_prefix.prompt_embeddings)
    assert torch.equal(logits(hybrid, _batch()), logits(prompt_only, _batch()))


@pytest.mark.parametrize("submodules", [1, 2])
def test_prompt_file_records_the_model_dimensions(tiny_base_dir, tmp_path, submodules):
    """PEFT writes token_dim, num_layers and num_attention_heads; so do we (PEFT reads our file: the contract)."""
    model = apply_method(
        load_pretrained(tiny_base_dir), "prompt", num_virtual_tokens=6, num_transformer_submodules=submodules
    )
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["num_transformer_submodules"] == submodules
    assert (config["token_dim"], config["num_layers"], config["num_attention_heads"]) == (64, 2, 4)
    assert model.encoder.input_prefix.prompt_embeddings.shape == (6 * submodules, 64)


# --------------------------------------------------------------------------------------------------
# Prompt tuning: masks, initialisations, options, loading without the tokenizer, files of another model


def test_prompt_without_mask_equals_mask_of_ones(tiny_base_dir):
    model = applied(tiny_base_dir, "prompt")
    batch = _batch()
    ids = batch["input_ids"]
    with_mask = logits(model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=batch["labels"]))
    assert torch.equal(logits(model, dict(input_ids=ids, labels=batch["labels"])), with_mask)
    encoder_states, mask = model.encode(ids)
    assert encoder_states.shape[1] == ids.shape[1] + 5
    assert mask.shape == (3, 14) and bool(mask.all())


def test_prompt_extends_the_mask_and_ignores_padding(tiny_base_dir):
    """Padding stays masked behind the prompt: changing padded tokens does not change the logits."""
    model = applied(tiny_base_dir, "prompt")
    batch = _batch()
    _, mask = model.encode(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(mask, torch.cat([torch.ones(3, 5, dtype=mask.dtype), batch["attention_mask"]], dim=1))
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7))
    assert torch.equal(logits(model, changed), logits(model, batch))


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


def test_prompt_random_init_is_standard_normal(tiny_base_dir):
    model = apply_method(load_pretrained(tiny_base_dir), "prompt", num_virtual_tokens=50, prompt_tuning_init="RANDOM")
    rows = model.encoder.input_prefix.prompt_embeddings
    assert abs(rows.std().item() - 1.0) < 0.1 and abs(rows.mean().item()) < 0.1


def test_prompt_text_init_matches_peft(t5_small_dir, tokenizer, hf_base_dir):
    """PEFT's TEXT initialisation (its own tokenizer, ids repeated to 2n rows) equals ours, path or ids."""
    peft = pytest.importorskip("peft")
    full_vocabulary = hf_base_dir
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
    reference = peft_model(full_vocabulary, peft_config)
    expected = reference.prompt_encoder["default"].embedding.weight.detach()
    common = dict(num_virtual_tokens=9, num_transformer_submodules=2, prompt_tuning_init="TEXT")
    by_path = apply_method(
        load_pretrained(full_vocabulary),
        "prompt",
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(t5_small_dir),
        **common,
    )
    by_ids = apply_method(load_pretrained(full_vocabulary), "prompt", prompt_tuning_init_ids=ids, **common)
    assert torch.equal(by_path.encoder.input_prefix.prompt_embeddings, expected)
    assert torch.equal(by_ids.encoder.input_prefix.prompt_embeddings, expected)
    common.update(num_virtual_tokens=2)  # 4 rows: the ids cut, not repeated
    short = apply_method(load_pretrained(full_vocabulary), "prompt", prompt_tuning_init_ids=ids, **common)
    assert torch.equal(short.encoder.input_prefix.prompt_embeddings, by_ids.shared.weight[ids[:4]])


def test_prompt_text_file_loads_without_its_tokenizer(tiny_base_dir, tmp_path):
    options = dict(num_virtual_tokens=4, prompt_tuning_init="TEXT")
    model = apply_method(load_pretrained(tiny_base_dir), "prompt", prompt_tuning_init_ids=[5, 6, 7], **options)
    save_adapter(model, tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    del config["prompt_tuning_init_ids"]
    config.update(prompt_tuning_init_text="some text", tokenizer_name_or_path=str(tmp_path / "no-such-tokenizer"))
    config_path.write_text(json.dumps(config))
    loaded = load_adapter(load_pretrained(tiny_base_dir), tmp_path)
    assert torch.equal(logits(loaded, _batch()), logits(model, _batch()))


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
def test_prompt_config_errors(tiny_base_dir, options, message):
    with pytest.raises(MethodConfigError, match=message):
        apply_method(load_pretrained(tiny_base_dir), "prompt", **options)


@pytest.mark.parametrize(
    ("method", "loader_flag"), [("prompt", "skip_init"), ("lora+prompt", "skip_init"), ("ptuning", "load_table")]
)
def test_loading_flags_are_not_options(tiny_base_dir, tmp_path, capsys, method, loader_flag):
    """How a file is loaded (an uninitialised prompt, P-tuning's table) is the loader's business: a user option of
    that name is unknown, from the Python API and from ``train -o`` (exit 2, one line): nothing trains a zero prompt."""
    with pytest.raises(MethodConfigError, match=f"method '{re.escape(method)}' has no option '{loader_flag}'"):
        apply_method(load_pretrained(tiny_base_dir), method, **{loader_flag: True})
    code = cli_main(
        [
            "train",
            "--model",
            str(TINY),
            "--output",
            str(tmp_path / "run"),
            "--method",
            method,
            "-o",
            f"{loader_flag}=true",
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "run").exists()
    assert error.count("\n") == 1 and f"has no option '{loader_flag}'" in error, error


def test_prompt_file_for_another_model_is_refused(tiny_base_dir, tmp_path):
    save_adapter(applied(tiny_base_dir, "prompt"), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(config | {"num_layers": 6}))
    with pytest.raises(MethodConfigError, match="num_layers=6"):
        load_adapter(load_pretrained(tiny_base_dir), tmp_path)


# --------------------------------------------------------------------------------------------------
# Deep prompts: sites, shapes, options, cached generation, PEFT's prefixes without position bias


def _prefix_modules(model) -> list[nn.Module]:
    found = [model.encoder.self_prefix, model.decoder.self_prefix, model.decoder.cross_prefix]
    return [m for m in found if m is not None]


@pytest.mark.parametrize("site", ["encoder_self", "decoder_self", "decoder_cross"])
@pytest.mark.parametrize("projected", [False, True])
def test_switching_a_site_off_removes_exactly_its_parameters(tiny_base_dir, site, projected):
    options = dict(num_virtual_tokens=3, prefix_projection=projected)
    everything = set(apply_method(load_pretrained(tiny_base_dir), "ptuning2", **options).peft.trainable)
    without = set(apply_method(load_pretrained(tiny_base_dir), "ptuning2", **options, **{site: False}).peft.trainable)
    owner = ".".join(SITES[site]) + "."  # e.g. "decoder.cross_prefix."
    assert without < everything
    removed = everything - without
    assert removed and removed == {n for n in everything if n.startswith(owner)}


def test_deep_prompt_output_shapes(tiny_base_dir):
    model = applied(tiny_base_dir, "ptuning2-projected")
    assert model.encoder.self_prefix().shape == (2, 2, 4, 3, 16)
    assert model.decoder.self_prefix().shape == (3, 2, 4, 3, 16)
    assert model.decoder.cross_prefix().shape == (3, 2, 4, 3, 16)


def test_deep_prompt_config_errors(tiny_base_dir):
    with pytest.raises(MethodConfigError, match="enable at least one"):
        apply_method(
            load_pretrained(tiny_base_dir), "ptuning2", encoder_self=False, decoder_self=False, decoder_cross=False
        )
    with pytest.raises(MethodConfigError, match="encoder_hidden_size"):
        apply_method(load_pretrained(tiny_base_dir), "ptuning2", prefix_projection=True, encoder_hidden_size=0)


@pytest.mark.parametrize("case", ["ptuning2", "ptuning2-projected", "lora+prompt", "prompt"])
def test_cached_generation_equals_uncached_greedy(tiny_base_dir, case):
    model = applied(tiny_base_dir, case).eval()
    perturb(model)
    batch = _batch()
    generated = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6)
    tokens = generated[:, :1]
    with torch.no_grad():
        for _ in range(generated.shape[1] - 1):
            step = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=tokens).logits
            tokens = torch.cat([tokens, step[:, -1].argmax(-1, keepdim=True)], dim=1)
    eos = model.config.eos_token_id
    for row in range(tokens.shape[0]):  # generate pads after EOS; compare up to it
        stop = (tokens[row] == eos).nonzero()
        end = int(stop[0]) + 1 if len(stop) else tokens.shape[1]
        assert torch.equal(generated[row, :end], tokens[row, :end])


def test_decoder_self_prefixes_equal_peft_prefix_tuning_without_position_bias(tiny_base_dir, tmp_path):
    """Same prefixes give the same logits as PEFT's PREFIX_TUNING once the decoder's position bias is zero.

    With the bias on they differ by design: transformers gives PEFT's prefixes relative position bias as
    earlier decoder positions, t5peft gives them none (see ``t5peft.methods.ptuning2``). PEFT's default
    num_transformer_submodules=2 is used: with 1, PEFT passes T5 a self-attention-only cache that fails
    with a padding mask. Each layer's prefix is read from the cache PEFT builds, whatever its layout.
    """
    peft = pytest.importorskip("peft")
    n = 4
    reference_base = hf_model(seed=4, num_decoder_layers=3, vocab_size=VOCAB)
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
    batch = _batch()
    expected = logits(reference, batch)
    assert relative_error(logits(model, batch), expected) <= TOLERANCE
    with torch.no_grad():
        model.decoder.self_prefix.prefixes.mul_(1.5)
    assert relative_error(logits(model, batch), expected) > 1e-3


# --------------------------------------------------------------------------------------------------
# LoRA + prompt: an optimizer group each, at its own rate; options


def test_hybrid_param_groups(tiny_base_dir):
    model = applied(tiny_base_dir, "lora+prompt")
    groups = model.peft.method.param_groups(model, 2e-3, 0.05)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(2e-3, 0.05), (0.3, 0.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    lora_names = {names[id(p)] for p in groups[0]["params"]}
    assert [names[id(p)] for p in groups[1]["params"]] == [PROMPT_MODEL_KEY]
    assert lora_names == set(model.peft.trainable) - {PROMPT_MODEL_KEY}
    assert all(".lora_A." in n or ".lora_B." in n for n in lora_names) and len(lora_names) == 2 * 2 * 8
    custom = apply_method(load_pretrained(tiny_base_dir), "lora+prompt", prompt_lr=0.1)
    assert custom.peft.method.param_groups(custom, 1e-3, 0.0)[1]["lr"] == 0.1
    assert model.peft.method.default_lr == 1e-3


def test_hybrid_trains_each_group_at_its_rate(tiny_base_dir):
    """One AdamW step moves each parameter by about its group's learning rate (Adam's normalised step)."""
    model = applied(tiny_base_dir, "lora+prompt").train()
    perturb(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.peft.method.param_groups(model, 1e-3, 0.0))
    model(**_batch()).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name in before:
            step = (param.detach() - before[name]).abs().max().item()
            rate = 0.3 if name == PROMPT_MODEL_KEY else 1e-3
            assert rate * 0.9 < step < rate * 1.1, name


def test_prompt_and_hybrid_config_errors(tiny_base_dir):
    with pytest.raises(MethodConfigError, match="prompt_lr"):
        apply_method(load_pretrained(tiny_base_dir), "lora+prompt", prompt_lr=0)
    with pytest.raises(MethodConfigError, match="r must be"):
        apply_method(load_pretrained(tiny_base_dir), "lora+prompt", r=0)
    with pytest.raises(MethodConfigError, match="prompt_tuning_init"):
        apply_method(load_pretrained(tiny_base_dir), "lora+prompt", prompt_tuning_init="nope")
