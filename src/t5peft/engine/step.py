"""One training step, the same for the training loop, pretraining, the tests and the benchmark.

Order: forward with labels (bf16 autocast on CUDA), the method's extra loss, backward, gradient clipping,
AdamW, the method's update after the optimizer step (AdaLoRA's rank allocation), the scheduler, zero_grad.

Compiled (``compile=True``): every T5 block goes through ``torch.compile`` (``fullgraph``, static shapes: see
``data.text2text.StaticShape``). Compiling block by block ("regional compilation") lets the blocks of a stack
share one compiled graph, so compiling costs a fraction of compiling the whole model, while almost every
kernel still comes from a fused block. On CUDA the whole forward + backward + clipping is then captured once
as a CUDA graph and replayed at every step (the launches between blocks cost nothing in a replay); fused
AdamW, the method's Python-side update and the scheduler run after the replay, outside the graph, so the
learning rate and AdaLoRA's allocation stay ordinary Python. Gradients live in the graph's memory and are
overwritten by each replay instead of being zeroed.

The training loss is summed on the device (in float64, as a Python float would) and read only when asked
(:meth:`TrainStep.read_loss`), so no step waits for the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from ..data.text2text import Batch
from .distributed import Distribution
from .settings import COMPILE_SETTINGS

# torch.compile backend: inductor (the default) generates fused kernels; "aot_eager" traces forward and backward
# the same way without generating code (seconds instead of minutes on a CPU), for quick checks and debugging.
BACKEND_VARIABLE = "T5PEFT_COMPILE_BACKEND"
RECOMPILE_LIMIT = 256
GRAPH_WARMUP_STEPS = 3  # forward + backward runs on a side stream before capture (compile, allocator, cuBLAS)

LossFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def resolve_compile(setting: str, device: torch.device) -> bool:
    """``auto``: compiled on CUDA, eager on the CPU (where compiling does not pay for itself)."""
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def method_of(model: nn.Module):
    return None if model.peft is None else model.peft.method


def make_loss_fn(model: nn.Module, device: torch.device, bf16: bool, forward: nn.Module | None = None) -> LossFn:
    """``(input_ids, attention_mask, labels) -> (task loss, loss to minimise)``; the second adds the method's term.

    ``forward``: the module the forward goes through when it is not ``model`` itself (DDP's wrapper)."""
    method = method_of(model)
    module = model if forward is None else forward

    def loss_fn(input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(device, bf16):
            loss = module(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        extra = method.extra_loss(model) if method is not None else None
        return loss, loss if extra is None else loss + extra

    return loss_fn


def compile_backend() -> str:
    return os.environ.get(BACKEND_VARIABLE, "inductor")


def compile_blocks(model: nn.Module) -> None:
    """Compile every T5 block of ``model`` in place (idempotent); module names and state dicts are unchanged."""
    if getattr(model, "_t5peft_blocks_compiled", False):
        return
    # Blocks legitimately differ in guards (the first block's input needs no gradient, encoder and decoder masks
    # differ in shape, training and evaluation), and one process may compile several models (benchmarks): allow
    # that many variants. Past the limit, fullgraph=True makes torch fail loudly rather than run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            block.compile(fullgraph=True, dynamic=False, backend=compile_backend())
    model._t5peft_blocks_compiled = True


class TrainStep:
    """Owns what one step touches; call it with a batch on the model's device.

    ``step`` is the 0-based index of the next optimizer step (set it when resuming); ``total_steps`` is passed
    to the method's after-step update (AdaLoRA's schedule).

    On many ranks (``dist``, :class:`~.distributed.Distribution`), the forward goes through ``forward`` (the DDP or
    FSDP module), each rank's mean loss is weighted by its batch's ``loss_weight`` (its share of the global batch's
    target tokens) and multiplied by the world size for the backward (DDP and FSDP average gradients), and the
    loss read at a log point is summed over the ranks: the global batch's mean loss.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        *,
        total_steps: int,
        max_grad_norm: float | None = 1.0,
        bf16: bool = False,
        compile: bool = False,
        cuda_graph: bool | None = None,
        forward: nn.Module | None = None,
        dist: Distribution | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.total_steps = total_steps
        self.max_grad_norm = max_grad_norm
        self.device = next(model.parameters()).device
        self.method = method_of(model)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.compiled = compile
        self.dist = dist if dist is not None else Distribution.single()
        # a captured graph cannot hold the ranks' collectives (DDP's buckets, FSDP's gathers) safely: eager launches
        default_graph = compile and self.device.type == "cuda" and not self.dist.distributed
        self.cuda_graph = default_graph if cuda_graph is None else cuda_graph
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if self.cuda_graph and self.dist.distributed:
            raise ValueError("CUDA graphs are not used on many ranks")
        if compile:
            compile_blocks(model)
        self.loss_fn: LossFn = make_loss_fn(model, self.device, bf16, forward)
        self.step = 0
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss_steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: list[Tensor] = []
        self.prepared = False

    # ----------------------------------------------------------------------------------------------
    def __call__(self, batch: Batch) -> None:
        tensors = (batch.input_ids, batch.attention_mask, batch.labels)
        if self.cuda_graph:
            if not self.prepared:
                self.prepare(batch)
            for static, tensor in zip(self._static, tensors, strict=True):
                static.copy_(tensor, non_blocking=True)
            self._graph.replay()
        else:
            self._forward_backward(*tensors, weight=batch.loss_weight)
        self._optimizer_step(zero_grad=not self.cuda_graph)

    def _forward_backward(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, weight: float | None = None
    ) -> None:
        loss, total = self.loss_fn(input_ids, attention_mask, labels)
        if self.dist.distributed and weight is not None:  # this rank's share of the global batch (class docstring)
            extra = total - loss
            loss = loss * weight
            total = loss * self.dist.gradient_scale + extra
        total.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.loss_sum += loss.detach()

    def _optimizer_step(self, zero_grad: bool) -> None:
        self.optimizer.step()
        if self.method is not None:
            self.method.after_optimizer_step(self.model, self.step, self.total_steps)
        if self.scheduler is not None:
            self.scheduler.step()
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.loss_steps += 1

    # ----------------------------------------------------------------------------------------------
    def prepare(self, batch: Batch) -> None:
        """Compile (and on CUDA capture the graph) with ``batch``'s shapes, without changing any weight.

        The warm-up runs forward and backward only (no optimizer step), and the random generators and the
        loss sum are put back afterwards, so a run that prepares computes exactly what it would without.
        """
        tensors = (batch.input_ids, batch.attention_mask, batch.labels)
        rng = _rng_state(self.device)
        loss_sum = self.loss_sum.clone()
        if not self.cuda_graph:
            if self.compiled:
                self._forward_backward(*tensors)
                self.optimizer.zero_grad(set_to_none=True)
        else:
            self._static = [t.clone() for t in tensors]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_STEPS):
                    self._forward_backward(*self._static)
                    self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.current_stream(self.device).wait_stream(side)
            _set_rng_state(self.device, rng)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._forward_backward(*self._static)
            self._graph = graph
        _set_rng_state(self.device, rng)
        self.loss_sum.copy_(loss_sum)
        self.prepared = True

    # ----------------------------------------------------------------------------------------------
    def read_loss(self) -> tuple[float, int]:
        """The summed training loss and the number of steps since the last reset (waits for the device); on many
        ranks, summed over them (every rank calls this at the same step)."""
        return float(self.dist.sum(self.loss_sum.clone()).item()), self.loss_steps

    def reset_loss(self, total: float = 0.0, steps: int = 0) -> None:
        """Start the loss sum at ``total`` (a resumed run's), held by the writer rank only, so the sum over the
        ranks counts it once."""
        self.loss_sum.fill_(total if self.dist.is_writer else 0.0)
        self.loss_steps = steps


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[Tensor, Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def training_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    step: int,
    total_steps: int,
    max_grad_norm: float | None = 1.0,
) -> float:
    """One eager step, for tests and scripts that drive steps one by one; returns the task loss."""
    runner = TrainStep(model, optimizer, scheduler, total_steps=total_steps, max_grad_norm=max_grad_norm)
    runner.step = step
    runner(batch)
    return runner.read_loss()[0]
