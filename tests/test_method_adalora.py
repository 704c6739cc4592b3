"""AdaLoRA specifics: budget schedule, rank allocation (against PEFT's RankAllocator), save/load of pruned adapters,
PEFT interop in both directions after ranks were pruned by training and on gated T5 v1.1, counts against PEFT on
t5-small. What every method must do is checked for AdaLoRA by ``test_method_contract.py``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import logits, perturb, relative_error, t5_small_meta, train_steps
from helpers import random_batch as _batch
from oracles import peft_load, peft_model, save_hf_base, transformers
from t5peft import (
    T5ForConditionalGeneration,
    apply_method,
    count_parameters,
    load_adapter,
    load_pretrained,
    save_adapter,
)
from t5peft.methods import MethodConfigError
from t5peft.methods.adalora import AdaLoraLinear, budget_schedule

peft = pytest.importorskip("peft")

TOLERANCE = 1e-5
# a short schedule that exercises all three phases: warm-up (steps <= 2), reduction (3..8), final (>= 9)
SCHEDULE = dict(init_r=4, target_r=2, tinit=2, tfinal=3)
TOTAL_STEPS = 12
PEFT_DEFAULTS = dict(task_type="SEQ_2_SEQ_LM", target_modules=["q", "k", "v", "o", "wi", "wo"])


@pytest.fixture(scope="module")
def base_dir(hf_base_dir) -> Path:
    return hf_base_dir


def _train(model: T5ForConditionalGeneration, steps: int, total_steps: int, seed: int = 0) -> None:
    """The training loop's step: on_train_begin, extra_loss, clipping, step, allocation."""
    train_steps(model, lambda step: _batch(seed + step), steps, lr=1e-2, total_steps=total_steps)
    model.eval()


def _layers(model) -> dict[str, AdaLoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaLoraLinear)}


@pytest.fixture(scope="module")
def trained(base_dir):
    """Our adapter after a full short schedule (total_step supplied by on_train_begin), and the base it started on."""
    model = apply_method(load_pretrained(base_dir), "adalora", **SCHEDULE)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    _train(model, TOTAL_STEPS, TOTAL_STEPS)
    return model, base


# --------------------------------------------------------------------------------------------------
# Training and initialisation


def test_training_keeps_base_weights_bit_identical(trained):
    model, base = trained
    state = model.state_dict()
    assert base.keys() == {k for k in state if "lora_" not in k}
    for key, value in base.items():
        assert torch.equal(state[key], value), key


def test_t5_small_default_targets(t5_small_dir):
    """q, k, v, o of 6 encoder, 6 decoder self- and 6 cross-attentions, wi and wo of 12 FFNs (the count: contract)."""
    model = apply_method(t5_small_meta(t5_small_dir), "adalora")
    assert model.peft.method.config.target_modules == ["k", "o", "q", "v", "wi", "wo"]
    assert len(model.peft.method.layers) == 96


def test_parameter_count_t5_small_equals_peft(t5_small_dir):
    config = transformers.T5Config.from_pretrained(t5_small_dir)
    with torch.device("meta"):
        reference = transformers.T5ForConditionalGeneration(config)
    reference.to_empty(device="cpu")  # PEFT on the meta device counts its ranknum buffers as trainable
    reference = peft.get_peft_model(reference, peft.AdaLoraConfig(**PEFT_DEFAULTS, init_r=12, total_step=100))
    assert reference.get_nb_trainable_parameters()[0] == 1_623_168


def test_initialisation(base_dir):
    """E starts at zero (so an untrained adapter is the identity: the contract), A and B do not."""
    model = apply_method(load_pretrained(base_dir), "adalora")
    assert all(torch.equal(m.lora_E, torch.zeros_like(m.lora_E)) for m in _layers(model).values())
    assert all(m.lora_A.abs().sum() > 0 and m.lora_B.abs().sum() > 0 for m in _layers(model).values())


def test_save_load_unpruned_gives_identical_logits(base_dir, tmp_path):
    model = apply_method(load_pretrained(base_dir), "adalora", total_step=50)
    perturb(model, scale=0.15)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["rank_pattern"] is None and config["total_step"] == 50
    assert (config["init_r"], config["target_r"], config["lora_alpha"], config["orth_reg_weight"]) == (12, 8, 8, 0.1)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    prefix = "base_model.model.encoder.block.0.layer.0.SelfAttention.q."
    assert tuple(tensors[prefix + "lora_A"].shape) == (12, 64)
    assert tuple(tensors[prefix + "lora_E"].shape) == (12, 1)
    assert tuple(tensors[prefix + "lora_B"].shape) == (64, 12)
    assert len(tensors) == 3 * 32  # 2 encoder layers x 6 targets + 2 decoder layers x 10 targets
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    batch = _batch()
    assert torch.equal(logits(loaded, batch), logits(model, batch))


def test_untrained_adapter_file_records_a_schedule_peft_accepts(base_dir, tmp_path):
    model = apply_method(load_pretrained(base_dir), "adalora", tinit=3, tfinal=4)
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["total_step"] == 8
    peft_load(base_dir, tmp_path)


# --------------------------------------------------------------------------------------------------
# Budget schedule and rank allocation


def test_budget_schedule_closed_form():
    init, target, tinit, tfinal, total = 1152, 768, 100, 300, 1000
    reduction = total - tfinal - tinit

    def expected(step: int) -> int:
        if step <= tinit:
            return init
        if step >= total - tfinal:
            return target
        return int((init - target) * (1 - (step - tinit) / reduction) ** 3 + target)

    middle = tinit + reduction // 2
    checks = {0: init, tinit: init, middle: int(384 * 0.5**3 + 768), total - tfinal: target, total - 1: target}
    for step, value in checks.items():
        budget, _ = budget_schedule(step, init, target, tinit, tfinal, total, 10)
        assert budget == expected(step) == value, step
    budgets = [budget_schedule(s, init, target, tinit, tfinal, total, 10)[0] for s in range(total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(budgets))  # never grows
    assert budgets[tinit + 1] < init
    # the mask is recomputed every deltaT steps in the reduction phase, never during warm-up
    assert [budget_schedule(s, init, target, tinit, tfinal, total, 10)[1] for s in (50, 110, 115, 120)] == [
        False,
        True,
        False,
        True,
    ]


def test_schedule_options_are_validated(base_dir):
    with pytest.raises(MethodConfigError, match="rank-reduction"):
        apply_method(load_pretrained(base_dir), "adalora", tinit=5, tfinal=5, total_step=10)
    model = apply_method(load_pretrained(base_dir), "adalora", tinit=5, tfinal=5)
    with pytest.raises(MethodConfigError, match="rank-reduction"):
        model.peft.method.on_train_begin(model, 10)
    for bad in (dict(target_r=13), dict(init_r=0), dict(beta1=1.0), dict(deltaT=0), dict(orth_reg_weight=-1)):
        with pytest.raises(MethodConfigError):
            apply_method(load_pretrained(base_dir), "adalora", **bad)
    with pytest.raises(MethodConfigError, match="12 booleans"):
        apply_method(
            load_pretrained(base_dir),
            "adalora",
            rank_pattern={"encoder.block.0.layer.0.SelfAttention.q.lora_E": [True]},
        )
    with pytest.raises(MethodConfigError, match="not adapted"):
        apply_method(load_pretrained(base_dir), "adalora", rank_pattern={"shared.lora_E": [True] * 12})


def test_training_prunes_to_target_budget(trained):
    model, _ = trained
    method = model.peft.method
    report = method.report(model)
    ranks = report["final_ranks"]
    assert report["total_step"] == TOTAL_STEPS == method.config.total_step  # supplied by on_train_begin
    assert len(ranks) == 32 and sum(ranks.values()) == 2 * 32 == report["budget"] == report["target_budget"]
    assert len(set(ranks.values())) > 1, "importance-driven allocation should not be uniform"
    for name, layer in _layers(model).items():
        assert ranks[name] == int(layer.rank_mask.sum())
        assert torch.equal(layer.lora_E[~layer.rank_mask], torch.zeros_like(layer.lora_E[~layer.rank_mask]))
        assert (layer.lora_E[layer.rank_mask] != 0).all()


def test_orthogonality_penalty_matches_peft_formula(base_dir):
    model = apply_method(load_pretrained(base_dir), "adalora", orth_reg_weight=0.3)
    perturb(model, scale=0.15)
    terms = []
    for layer in _layers(model).values():
        a, b = layer.lora_A, layer.lora_B
        terms.append(torch.norm(a @ a.T - torch.eye(a.shape[0]), p="fro"))
        terms.append(torch.norm(b.T @ b - torch.eye(b.shape[1]), p="fro"))
    expected = 0.3 * torch.stack(terms).sum() / len(terms)
    assert relative_error(model.peft.method.extra_loss(model), expected) < 1e-6


def _copy_to_peft(ours, reference) -> None:
    params = dict(reference.base_model.model.named_parameters())
    with torch.no_grad():
        for name, layer in _layers(ours).items():
            for part in ("lora_A", "lora_E", "lora_B"):
                params[f"{name}.{part}.default"].copy_(getattr(layer, part))


def test_allocation_matches_peft_rank_allocator(base_dir):
    """Same weights, same gradients, same updates: budgets, masks and E agree with PEFT at every step."""
    options = dict(init_r=4, target_r=2, tinit=1, tfinal=2, deltaT=2, total_step=10)
    ours = apply_method(load_pretrained(base_dir), "adalora", target_modules=["q", "v", "wo"], **options)
    perturb(ours, scale=0.15)
    config = peft.AdaLoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v", "wo"], **options)
    reference = peft_model(base_dir, config)
    _copy_to_peft(ours, reference)
    their_params = dict(reference.base_model.model.named_parameters())
    allocator = reference.base_model.rankallocator
    method = ours.peft.method
    method.on_train_begin(ours, 10)
    generator = torch.Generator().manual_seed(5)
    masked_steps = 0
    for step in range(12):
        for name, layer in _layers(ours).items():
            for part in ("lora_A", "lora_E", "lora_B"):
                mine, theirs = getattr(layer, part), their_params[f"{name}.{part}.default"]
                grad = torch.randn(mine.shape, generator=generator)
                with torch.no_grad():  # the same "optimizer step" on both
                    mine -= 0.05 * grad
                    theirs -= 0.05 * grad
                mine.grad, theirs.grad = grad.clone(), grad.clone()
        method.after_optimizer_step(ours, step, 10)
        reference.base_model.update_and_allocate(step)
        assert method.allocator.schedule(step)[0] == allocator.budget_schedule(step)[0], step
        pattern = reference.peft_config["default"].rank_pattern
        if pattern:
            masked_steps += 1
            for name, layer in _layers(ours).items():
                key = f"{name}.lora_E.default"
                assert layer.rank_mask.tolist() == pattern[key], (step, name)
        for name, layer in _layers(ours).items():
            assert torch.equal(layer.lora_E, their_params[f"{name}.lora_E.default"]), (step, name)
    assert masked_steps >= 8 and sum(method.final_ranks().values()) == 2 * 16


def test_training_state_round_trip(base_dir):
    """Importance averages and masks restored from training_state() give the same later allocations."""
    options = dict(init_r=4, target_r=2, tinit=1, tfinal=2, total_step=10, target_modules=["q", "v"])
    first = apply_method(load_pretrained(base_dir), "adalora", **options)
    perturb(first, scale=0.15)
    second = apply_method(load_pretrained(base_dir), "adalora", **options)
    generator = torch.Generator().manual_seed(6)

    def step(models, index):
        for layers in zip(*(_layers(m).values() for m in models), strict=True):
            for part in ("lora_A", "lora_E", "lora_B"):
                grad = torch.randn(getattr(layers[0], part).shape, generator=generator)
                for layer in layers:
                    getattr(layer, part).grad = grad.clone()
        for model in models:
            model.peft.method.after_optimizer_step(model, index, 10)

    first.peft.method.on_train_begin(first, 10)
    for index in range(4):
        step([first], index)
    second.load_state_dict(first.state_dict())
    second.peft.method.on_train_begin(second, 10)
    second.peft.method.load_training_state(first.peft.method.training_state())
    for index in range(4, 11):
        step([first, second], index)
        for a, b in zip(_layers(first).values(), _layers(second).values(), strict=True):
            assert torch.equal(a.rank_mask, b.rank_mask) and torch.equal(a.lora_E, b.lora_E)


# --------------------------------------------------------------------------------------------------
# Files after pruning, and PEFT interop


def test_pruned_adapter_save_load_keeps_masks_and_logits(trained, base_dir, tmp_path):
    model, _ = trained
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    ranks = model.peft.method.final_ranks()
    assert 0 in ranks.values() and 4 in ranks.values()  # fully pruned and untouched layers are both covered
    assert config["total_step"] == TOTAL_STEPS
    assert {k.removesuffix(".lora_E"): sum(v) for k, v in config["rank_pattern"].items()} == ranks
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    for name, rank in ranks.items():
        prefix = f"base_model.model.{name}."
        assert tensors[prefix + "lora_A"].shape[0] == tensors[prefix + "lora_E"].shape[0] == rank
        assert tensors[prefix + "lora_B"].shape[1] == rank
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    assert loaded.peft.method.final_ranks() == ranks
    for mine, theirs in zip(_layers(model).values(), _layers(loaded).values(), strict=True):
        assert torch.equal(mine.rank_mask, theirs.rank_mask)
        assert torch.equal(theirs.lora_E[~theirs.rank_mask], torch.zeros_like(theirs.lora_E[~theirs.rank_mask]))
    batch = _batch(99)
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    # saving the loaded adapter again writes the same pattern and tensors
    save_adapter(loaded, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert again["rank_pattern"] == config["rank_pattern"]
    retensors = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert all(torch.equal(retensors[k], v) for k, v in tensors.items())


def test_pruned_loaded_adapter_trains_without_reviving_pruned_triplets(trained, base_dir, tmp_path):
    model, _ = trained
    save_adapter(model, tmp_path)
    loaded = load_adapter(load_pretrained(base_dir), tmp_path)
    before = {n: m.rank_mask.clone() for n, m in _layers(loaded).items()}
    method = loaded.peft.method
    method.config.target_r = 1  # shrink further from the 64 kept triplets to 32
    method.config.total_step = 6
    _train(loaded, 6, 6)
    assert method.report(loaded)["init_budget"] == 64
    assert sum(method.final_ranks().values()) == 32
    for name, layer in _layers(loaded).items():
        assert not (layer.rank_mask & ~before[name]).any(), name
        assert torch.equal(layer.lora_E[~before[name]], torch.zeros_like(layer.lora_E[~before[name]]))


def test_pruned_adapter_loads_in_peft(trained, base_dir, tmp_path):
    model, _ = trained
    save_adapter(model, tmp_path)
    reference = peft_load(base_dir, tmp_path).eval()
    ranks = model.peft.method.final_ranks()
    modules = dict(reference.base_model.model.named_modules())
    assert all(modules[name].lora_E["default"].shape[0] == rank for name, rank in ranks.items())
    batch = _batch(7)
    assert relative_error(logits(model, batch), logits(reference, batch)) <= TOLERANCE


def test_peft_pruned_adapter_loads_in_t5peft(base_dir, tmp_path):
    config = peft.AdaLoraConfig(**PEFT_DEFAULTS, **SCHEDULE, total_step=TOTAL_STEPS)
    reference = peft_model(base_dir, config)
    optimizer = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2)
    reference.train()
    for step in range(TOTAL_STEPS):
        reference(**_batch(step)).loss.backward()
        optimizer.step()
        reference.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    reference.save_pretrained(tmp_path)
    pattern = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert sum(sum(v) for v in pattern.values()) == 2 * 32
    ours = load_adapter(load_pretrained(base_dir), tmp_path)
    assert ours.peft.method.final_ranks() == {k.removesuffix(".lora_E"): sum(v) for k, v in pattern.items()}
    batch = _batch(8)
    assert relative_error(logits(ours, batch), logits(reference, batch)) <= TOLERANCE


def test_unpruned_adapter_interop_both_directions_on_gated_t5(tmp_path):
    """Gated T5 v1.1, where ``wi`` stands for ``wi_0`` and ``wi_1``: same count as PEFT, same logits both ways (plain
    T5: the contract)."""
    base = save_hf_base(tmp_path / "base", seed=4, feed_forward_proj="gated-gelu")
    batch = _batch(9)
    plain = logits(load_pretrained(base), batch)
    # ours -> PEFT
    ours = apply_method(load_pretrained(base), "adalora", total_step=100, lora_alpha=16)
    perturb(ours, seed=2, scale=0.15)
    save_adapter(ours, tmp_path / "ours")
    reference = peft_load(base, tmp_path / "ours")
    assert relative_error(logits(ours, batch), plain) > 1e-3  # the adapter matters
    assert relative_error(logits(ours, batch), logits(reference, batch)) <= TOLERANCE
    # PEFT -> ours
    targets = ours.peft.method.config.target_modules
    assert targets == ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]
    config = peft.AdaLoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=targets, total_step=100, lora_alpha=32)
    reference = peft_model(base, config)
    assert count_parameters(ours)["trainable"] == reference.get_nb_trainable_parameters()[0]
    perturb(reference, seed=3, scale=0.15)
    reference.save_pretrained(tmp_path / "peft")
    loaded = load_adapter(load_pretrained(base), tmp_path / "peft")
    assert relative_error(logits(loaded, batch), plain) > 1e-3
    assert relative_error(logits(loaded, batch), logits(reference, batch)) <= TOLERANCE
