"""How much memory a training run needs per device, worked out before anything is loaded (``t5peft plan-memory``).

The model is built on the meta device (shapes, no values) with its method applied, so parameter and trainable counts
are exact. Activations are not estimated from a formula: one forward pass of the meta model on a batch of the given
shape runs under ``torch.autograd.graph.saved_tensors_hooks`` and adds up every tensor autograd keeps for the
backward pass (each storage once, parameters excluded), attributed to the T5 block that saved it. Without activation
checkpointing the activations are all of them; with it, the tensors saved outside the blocks, the blocks' inputs
(which checkpointing keeps) and the largest block's own (recomputed one block at a time in the backward pass).

Per device, for AdamW with float32 state (``m`` and ``v``, 8 bytes per trainable parameter) and float32 gradients:

* ``weights``: trainable parameters in float32, frozen ones in the base precision (``bf16``: 2 bytes);
* ``gradients``, ``optimizer``: of the trainable parameters;
* ``activations``: for the batch each device computes (the global batch split over the world size);
* ``backward workspace``: the forward + backward pass's peak beyond the saved activations and the gradients: the
  logits' two gradients, a block's largest intermediate gradient, with checkpointing the block being recomputed,
  and the forward pass's live intermediates (:meth:`ActivationTrace.step_peak`);
* ``optimizer step``: AdamW's temporaries, two the size of the largest trainable tensor (torch's one-tensor-at-a-time
  AdamW on the CPU); they come after the backward pass, when the activations are freed.

A step needs the larger of (gradients + activations + workspace) and (gradients + optimizer step), above weights and
AdamW state. Checked against measured peaks on the CPU (tests/test_memory_plan.py; the cases in the README): within
9 % at t5-small and t5-base in every case measured, fp32, bf16 and quantized bases, mostly above (the side to err
on).

Strategies: ``ddp`` replicates weights, gradients and optimizer state on every device (plus DDP's gradient buckets,
one more copy of the gradients); ``fsdp`` shards all three over the world size and adds the largest T5 block's
parameters, gathered whole, twice (the block computing and the next one prefetched).

Activations are counted as the CPU computes them: in float32, and with attention's probabilities kept for the backward
pass (``scaled_dot_product_attention``'s math kernel, [batch, heads, queries, keys] per layer, the largest tensors at
long sources). On CUDA, bf16 autocast halves most of them and the fused attention kernels keep no probabilities, so
there the activation line is an upper bound (how far, the GPU check of issue 17 is to measure).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import T5PeftError
from ..methods import apply_method
from ..model.config import T5Config
from ..model.storage import QUANTIZE_SCHEMES, dense_copy_bytes, planned_bytes
from ..model.t5 import T5Block, T5ForConditionalGeneration

STRATEGIES = ("ddp", "fsdp")
BASE_DTYPES = {"fp32": 4, "bf16": 2}
FLOAT32 = 4
ADAMW_STATE_BYTES = 8  # exp_avg and exp_avg_sq, float32


class MemoryPlanError(T5PeftError, ValueError):
    pass


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """``80GB`` (10^9), ``80GiB`` (2^30), ``512MB``, a plain number of bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise MemoryPlanError(f"--device-memory {text!r}: expected a size such as 80GB, 24GiB or 512MB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])


@dataclass(frozen=True)
class PlanSettings:
    config: T5Config
    model: str  # as named, for the printout
    method: str = "lora"
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16  # global
    source_length: int = 128
    target_length: int = 2
    base_dtype: str = "fp32"
    quantize: str = "none"  # "nf4" / "int8": the frozen q, k, v, o, wi weights (model.storage)
    strategy: str = "ddp"
    world_size: int = 1
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "source_length", "target_length", "world_size"):
            if getattr(self, name) < 1:
                raise MemoryPlanError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise MemoryPlanError(f"--strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.base_dtype not in BASE_DTYPES:
            raise MemoryPlanError(f"--base-dtype {self.base_dtype!r}: expected one of {', '.join(BASE_DTYPES)}")
        if self.quantize not in QUANTIZE_SCHEMES:
            raise MemoryPlanError(f"--quantize {self.quantize!r}: expected one of {', '.join(QUANTIZE_SCHEMES)}")
        if self.batch_size % self.world_size:
            raise MemoryPlanError(
                f"--batch-size {self.batch_size} does not split evenly over --world-size {self.world_size}"
            )

    @property
    def device_batch(self) -> int:
        return self.batch_size // self.world_size


@dataclass(frozen=True)
class StoredBaseTransients:
    """The dense copies a frozen base stored in another form makes while it computes (``model.storage.linear``: a
    weight is dequantized, or cast from bf16 to float32, for the forward and again for the backward, then freed):
    ``head`` the LM head's (at the loss, when it is stored in bf16), ``block`` the largest a block's weights make.
    Measured at t5-small on the CPU (8 x 128): a bf16 LM head adds its float32 size at the start of the backward
    pass; an NF4 weight about 3.6 times its float32 size (torchao's dequantization makes intermediates), counted
    4 times; an int8 one under its float32 size, counted once."""

    head: int = 0
    block: int = 0


@dataclass(frozen=True)
class ActivationTrace:
    """Bytes autograd saves in one forward pass: outside the blocks, per block, and the blocks' distinct inputs."""

    outside: int
    head: int  # of ``outside``: saved after the last decoder block (final norm, LM head, loss), freed first
    per_block: list[int]
    block_inputs: int
    largest_saved: int  # the largest single tensor saved inside a block
    working_sets: tuple[int, ...] = ()  # per block, the live intermediates of its forward (:func:`block_working_set`)

    def total(self, checkpointing: bool) -> int:
        """What the forward pass leaves saved for the backward pass."""
        if not checkpointing:
            return self.outside + sum(self.per_block)
        return self.outside + self.block_inputs + max(self.per_block)

    def step_peak(
        self,
        checkpointing: bool,
        logits_bytes: int,
        head_grads: int,
        block_grads: list[int],
        encoder_blocks: int,
        embedding_grad: int,
        stored: StoredBaseTransients | None = None,
    ) -> int:
        """The most a forward + backward pass holds beyond the weights and the optimizer state, gradients included.

        The backward pass runs from the loss through the decoder's blocks, last first, then the encoder's: at its
        start it holds everything saved (with checkpointing, no block's own tensors yet), the logits' two
        gradients and ``head_grads`` (the gradients of the parameters outside the blocks: the LM head, tied to the
        embedding in t5-small and t5-base, and the final norms); at each block, ``head_grads``, the gradients of
        the blocks done (``block_grads``) and of this one,
        the saved tensors of the blocks not done (with checkpointing: the blocks' inputs and this block's,
        recomputed) and the block's largest intermediate gradient. Once a stack's blocks are done, the backward
        of its input embedding makes a dense gradient the size of the embedding and adds it to the one there
        (``embedding_grad``: both, when the embedding is trained), while the encoder's saved tensors are still
        held: measured on the CPU, that is full fine-tuning's peak at t5-small and t5-base (between the decoder's
        first block and the encoder's last, 2 x 94 MiB above the memory around it at t5-base). The forward
        pass's own peak is in its last block: what the blocks before it saved (with checkpointing, their inputs)
        plus its live intermediates, which a block saving nothing (checkpointed, or with no gradient through it:
        the encoder under prefix tuning) still computes. No gradient exists then (the previous step freed
        them). A frozen base stored in bf16 or quantized adds its dequantized copies (``stored``): the LM head's
        at the loss, a block's largest weight's in every block, forward and backward."""
        stored = stored or StoredBaseTransients()
        before = self.outside - self.head
        if checkpointing:
            forward = before + self.block_inputs + max(self.working_sets)
        else:
            forward = before + max(sum(self.per_block[:i]) + ws for i, ws in enumerate(self.working_sets))
        forward += stored.block
        # at the loss, a checkpointed block has not been recomputed yet: only the blocks' inputs are held
        at_loss = self.outside + (self.block_inputs if checkpointing else sum(self.per_block))
        peak = max(forward, head_grads + at_loss + 2 * logits_bytes + stored.head)
        done = head_grads
        remaining = sum(self.per_block)
        for index in reversed(range(len(self.per_block))):
            saved = self.block_inputs + self.per_block[index] if checkpointing else remaining
            peak = max(peak, done + block_grads[index] + before + saved + self.largest_saved + stored.block)
            done += block_grads[index]
            remaining -= self.per_block[index]
            if index in (encoder_blocks, 0):  # a stack's blocks are done: its input embedding's backward
                held = self.block_inputs if checkpointing and index else remaining
                peak = max(peak, done + before + held + embedding_grad)
        return peak


@dataclass(frozen=True)
class MemoryPlan:
    settings: PlanSettings
    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    gradient_buckets: int  # DDP
    gathered_blocks: int  # FSDP
    activations: int
    activations_other: int  # with the checkpointing setting flipped, for comparison
    workspace: int  # the forward + backward pass's peak beyond the saved activations and the gradients
    optimizer_step: int  # AdamW's temporaries (after the backward pass, when the activations are freed)
    pass_peak: int  # the forward + backward pass's peak, gradients included (ActivationTrace.step_peak)

    @property
    def step_peak(self) -> int:
        """The most a training step holds beyond the weights and the optimizer state."""
        return max(self.pass_peak, self.gradients + self.optimizer_step)

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.gradient_buckets + self.gathered_blocks + self.step_peak

    def as_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "model": s.model,
            "method": s.method,
            "batch_size": s.batch_size,
            "device_batch": s.device_batch,
            "source_length": s.source_length,
            "target_length": s.target_length,
            "base_dtype": s.base_dtype,
            "quantize": s.quantize,
            "strategy": s.strategy,
            "world_size": s.world_size,
            "activation_checkpointing": s.activation_checkpointing,
            "parameters": self.parameters,
            "trainable": self.trainable,
            "bytes": {
                "weights": self.weights,
                "gradients": self.gradients,
                "optimizer": self.optimizer,
                "gradient_buckets": self.gradient_buckets,
                "gathered_blocks": self.gathered_blocks,
                "activations": self.activations,
                "workspace": self.workspace,
                "optimizer_step": self.optimizer_step,
                "step_peak": self.step_peak,
                "total": self.total,
                "activations_with_checkpointing_flipped": self.activations_other,
            },
        }


def meta_model(settings: PlanSettings) -> T5ForConditionalGeneration:
    """The run's model, method applied, on the meta device."""
    with torch.device("meta"):
        model = T5ForConditionalGeneration(settings.config)
        try:
            return apply_method(model, settings.method, **settings.options)
        except (ValueError, TypeError) as err:
            raise MemoryPlanError(f"--method {settings.method}: {err}") from None


def _storage_bytes(tensor: Tensor) -> int:
    base = tensor._base if tensor._base is not None else tensor
    return base.numel() * base.element_size()


def trace_activations(model: T5ForConditionalGeneration, batch: int, source: int, target: int) -> ActivationTrace:
    """Run one training forward of ``model`` (on the meta device) and account what autograd saves."""
    trace = _trace(model, batch, source, target)
    config = model.config
    sets = [block_working_set(config, batch, source, source)] * config.num_layers
    if not any(trace.per_block[: config.num_layers]):
        # an encoder run without gradient (prefix tuning) saves nothing, yet its position bias (mask added, per
        # example) and its hidden states live through every block (t5-small, batch 8 x 128: 6 MiB, measured)
        live = batch * config.num_heads * source * source + batch * source * config.d_model
        sets = [working + live * FLOAT32 for working in sets]
    sets += [block_working_set(config, batch, target, source)] * config.num_decoder_layers
    return dataclasses.replace(trace, working_sets=tuple(sets))


def block_working_set(config: T5Config, batch: int, queries: int, keys: int) -> int:
    """The most a block's forward holds at once, from its largest intermediates in float32: the feed-forward
    network's (first projection, activation, dropout output and mask: four ``[batch, queries, d_ff]``, five when
    gated) or the attention's (scores, masked scores, softmax, dropout: four ``[batch, heads, queries, keys]``).
    The counts were set from the measured t5-small peaks on the CPU and checked on t5-base (README)."""
    ffn = (5 if config.is_gated_act else 4) * batch * queries * config.d_ff
    attention = 4 * batch * config.num_heads * queries * max(queries, keys)
    return max(ffn, attention) * FLOAT32


def _trace(model: T5ForConditionalGeneration, batch: int, source: int, target: int) -> ActivationTrace:
    params = {id(p) for p in model.parameters()}
    blocks = [m for m in model.modules() if isinstance(m, T5Block)]
    per_block = [0] * len(blocks)
    largest = [0]
    outside = [0]
    head = [0]
    after_blocks = [False]
    current: list[int] = []
    seen: set[int] = set()
    inputs: list[dict[int, int]] = [{} for _ in blocks]  # per block: its input tensors (id -> bytes)
    keep: list[Tensor] = []  # ids stay unique while the tensors live

    def pack(tensor: Tensor) -> Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) in params or id(base) in params or id(base) in seen:
            return tensor
        seen.add(id(base))
        keep.append(base)
        size = _storage_bytes(tensor)
        if current:
            per_block[current[-1]] += size
            largest[0] = max(largest[0], size)
        else:
            outside[0] += size
            head[0] += size if after_blocks[0] else 0
        return tensor

    def enter(index: int):
        def hook(_module: nn.Module, args: tuple) -> None:
            current.append(index)
            for value in args[:4]:
                if isinstance(value, Tensor):
                    keep.append(value)
                    inputs[index][id(value)] = value.numel() * value.element_size()

        return hook

    def leave(*_: Any) -> None:  # a forward hook's return value would replace the block's output
        after_blocks[0] = current.pop() == len(blocks) - 1

    handles = []
    for index, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(enter(index)))
        handles.append(block.register_forward_hook(leave))
    was_checkpointing = model.activation_checkpointing
    model.set_activation_checkpointing(False)
    try:
        model.train()
        ids = torch.zeros((batch, source), dtype=torch.long, device="meta")
        labels = torch.zeros((batch, target), dtype=torch.long, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    finally:
        for handle in handles:
            handle.remove()
        model.set_activation_checkpointing(was_checkpointing)
    # checkpointing keeps the inputs of the blocks that are differentiated (those that saved anything), each tensor once
    kept = {key: size for index, sizes in enumerate(inputs) if per_block[index] for key, size in sizes.items()}
    return ActivationTrace(outside[0], head[0], per_block, sum(kept.values()), largest[0])


def _trainable_bytes(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad) * FLOAT32


def _stored_bytes(module: nn.Module, settings: PlanSettings) -> int:
    """``module``'s parameters as the run keeps them: trained ones in float32, the frozen base as stored."""
    return _trainable_bytes(module) + planned_bytes(module, settings.base_dtype, settings.quantize)


def stored_transients(model: T5ForConditionalGeneration, settings: PlanSettings) -> StoredBaseTransients:
    """The dense copies the stored base makes while computing (:class:`StoredBaseTransients`)."""
    copies = dense_copy_bytes(model, settings.base_dtype, settings.quantize)
    head = "shared.weight" if model.lm_head.weight is model.shared.weight else "lm_head.weight"
    block = max((size for name, size in copies.items() if ".block." in name), default=0)
    return StoredBaseTransients(head=copies.get(head, 0), block=block)


def _check_base(model: T5ForConditionalGeneration, settings: PlanSettings) -> None:
    peft = getattr(model, "peft", None)
    if peft is not None and peft.trains_base and (settings.base_dtype != "fp32" or settings.quantize != "none"):
        raise MemoryPlanError(
            f"--method {settings.method} trains base weights: the base must stay float32 (--base-dtype fp32, "
            "--quantize none)"
        )


def plan_memory(settings: PlanSettings) -> MemoryPlan:
    model = meta_model(settings)
    _check_base(model, settings)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    world = settings.world_size
    fsdp = settings.strategy == "fsdp"
    shard = (lambda n: math.ceil(n / world)) if fsdp else (lambda n: n)
    weights = shard(_stored_bytes(model, settings))
    gradients = shard(trainable * FLOAT32)
    optimizer = shard(trainable * ADAMW_STATE_BYTES)
    buckets = gradients if settings.strategy == "ddp" and world > 1 else 0
    gathered = 0
    if fsdp and world > 1:
        gathered = 2 * max(_stored_bytes(b, settings) for b in model.modules() if isinstance(b, T5Block))
    trace = trace_activations(model, settings.device_batch, settings.source_length, settings.target_length)
    ac = settings.activation_checkpointing
    logits = settings.device_batch * settings.target_length * settings.config.vocab_size * FLOAT32
    largest_trainable = max((p.numel() for p in model.parameters() if p.requires_grad), default=0)
    blocks = [b for b in model.modules() if isinstance(b, T5Block)]
    block_grads = [shard(_trainable_bytes(b)) for b in blocks]
    head_grads = gradients - sum(block_grads)
    embedding = model.shared.weight
    embedding_grad = shard(2 * embedding.numel() * FLOAT32) if embedding.requires_grad else 0
    pass_peak = trace.step_peak(
        ac,
        logits,
        head_grads,
        block_grads,
        settings.config.num_layers,
        embedding_grad,
        stored_transients(model, settings),
    )
    return MemoryPlan(
        settings=settings,
        parameters=parameters,
        trainable=trainable,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        gradient_buckets=buckets,
        gathered_blocks=gathered,
        activations=trace.total(ac),
        activations_other=trace.total(not ac),
        workspace=max(0, pass_peak - gradients - trace.total(ac)),
        pass_peak=pass_peak,
        # AdamW one tensor at a time (torch's default on the CPU) makes two temporaries the size of the tensor it
        # updates; the fused (CUDA) one fewer: the larger is counted
        optimizer_step=shard(2 * largest_trainable * FLOAT32),
    )


def _gib(value: int) -> str:
    return f"{value / 2**30:9.2f} GiB"


def format_plan(plan: MemoryPlan, device_memory: int | None) -> str:
    s = plan.settings
    ac = "on" if s.activation_checkpointing else "off"
    quantized = f" ({s.quantize} q, k, v, o, wi)" if s.quantize != "none" else ""
    lines = [
        f"model {s.model}, method {s.method}: {plan.parameters:,} parameters, {plan.trainable:,} trainable "
        f"({100 * plan.trainable / plan.parameters:.3f}%)",
        f"batch {s.batch_size} global = {s.device_batch} per device x {s.world_size} device(s), source "
        f"{s.source_length} / target {s.target_length} tokens, base {s.base_dtype}{quantized}, strategy {s.strategy}, "
        f"activation checkpointing {ac}",
        "per device:",
        f"  weights            {_gib(plan.weights)}" + ("  (sharded)" if s.strategy == "fsdp" else ""),
        f"  gradients          {_gib(plan.gradients)}  (float32, trainable only)",
        f"  AdamW state        {_gib(plan.optimizer)}  (float32 m and v)",
    ]
    if plan.gradient_buckets:
        lines.append(f"  DDP buckets        {_gib(plan.gradient_buckets)}")
    if plan.gathered_blocks:
        lines.append(f"  gathered blocks    {_gib(plan.gathered_blocks)}  (FSDP: largest block unsharded, x2)")
    other = "off" if s.activation_checkpointing else "on"
    lines += [
        f"  activations        {_gib(plan.activations)}  (float32, attention as the CPU saves it; checkpointing "
        f"{other}: {plan.activations_other / 2**30:.2f} GiB)",
        f"  backward workspace {_gib(plan.workspace)}  (logits' gradients, a block's gradient or recomputation)",
        f"  optimizer step     {_gib(plan.optimizer_step)}  (AdamW temporaries, once the activations are freed)",
        f"  total              {_gib(plan.total)}",
    ]
    if device_memory is not None:
        verdict = "fits" if plan.total <= device_memory else "does NOT fit"
        lines.append(
            f"{verdict} in {device_memory / 1e9:.0f} GB ({device_memory / 2**30:.1f} GiB) per device "
            f"({100 * plan.total / device_memory:.0f}% used)"
        )
    return "\n".join(lines)
