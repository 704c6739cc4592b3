"""The method contract: what every registered method must do, checked on each case of the table below.

For every case (a method and its options) on a tiny random T5: gradients reach exactly the parameters the method
trains; after training steps the frozen base is bit-identical and every trained tensor moved; the trainable count
equals the method's closed form (``Method.closed_form_trainable``) on the tiny T5, on a gated untied T5 v1.1 and on
t5-small (where it must also equal the number the method's docstring and the README state); ``save_trained`` ->
``load_trained`` gives identical logits; an untrained method leaves the logits exactly unchanged where it claims
to (``Method.identity_at_init``) and moves them where it does not; and for a method with a Hugging Face PEFT format
(``Method.peft_compatible``) PEFT loads what t5peft saves and t5peft loads what PEFT saves, to the same logits
(relative error <= 1e-5, float32) and the same trainable count, while a method without one writes nothing PEFT
takes for its own.

A new method is covered by one entry in ``CONTRACTS`` (``test_every_registered_method_has_a_contract`` fails until
it has one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from helpers import logits, perturb, relative_error, t5_small_meta, tiny_config, train_steps
from helpers import tiny_batch as _batch
from t5peft import T5Config, T5ForConditionalGeneration, apply_method, count_parameters, load_pretrained
from t5peft.methods import load_trained, method_names, save_trained
from t5peft.methods.registry import METHODS, get_method_class

TOLERANCE = 1e-5
T5_SMALL_PARAMETERS = 60_506_624
SEQ2SEQ = "SEQ_2_SEQ_LM"

PeftConfigBuilder = Callable[[Any, dict[str, Any]], Any]  # (the peft module, a case's options) -> a PEFT config


@dataclass(frozen=True)
class Contract:
    """One method's entry: its cases, its t5-small counts, and (with a PEFT format) how PEFT spells a case."""

    # case id -> options on the tiny T5 (each case runs every check)
    cases: dict[str, dict[str, Any]]
    # (options, trainable parameters on t5-small): the numbers stated in the method's docstring; defaults first
    t5_small: tuple[tuple[dict[str, Any], int], ...]
    # the PEFT config equal to a case's options; given exactly when the method is ``peft_compatible``
    peft_config: PeftConfigBuilder | None = None


def _peft_as_is(config_name: str, **defaults: Any) -> PeftConfigBuilder:
    """A builder passing a case's options to PEFT's ``config_name`` unchanged (over ``defaults``, where t5peft's
    defaults differ from PEFT's)."""
    return lambda peft, options: getattr(peft, config_name)(task_type=SEQ2SEQ, **{**defaults, **options})


CONTRACTS: dict[str, Contract] = {
    "full": Contract(cases={"full": {}}, t5_small=(({}, T5_SMALL_PARAMETERS),)),
    "lora": Contract(
        cases={"lora": dict(r=4, lora_alpha=8, target_modules=["q", "v", "wo"])},
        t5_small=(({}, 294_912),),
        peft_config=_peft_as_is("LoraConfig"),
    ),
    "adalora": Contract(
        # a schedule that prunes from the third step on; PEFT needs total_step
        cases={
            "adalora": dict(
                init_r=4, target_r=2, tinit=1, total_step=50, target_modules=["k", "o", "q", "v", "wi", "wo"]
            )
        },
        t5_small=(({}, 1_623_168),),
        peft_config=_peft_as_is("AdaLoraConfig"),
    ),
    "adapter": Contract(
        cases={
            "adapter-pfeiffer": {},
            "adapter-houlsby": dict(placement="houlsby", non_linearity="gelu", reduction_factor=8),
        },
        t5_small=(({}, 399_744), (dict(placement="houlsby"), 999_360)),
    ),
    "prompt": Contract(
        cases={
            "prompt": dict(num_virtual_tokens=5),
            "prompt-2-submodules": dict(num_virtual_tokens=4, num_transformer_submodules=2),
        },
        t5_small=(({}, 10_240), (dict(num_virtual_tokens=100, num_transformer_submodules=2), 102_400)),
        peft_config=_peft_as_is("PromptTuningConfig", num_transformer_submodules=1),  # PEFT's seq2seq default is 2
    ),
    "ptuning2": Contract(
        cases={
            "ptuning2": dict(num_virtual_tokens=3),
            "ptuning2-projected": dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=24),
            "ptuning2-encoder-only": dict(num_virtual_tokens=2, decoder_self=False, decoder_cross=False),
        },
        t5_small=(
            ({}, 368_640),
            (dict(num_virtual_tokens=16, decoder_cross=False), 196_608),
            (dict(prefix_projection=True), 10_274_304),
            (dict(prefix_projection=True, encoder_hidden_size=64, encoder_self=False), 884_864),
        ),
    ),
    "lora+prompt": Contract(cases={"lora+prompt": dict(num_virtual_tokens=3, r=4)}, t5_small=(({}, 305_152),)),
    "ia3": Contract(
        cases={
            "ia3": {},
            "ia3-custom": dict(target_modules=["q", "o", "wi", "wo"], feedforward_modules=["wi", "wo"]),
            # PEFT tests feedforward names as suffixes of the module path: "o" also makes every wo feedforward
            "ia3-suffix": dict(target_modules=["o", "wo"], feedforward_modules=["o"]),
        },
        t5_small=(({}, 43_008),),
        peft_config=_peft_as_is("IA3Config"),
    ),
}


def _cases(peft: bool | None = None) -> list:
    """Every (method, options) case, as pytest params named by case id; ``peft`` filters on a PEFT format."""
    return [
        pytest.param(method, options, id=case)
        for method, contract in CONTRACTS.items()
        if peft is None or get_method_class(method).peft_compatible == peft
        for case, options in contract.cases.items()
    ]


def _applied(base_dir, method: str, options: dict[str, Any]) -> T5ForConditionalGeneration:
    return apply_method(load_pretrained(base_dir), method, **options)


def test_every_registered_method_has_a_contract():
    assert list(CONTRACTS) == [cls.name for cls in METHODS] == method_names()
    for cls in METHODS:
        contract = CONTRACTS[cls.name]
        assert contract.cases, cls.name
        assert contract.t5_small and contract.t5_small[0][0] == {}, f"{cls.name}: t5-small count at the defaults first"
        assert (contract.peft_config is not None) == cls.peft_compatible, f"{cls.name}: PEFT config builder"
        assert isinstance(cls.identity_at_init, bool), f"{cls.name} must declare identity_at_init"


# --------------------------------------------------------------------------------------------------
# Gradients and training


@pytest.mark.parametrize(("method", "options"), _cases())
def test_gradients_reach_exactly_the_trained_parameters(tiny_base_dir, method, options):
    model = _applied(tiny_base_dir, method, options).train()
    perturb(model)  # LoRA's B = 0 would leave A without gradient
    loss = model(**_batch()).loss
    extra = model.peft.method.extra_loss(model)
    (loss if extra is None else loss + extra).backward()
    trainable = set(model.peft.trainable)
    assert trainable
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


@pytest.mark.parametrize(("method", "options"), _cases())
def test_training_moves_the_trained_tensors_and_leaves_the_base_bit_identical(tiny_base_dir, method, options):
    model = _applied(tiny_base_dir, method, options)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    train_steps(model, _batch, 3)
    trainable = set(model.peft.trainable)
    for name, param in model.named_parameters():
        if name in trainable:
            # LoRA's A gets no gradient while B is still 0 at step 1, but moves afterwards
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"{name} changed"
    for name, buffer in model.named_buffers():
        if not name.endswith("rank_mask"):  # AdaLoRA's mask is the method's own state
            assert torch.equal(buffer, buffers[name]), f"buffer {name} changed"


# --------------------------------------------------------------------------------------------------
# Parameter counts: the closed form of the method's docstring


def _count_and_closed_form(config: T5Config, method: str, options: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The count of the method applied to a meta-device T5 of ``config``, and the closed form of a fresh method."""
    with torch.device("meta"):
        model = apply_method(T5ForConditionalGeneration(config), method, **options)
    cls = get_method_class(method)
    fresh = cls(cls.config_class.from_options(dict(options), method))  # not the applied one: configs alone
    return count_parameters(model), fresh.closed_form_trainable(config)


@pytest.mark.parametrize(("method", "options"), _cases())
def test_trainable_count_is_the_closed_form(method, options):
    counts, closed_form = _count_and_closed_form(tiny_config(), method, options)
    assert counts["trainable"] == closed_form > 0


@pytest.mark.parametrize("method", list(CONTRACTS))
def test_trainable_count_is_the_closed_form_on_gated_untied_t5(method):
    config = tiny_config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=8, d_ff=96)
    counts, closed_form = _count_and_closed_form(config, method, {})
    assert counts["trainable"] == closed_form > 0


T5_SMALL_COUNTS = [
    pytest.param(method, options, expected, id=f"{method}-{i}")
    for method, contract in CONTRACTS.items()
    for i, (options, expected) in enumerate(contract.t5_small)
]


@pytest.mark.parametrize(("method", "options", "expected"), T5_SMALL_COUNTS)
def test_t5_small_count_is_the_stated_number(t5_small_dir, method, options, expected):
    config = t5_small_meta(t5_small_dir).config
    counts, closed_form = _count_and_closed_form(config, method, options)
    assert counts["trainable"] == closed_form == expected
    assert counts["base"] == T5_SMALL_PARAMETERS


# --------------------------------------------------------------------------------------------------
# Files and the untrained method


@pytest.mark.parametrize(("method", "options"), _cases())
def test_save_load_gives_identical_logits(tiny_base_dir, tmp_path, method, options):
    model = _applied(tiny_base_dir, method, options)
    perturb(model)
    batch = _batch()
    expected = logits(model, batch)
    assert not torch.allclose(expected, logits(load_pretrained(tiny_base_dir), batch)), "the method must matter"
    save_trained(model, tmp_path)
    loaded = load_trained(tmp_path, tiny_base_dir)
    assert torch.equal(logits(loaded, batch), expected)
    assert count_parameters(loaded)["trainable"] > 0


@pytest.mark.parametrize(("method", "options"), _cases())
def test_untrained_method_changes_the_logits_only_where_it_claims_to(tiny_base_dir, method, options):
    batch = _batch()
    base = logits(load_pretrained(tiny_base_dir), batch)
    untrained = logits(_applied(tiny_base_dir, method, options), batch)
    if get_method_class(method).identity_at_init:
        assert torch.equal(untrained, base)
    else:  # e.g. prompts add encoder positions, deep prompts attention keys: the logits always move
        assert not torch.allclose(untrained, base, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Hugging Face PEFT: both ways for a PEFT format, refusal otherwise


@pytest.mark.parametrize(("method", "options"), _cases(peft=True))
def test_peft_loads_what_t5peft_saves(tiny_base_dir, tmp_path, method, options):
    from oracles import peft_load

    model = _applied(tiny_base_dir, method, options)
    perturb(model)
    save_trained(model, tmp_path)
    batch = _batch()
    expected = logits(model, batch)
    assert relative_error(expected, logits(load_pretrained(tiny_base_dir), batch)) > 1e-3, "the method must matter"
    assert relative_error(logits(peft_load(tiny_base_dir, tmp_path), batch), expected) <= TOLERANCE


@pytest.mark.parametrize(("method", "options"), _cases(peft=True))
def test_t5peft_loads_what_peft_saves(tiny_base_dir, tmp_path, method, options):
    from oracles import peft_model

    peft = pytest.importorskip("peft")
    reference = peft_model(tiny_base_dir, CONTRACTS[method].peft_config(peft, options))
    theirs = reference.get_nb_trainable_parameters()[0]
    assert count_parameters(_applied(tiny_base_dir, method, options))["trainable"] == theirs
    perturb(reference)
    reference.save_pretrained(tmp_path)
    batch = _batch()
    expected = logits(reference, batch)
    loaded = load_trained(tmp_path, tiny_base_dir)
    assert count_parameters(loaded)["trainable"] == theirs
    assert relative_error(expected, logits(load_pretrained(tiny_base_dir), batch)) > 1e-3, "the method must matter"
    assert relative_error(logits(loaded, batch), expected) <= TOLERANCE


@pytest.mark.parametrize(("method", "options"), _cases(peft=False))
def test_peft_refuses_what_has_no_peft_format(tiny_base_dir, tmp_path, method, options):
    from oracles import peft_load

    save_trained(_applied(tiny_base_dir, method, options), tmp_path)
    with pytest.raises(Exception):  # noqa: B017  (PEFT's own error, whatever its class)
        peft_load(tiny_base_dir, tmp_path)
