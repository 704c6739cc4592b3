"""The method contract: what every registered method must do, checked on each case of ``method_cases.CONTRACTS``.

For every case (a method and its options) on a tiny random T5: gradients reach exactly the parameters the method
trains; after training steps the frozen base is bit-identical and every trained tensor moved; the trainable count
equals the method's closed form (``Method.closed_form_trainable``) on the tiny T5, on a gated untied T5 v1.1 and on
t5-small (where it must also equal the number the method's docstring and the README state); ``save_trained`` ->
``load_trained`` gives identical logits; an untrained method leaves the logits exactly unchanged where it claims
to (``Method.identity_at_init``) and moves them where it does not; for a method with a Hugging Face PEFT format
(its declaration's ``file_format.peft_compatible``) PEFT loads what t5peft saves and t5peft loads what PEFT saves, to
the same logits (relative error <= 1e-5, float32) and the same trainable count, while a method without one writes
nothing PEFT takes for its own; a method that can be merged (``Method.cannot_merge`` is None) merges into a plain T5
with the same logits, and one that cannot refuses in one line; and a method's declaration needs no torch.

A new method is covered by one entry in ``method_cases.CONTRACTS`` (``test_every_registered_method_has_a_contract``
fails until it has one).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch

from helpers import logits, perturb, relative_error, t5_small_meta, tiny_config, train_steps
from helpers import tiny_batch as _batch
from method_cases import CASES, CONTRACTS, T5_SMALL_PARAMETERS, applied, peft_config
from t5peft import T5Config, T5ForConditionalGeneration, apply_method, count_parameters, load_pretrained
from t5peft.methods import MethodConfigError, load_trained, merge_method, method_names, save_trained
from t5peft.methods.base import Method
from t5peft.methods.registry import METHODS, get_declaration, get_method_class

TOLERANCE = 1e-5
# merged logits against the adapted model's: measured up to 2.2e-6 (5 seeds x the 11 mergeable cases, float32: W + dW
# rounded once instead of two products summed), so 1e-5 leaves a margin of 4.5
MERGE_TOLERANCE = 1e-5


def _cases(peft: bool | None = None) -> list:
    """Every case as pytest params ``(method, case)`` named by case id; ``peft`` filters on a PEFT format."""
    return [
        pytest.param(method, case, id=case)
        for case, (method, _) in CASES.items()
        if peft is None or get_declaration(method).file_format.peft_compatible == peft
    ]


def test_every_registered_method_has_a_contract():
    assert list(CONTRACTS) == [declaration.name for declaration in METHODS] == method_names()
    for declaration in METHODS:
        name, contract = declaration.name, CONTRACTS[declaration.name]
        assert contract.cases, name
        assert contract.t5_small and contract.t5_small[0][0] == {}, f"{name}: t5-small count at the defaults first"
        peft_compatible = declaration.file_format.peft_compatible
        assert (contract.peft_config is not None) == peft_compatible, f"{name}: PEFT config builder"


@pytest.mark.parametrize("declaration", METHODS, ids=lambda declaration: declaration.name)
def test_every_method_implements_its_declaration_and_declares_its_facts(declaration):
    cls = declaration.method_class()
    assert issubclass(cls, Method) and cls.declaration is declaration and cls.name == declaration.name
    assert isinstance(cls.identity_at_init, bool), f"{cls.__name__} must declare identity_at_init"
    # merge is implemented exactly where the method does not declare why it cannot be merged
    assert cls.cannot_merge is None or (isinstance(cls.cannot_merge, str) and cls.cannot_merge)
    assert (cls.merge is not Method.merge) == (cls.cannot_merge is None), cls.__name__


def test_declarations_need_no_torch():
    """Listing the methods, their options and formats, checking options and telling a file's method (what
    ``t5peft methods``, ``--help`` and experiment files need) import no torch, in a fresh interpreter."""
    script = """
import contextlib, io, sys
from t5peft.cli import cmd_methods
from t5peft.methods import METHODS, get_declaration, method_names
from t5peft.methods.registry import method_for_file
for declaration in METHODS:
    declaration.config_class.from_options({}, declaration.name)
    declaration.file_format.file_fields(declaration.config_class().to_dict())
assert method_for_file({"peft_type": "LORA", "use_dora": True}, "x") is get_declaration("dora")
with contextlib.redirect_stdout(io.StringIO()) as out:
    cmd_methods(None)
lines = out.getvalue().splitlines()  # a line per method, then a blank line and the note on the base storage
assert [line.split()[0] for line in lines[:-2]] == method_names() and "--quantize" in lines[-1], lines
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


# --------------------------------------------------------------------------------------------------
# Gradients and training


@pytest.mark.parametrize(("method", "case"), _cases())
def test_gradients_reach_exactly_the_trained_parameters(method_base_dir, method, case):
    base_dir = method_base_dir(method)
    model = applied(base_dir, case).train()
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


@pytest.mark.parametrize(("method", "case"), _cases())
def test_training_moves_the_trained_tensors_and_leaves_the_base_bit_identical(method_base_dir, method, case):
    base_dir = method_base_dir(method)
    model = applied(base_dir, case)
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


@pytest.mark.parametrize(("method", "case"), _cases())
def test_trainable_count_is_the_closed_form(method, case):
    counts, closed_form = _count_and_closed_form(tiny_config(**CONTRACTS[method].base), method, CASES[case][1])
    assert counts["trainable"] == closed_form > 0


@pytest.mark.parametrize("method", list(CONTRACTS))
def test_trainable_count_is_the_closed_form_on_gated_untied_t5(method):
    gated = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=8, d_ff=96)
    config = tiny_config(**(gated | CONTRACTS[method].base))
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


@pytest.mark.parametrize(("method", "case"), _cases())
def test_save_load_gives_identical_logits(method_base_dir, tmp_path, method, case):
    base_dir = method_base_dir(method)
    model = applied(base_dir, case)
    perturb(model)
    batch = _batch()
    expected = logits(model, batch)
    assert not torch.allclose(expected, logits(load_pretrained(base_dir), batch)), "the method must matter"
    save_trained(model, tmp_path)
    loaded = load_trained(tmp_path, base_dir)
    assert torch.equal(logits(loaded, batch), expected)
    assert count_parameters(loaded)["trainable"] > 0


@pytest.mark.parametrize(("method", "case"), _cases())
def test_untrained_method_changes_the_logits_only_where_it_claims_to(method_base_dir, method, case):
    base_dir = method_base_dir(method)
    batch = _batch()
    base = logits(load_pretrained(base_dir), batch)
    untrained = logits(applied(base_dir, case), batch)
    if get_method_class(method).identity_at_init:
        assert torch.equal(untrained, base)
    else:  # e.g. prompts add encoder positions, deep prompts attention keys: the logits always move
        assert not torch.allclose(untrained, base, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Hugging Face PEFT: both ways for a PEFT format, refusal otherwise


@pytest.mark.parametrize(("method", "case"), _cases(peft=True))
def test_peft_loads_what_t5peft_saves(method_base_dir, tmp_path, method, case):
    base_dir = method_base_dir(method)
    from oracles import peft_load

    model = applied(base_dir, case)
    perturb(model)
    save_trained(model, tmp_path)
    batch = _batch()
    expected = logits(model, batch)
    assert relative_error(expected, logits(load_pretrained(base_dir), batch)) > 1e-3, "the method must matter"
    assert relative_error(logits(peft_load(base_dir, tmp_path), batch), expected) <= TOLERANCE


@pytest.mark.parametrize(("method", "case"), _cases(peft=True))
def test_t5peft_loads_what_peft_saves(method_base_dir, tmp_path, method, case):
    base_dir = method_base_dir(method)
    from oracles import peft_model

    peft = pytest.importorskip("peft")
    reference = peft_model(base_dir, peft_config(peft, case))
    theirs = reference.get_nb_trainable_parameters()[0]
    assert count_parameters(applied(base_dir, case))["trainable"] == theirs
    perturb(reference)
    reference.save_pretrained(tmp_path)
    batch = _batch()
    expected = logits(reference, batch)
    loaded = load_trained(tmp_path, base_dir)
    if CONTRACTS[method].folds_on_save(CASES[case][1]):  # the evaluated table: PEFT's loaded adapter holds that too
        assert count_parameters(loaded)["trainable"] == loaded.peft.method.closed_form_trainable(loaded.config)
    else:
        assert count_parameters(loaded)["trainable"] == theirs
    assert relative_error(expected, logits(load_pretrained(base_dir), batch)) > 1e-3, "the method must matter"
    assert relative_error(logits(loaded, batch), expected) <= TOLERANCE


@pytest.mark.parametrize(("method", "case"), _cases(peft=False))
def test_peft_refuses_what_has_no_peft_format(method_base_dir, tmp_path, method, case):
    """PEFT refuses the folder for what it is: an adapter of a type it does not know (a KeyError naming the type), or,
    for a method that saves the whole model, no adapter_config.json at all. The base is loaded first, so a base
    that does not load fails the test instead of passing for a refusal."""
    base_dir = method_base_dir(method)
    from oracles import hf_from

    peft = pytest.importorskip("peft")
    model = applied(base_dir, case)
    save_trained(model, tmp_path)
    base = hf_from(base_dir)
    if model.peft.trains_base:  # a whole checkpoint, where PEFT looks for an adapter
        assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "adapter_config.json").exists()
        refusal, reason = ValueError, "Can't find 'adapter_config.json'"
    else:
        refusal, reason = KeyError, f"'{get_declaration(method).file_format.peft_type}'"
    with pytest.raises(refusal, match=re.escape(reason)):
        peft.PeftModel.from_pretrained(base, str(tmp_path))


# --------------------------------------------------------------------------------------------------
# Merging


@pytest.mark.parametrize(("method", "case"), _cases())
def test_merging_keeps_the_logits_or_is_refused_in_one_line(method_base_dir, tmp_path, method, case):
    """A method that can be merged gives a plain T5 (no method, only T5's parameters, all trainable) whose logits
    are the adapted model's within MERGE_TOLERANCE and which saves and loads as a plain checkpoint; one that cannot
    raises one line naming the method and why, and leaves the model as it was."""
    base_dir = method_base_dir(method)
    model = applied(base_dir, case)
    perturb(model)
    batch = _batch()
    expected = logits(model, batch)
    if get_method_class(method).cannot_merge is not None:
        with pytest.raises(
            MethodConfigError, match=f"^method '{re.escape(method)}' cannot be merged into the base"
        ) as err:
            merge_method(model)
        assert "\n" not in str(err.value)
        assert model.peft is not None and torch.equal(logits(model, batch), expected)
        return
    merged = merge_method(model)
    assert merged is model and merged.peft is None
    plain = {name for name, _ in T5ForConditionalGeneration(merged.config).named_parameters()}
    assert {name for name, _ in merged.named_parameters()} == plain
    assert all(p.requires_grad for p in merged.parameters())
    assert relative_error(logits(merged, batch), expected) <= MERGE_TOLERANCE
    merged.save_pretrained(tmp_path)
    assert torch.equal(logits(load_pretrained(tmp_path), batch), logits(merged, batch))


# --------------------------------------------------------------------------------------------------
# Target modules on a gated T5 (v1.1, flan-t5): "wi" stands for wi_0 and wi_1

# methods that wrap linear layers, and the parameters each adds per wrapped layer [in, out] at the options below
LINEAR_WRAPPERS: dict[str, tuple[dict[str, Any], Callable[[int, int], int]]] = {
    "lora": (dict(r=4), lambda i, o: 4 * (i + o)),
    "dora": (dict(r=4), lambda i, o: 4 * (i + o) + o),
    "adalora": (dict(init_r=4, target_r=2), lambda i, o: 4 * (i + o + 1)),
    "vera": (dict(r=8), lambda i, o: o + 8),
    "ia3": (dict(feedforward_modules="wi"), lambda i, o: i),  # a feedforward target scales its input
    "lora+prompt": (dict(r=4, num_virtual_tokens=3), lambda i, o: 4 * (i + o)),
}


@pytest.mark.parametrize("method", list(LINEAR_WRAPPERS))
def test_wi_targets_both_input_projections_of_a_gated_t5(method):
    """``target_modules=wi`` (as ``-o target_modules=wi`` gives it) adapts wi_0 and wi_1 of every FFN, the config
    records those two names (PEFT's), and the count is the closed form and the hand count."""
    config = tiny_config(feed_forward_proj="gated-gelu", d_ff=96)
    options, per_layer = LINEAR_WRAPPERS[method]
    with torch.device("meta"):
        model = apply_method(T5ForConditionalGeneration(config), method, target_modules="wi", **options)
    ffns = config.num_layers + config.num_decoder_layers
    trained = [name for name in model.peft.trainable if ".DenseReluDense." in name]
    layers = {re.match(r"(.*\.DenseReluDense\.\w+?)\.", name).group(1) for name in trained}
    assert sorted(layer.rsplit(".", 1)[1] for layer in layers) == sorted(["wi_0", "wi_1"] * ffns)
    assert model.peft.method.config.target_modules == ["wi_0", "wi_1"]
    prompt = 3 * config.d_model if method == "lora+prompt" else 0
    by_hand = 2 * ffns * per_layer(config.d_model, config.d_ff) + prompt
    counts, closed_form = _count_and_closed_form(config, method, dict(options, target_modules="wi"))
    assert counts["trainable"] == closed_form == by_hand
