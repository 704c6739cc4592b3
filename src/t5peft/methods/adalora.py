"""AdaLoRA (Zhang et al., 2023): LoRA in SVD form whose rank budget is moved to the layers that matter.

Each target linear layer computes ``y = W x + (B (E ⊙ A)) dropout(x) * alpha / (ranknum + 1e-5)`` with
``A [r, in]`` (right singular vectors), ``E [r, 1]`` (singular values), ``B [out, r]`` (left singular vectors),
``r = init_r`` and ``ranknum = init_r`` for the adapter's whole life (Hugging Face PEFT's scaling: ``lora_alpha``
itself, not ``alpha / r``, divided by the initial rank). ``E`` starts at zero and ``A``, ``B`` at N(0, 0.02²), so an
untrained adapter leaves the model unchanged. The base weight keeps its key (``...q.weight``); the adapter adds
``...q.lora_A`` / ``...q.lora_E`` / ``...q.lora_B`` (no ``.weight``), PEFT's keys once prefixed with
``base_model.model.``.

Training (driven by the loop's hooks):

* ``extra_loss``: ``orth_reg_weight * mean over all A and B of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F``;
* ``after_optimizer_step(step)`` (``step`` = 0-based index of the optimizer step just taken, grads still
  present): importance of every adapter entry ``s = |p * grad|``, smoothed ``s̄ ← β1 s̄ + (1 - β1) s``, uncertainty
  ``ū ← β2 ū + (1 - β2) |s - s̄|``, score ``s̄ * ū``; the score of triplet ``i`` of a layer is
  ``score(E_i) + mean_j score(A_ij) + mean_j score(B_ji)``. The budget (total kept rank) is ``init_r * n`` up to
  ``tinit``, then ``int((b0 - bT) * (1 - (t - tinit) / (T - tfinal - tinit))³ + bT)`` with ``bT = target_r * n``
  and ``T = total_step``; every ``deltaT`` steps the triplets scoring at or below the budget's threshold have
  their ``E`` set to zero. At ``t = T - tfinal`` the budget is ``bT``, the mask is fixed and re-applied after
  every later step (PEFT's ``RankAllocator`` schedule, checked against it in the tests). Between allocations
  (``deltaT > 1``) masked values may drift from zero, as in PEFT.

Files follow PEFT: pruned triplets are dropped from the saved tensors (``E[keep]``, ``A[keep]``, ``B[:, keep]``)
and ``rank_pattern`` records, per ``<module path>.lora_E``, a list of ``init_r`` booleans (True = kept); PEFT
resizes its layers by it on load. t5peft keeps ``init_r``-sized tensors in memory with a per-layer mask (the
``rank_mask`` buffer), so a loaded adapter computes exactly what the trained one did; pruned triplets of a
loaded adapter stay pruned if it is trained further. ``total_step`` is written as the value used (from
``on_train_begin`` when the option was left unset); PEFT refuses a null ``total_step``, so an adapter saved
before any training records the shortest schedule PEFT accepts, ``tinit + tfinal + 1``.

Defaults: init_r 12, target_r 8, lora_alpha 8 (PEFT's), lora_dropout 0.05 (as our LoRA), tinit 0, tfinal 0,
deltaT 1, β1 = β2 = 0.85 (PEFT's and the paper's), orth_reg_weight 0.1 (the paper's value; PEFT's default is
0.5), target_modules q, k, v, o, wi, wo (on gated T5 v1.1 models ``wi`` stands for ``wi_0`` and
``wi_1``, as for every method that wraps linear layers; the saved config names the layers actually adapted).

Trainable parameters: ``init_r * (in + out + 1)`` per target layer. t5-small (d_model 512, d_ff 2048, 6 + 6
layers), default targets: 60 attention projections (encoder q,k,v,o; decoder self and cross q,k,v,o) at
12 * 1025 = 12,300 and 24 FFN projections (wi, wo) at 12 * 2561 = 30,732, i.e. 1,623,168 parameters (2.683% of
60,506,624), initial budget 1,152 triplets, final budget 8 * 96 = 768.

:meth:`AdaLora.merge` folds every update, as the layers compute it, into the base weights and returns a plain T5.
Options and file format: :mod:`.declarations.adalora`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.storage import linear
from .base import (
    AdditiveLinear,
    Method,
    MethodConfigError,
    find_linear_targets,
    linear_targets,
    merge_wrapped_linears,
    replace_module,
    resolve_targets,
)
from .declarations.adalora import DECLARATION, PATTERN_SUFFIX, AdaLoraConfig

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration

log = logging.getLogger(__name__)

PARTS = ("lora_A", "lora_E", "lora_B")


class AdaLoraLinear(AdditiveLinear):
    """A linear layer plus an SVD-form update ``B diag(E) A`` whose triplets can be masked out."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_E = nn.Parameter(torch.zeros(r, 1, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **factory))
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool, device=base.weight.device), persistent=False)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.ranknum = float(r)  # the initial rank, kept after pruning (PEFT's scaling)
        self.scale = alpha / (self.ranknum + 1e-5)
        self.merged = False
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B, mean=0.0, std=0.02)

    @property
    def r(self) -> int:
        return self.lora_E.shape[0]

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ (self.lora_A * self.lora_E)) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return linear(x, self.weight)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A * self.lora_E), self.lora_B)
        return torch.add(linear(x, self.weight), update, alpha=self.scale)

    def kept(self) -> tuple[Tensor, Tensor, Tensor]:
        """``A``, ``E``, ``B`` restricted to the kept triplets (the saved form)."""
        mask = self.rank_mask
        return self.lora_A[mask], self.lora_E[mask], self.lora_B[:, mask]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, init_r={self.r}"


def budget_schedule(
    step: int, init_budget: int, target_budget: int, tinit: int, tfinal: int, total_step: int, delta_t: int
) -> tuple[int, bool]:
    """The total rank allowed after ``step`` and whether the mask is recomputed at it (PEFT's schedule)."""
    if step <= tinit:
        return init_budget, False
    if step > total_step - tfinal:
        return target_budget, True
    remaining = 1 - (step - tinit) / (total_step - tfinal - tinit)
    return int((init_budget - target_budget) * remaining**3 + target_budget), step % delta_t == 0


class RankAllocator:
    """Importance statistics of all AdaLoRA layers of a model, and the budget masking driven by them.

    Triplets pruned before training started (a loaded pruned adapter) are not candidates: as in PEFT, where
    they no longer exist, the initial budget counts only the candidates.
    """

    def __init__(self, layers: list[AdaLoraLinear], config: AdaLoraConfig, total_step: int) -> None:
        self.layers = layers
        self.config = config
        self.total_step = total_step
        self.candidates = [layer.rank_mask.clone() for layer in layers]
        self.restricted = not all(bool(c.all()) for c in self.candidates)
        self.init_budget = int(sum(int(c.sum()) for c in self.candidates))
        self.target_budget = config.target_r * len(layers)
        self.budget = self.init_budget
        self.fixed = False  # the final phase: mask frozen
        self.sensitivity: list[Tensor] | None = None
        self.uncertainty: list[Tensor] | None = None
        self._float_masks: list[Tensor] | None = None
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, layer in enumerate(layers):
            groups.setdefault((layer.r, layer.in_features, layer.out_features), []).append(i)
        self.groups = list(groups.values())  # layers of one shape, batched to save kernel launches

    def params(self) -> list[Tensor]:
        return [getattr(layer, part) for layer in self.layers for part in PARTS]

    # --- per step ----------------------------------------------------------------------------------
    def step(self, step: int) -> None:
        final_start = self.total_step - self.config.tfinal
        if step < final_start:
            self.update_importance()
            budget, due = self.schedule(step)
            self.budget = budget
            if due:
                self.allocate(budget)
        elif not self.fixed:  # step == final_start: the last allocation, at the target budget
            self.budget, _ = self.schedule(final_start)
            self.allocate(self.budget)
            self.fixed = True
            self.sensitivity = self.uncertainty = None
        else:
            self.apply_masks()

    def schedule(self, step: int) -> tuple[int, bool]:
        c = self.config
        return budget_schedule(step, self.init_budget, self.target_budget, c.tinit, c.tfinal, self.total_step, c.deltaT)

    @torch.no_grad()
    def update_importance(self) -> None:
        # foreach ops: one launch per op for all adapter tensors instead of one per tensor
        params = [p.detach().float() for p in self.params()]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().float() for p in self.params()]
        importance = torch._foreach_mul(params, grads)
        torch._foreach_abs_(importance)
        if self.sensitivity is None or self.uncertainty is None:
            self.sensitivity = [torch.zeros_like(t) for t in importance]
            self.uncertainty = [torch.zeros_like(t) for t in importance]
        b1, b2 = self.config.beta1, self.config.beta2
        torch._foreach_mul_(self.sensitivity, b1)
        torch._foreach_add_(self.sensitivity, torch._foreach_mul(importance, 1 - b1))
        deviation = torch._foreach_sub(importance, self.sensitivity)
        torch._foreach_abs_(deviation)
        torch._foreach_mul_(self.uncertainty, b2)
        torch._foreach_add_(self.uncertainty, torch._foreach_mul(deviation, 1 - b2))

    @torch.no_grad()
    def triplet_scores(self) -> list[Tensor]:
        """Per layer, ``[r]``: score(E_i) + mean over row i of A's scores + mean over column i of B's."""
        if self.sensitivity is None or self.uncertainty is None:
            raise RuntimeError("AdaLoRA: rank allocation before any importance update (was a step skipped?)")
        element = torch._foreach_mul(self.sensitivity, self.uncertainty)
        scores: list[Tensor] = [torch.empty(0)] * len(self.layers)
        for indices in self.groups:
            a = torch.stack([element[3 * i] for i in indices]).mean(dim=2)
            e = torch.stack([element[3 * i + 1] for i in indices]).squeeze(2)
            b = torch.stack([element[3 * i + 2] for i in indices]).mean(dim=1)
            total = e + (a + b)
            for row, i in zip(total, indices, strict=True):
                scores[i] = row
        return scores

    @torch.no_grad()
    def allocate(self, budget: int) -> None:
        """Keep the triplets scoring above the (init_budget - budget)-th smallest score; zero the other E."""
        prune = self.init_budget - budget
        if prune <= 0:
            masks = [c.clone() for c in self.candidates]
        else:
            scores = self.triplet_scores()
            pool = [s[c] for s, c in zip(scores, self.candidates, strict=True)] if self.restricted else scores
            threshold = torch.kthvalue(torch.cat(pool), prune).values
            masks = [c & (s > threshold) for s, c in zip(scores, self.candidates, strict=True)]
        for layer, mask in zip(self.layers, masks, strict=True):
            layer.rank_mask.copy_(mask)
        self._float_masks = None
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        if self._float_masks is None:
            self._float_masks = [layer.rank_mask[:, None].to(layer.lora_E.dtype) for layer in self.layers]
        torch._foreach_mul_([layer.lora_E for layer in self.layers], self._float_masks)

    # --- checkpoints -------------------------------------------------------------------------------
    def state(self, names: list[str]) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {
            "budget": torch.tensor(self.budget),
            "fixed": torch.tensor(self.fixed),
            "total_step": torch.tensor(self.total_step),
        }
        for name, layer, candidates in zip(names, self.layers, self.candidates, strict=True):
            tensors[f"{name}.rank_mask"] = layer.rank_mask.clone()
            tensors[f"{name}.candidates"] = candidates.clone()
        if self.sensitivity is not None and self.uncertainty is not None:
            keys = [f"{name}.{part}" for name in names for part in PARTS]
            for key, sens, unc in zip(keys, self.sensitivity, self.uncertainty, strict=True):
                tensors[f"{key}.sensitivity"] = sens.clone()
                tensors[f"{key}.uncertainty"] = unc.clone()
        return tensors

    def load_state(self, names: list[str], tensors: dict[str, Tensor]) -> None:
        self.budget = int(tensors["budget"])
        self.fixed = bool(tensors["fixed"])
        self.total_step = int(tensors["total_step"])
        for i, (name, layer) in enumerate(zip(names, self.layers, strict=True)):
            layer.rank_mask.copy_(tensors[f"{name}.rank_mask"])
            self.candidates[i] = tensors[f"{name}.candidates"].to(layer.rank_mask.device)
        self.restricted = not all(bool(c.all()) for c in self.candidates)
        self.init_budget = int(sum(int(c.sum()) for c in self.candidates))
        self._float_masks = None
        keys = [f"{name}.{part}" for name in names for part in PARTS]
        if f"{keys[0]}.sensitivity" in tensors:
            params = self.params()
            self.sensitivity = [tensors[f"{k}.sensitivity"].to(p.device) for k, p in zip(keys, params, strict=True)]
            self.uncertainty = [tensors[f"{k}.uncertainty"].to(p.device) for k, p in zip(keys, params, strict=True)]
        else:
            self.sensitivity = self.uncertainty = None


class AdaLora(Method):
    declaration = DECLARATION
    identity_at_init = True
    cannot_merge = None

    def __init__(self, config: AdaLoraConfig, *, from_file: bool = False) -> None:
        super().__init__(config, from_file=from_file)
        self.config: AdaLoraConfig = config
        self.layers: dict[str, AdaLoraLinear] = {}
        self.allocator: RankAllocator | None = None
        self._orth_groups: list[list[AdaLoraLinear]] = []

    # --- structure ---------------------------------------------------------------------------------
    def inject(self, model: T5ForConditionalGeneration) -> None:
        c = self.config
        c.target_modules = resolve_targets(model.config, c.target_modules)  # recorded as adapted
        pattern = dict(c.rank_pattern or {})
        for name in find_linear_targets(model, c.target_modules):
            layer = AdaLoraLinear(model.get_submodule(name), c.init_r, c.lora_alpha, c.lora_dropout)
            kept = pattern.pop(name + PATTERN_SUFFIX, None)
            if kept is not None:
                layer.rank_mask.copy_(torch.tensor(kept, dtype=torch.bool))
            replace_module(model, name, layer)
            self.layers[name] = layer
        if pattern:
            raise MethodConfigError(f"rank_pattern names layers that are not adapted: {', '.join(sorted(pattern))}")
        shapes: dict[tuple[int, int], list[AdaLoraLinear]] = {}
        for layer in self.layers.values():
            shapes.setdefault((layer.in_features, layer.out_features), []).append(layer)
        self._orth_groups = list(shapes.values())

    def closed_form_trainable(self, config: T5Config) -> int:
        targets = linear_targets(config, self.config.target_modules)
        return sum(n * self.config.init_r * (i + o + 1) for n, i, o in targets.values())

    # --- training ----------------------------------------------------------------------------------
    def on_train_begin(self, model: T5ForConditionalGeneration, total_steps: int) -> None:
        c = self.config
        if c.total_step is None:
            c.check_schedule(total_steps)
            c.total_step = total_steps
        elif c.total_step != total_steps:
            log.info("AdaLoRA: schedule over total_step=%d (the run has %d steps)", c.total_step, total_steps)
        self.allocator = RankAllocator(list(self.layers.values()), c, c.total_step)

    def extra_loss(self, model: T5ForConditionalGeneration) -> Tensor | None:
        weight = self.config.orth_reg_weight
        if weight == 0:
            return None
        total = None
        for layers in self._orth_groups:
            a = torch.stack([layer.lora_A for layer in layers])  # [g, r, in]
            b = torch.stack([layer.lora_B for layer in layers])  # [g, out, r]
            eye = torch.eye(a.shape[1], device=a.device, dtype=a.dtype)
            term = torch.linalg.matrix_norm(a @ a.mT - eye).sum() + torch.linalg.matrix_norm(b.mT @ b - eye).sum()
            total = term if total is None else total + term
        return weight * total / (2 * len(self.layers))

    def after_optimizer_step(self, model: T5ForConditionalGeneration, step: int, total_steps: int) -> None:
        if self.allocator is None:
            self.on_train_begin(model, total_steps)
        assert self.allocator is not None
        self.allocator.step(step)

    def training_state(self) -> dict[str, Tensor]:
        return {} if self.allocator is None else self.allocator.state(list(self.layers))

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        if not state:
            return
        if self.allocator is None:
            total_step = int(state["total_step"])
            self.config.total_step = total_step
            self.allocator = RankAllocator(list(self.layers.values()), self.config, total_step)
        self.allocator.load_state(list(self.layers), state)

    def final_ranks(self) -> dict[str, int]:
        return {name: int(layer.rank_mask.sum()) for name, layer in self.layers.items()}

    def report(self, model: T5ForConditionalGeneration) -> dict[str, Any]:
        ranks = self.final_ranks()
        allocator = self.allocator
        return {
            "final_ranks": ranks,
            "budget": allocator.budget if allocator is not None else sum(ranks.values()),
            "init_budget": allocator.init_budget if allocator is not None else sum(ranks.values()),
            "target_budget": self.config.target_r * len(ranks),
            "total_step": self.config.total_step,
        }

    # --- files -------------------------------------------------------------------------------------
    def export_state(self, model: T5ForConditionalGeneration, names: list[str]) -> dict[str, Tensor]:
        state = {}
        for name, layer in self.layers.items():
            for part, tensor in zip(PARTS, layer.kept(), strict=True):
                state[f"{name}.{part}"] = tensor.detach()
        if set(state) != set(names):
            raise RuntimeError("AdaLoRA: the trainable parameters are not the adapter's A, E, B")
        return state

    def import_state(self, model: T5ForConditionalGeneration, state: dict[str, Tensor], source: str) -> None:
        with torch.no_grad():
            for name, layer in self.layers.items():
                mask = layer.rank_mask
                for part in PARTS:
                    param = getattr(layer, part)
                    param.zero_()
                    value = state[f"{name}.{part}"].to(param.dtype)
                    if part == "lora_B":
                        param[:, mask] = value
                    else:
                        param[mask] = value

    def rank_pattern(self) -> dict[str, list[bool]] | None:
        """Kept triplets per layer, or None when nothing is pruned (then PEFT loads the tensors as they are)."""
        if all(bool(layer.rank_mask.all()) for layer in self.layers.values()):
            return None
        return {name + PATTERN_SUFFIX: layer.rank_mask.tolist() for name, layer in self.layers.items()}

    def saved_options(self) -> dict[str, Any]:
        c = self.config
        values = c.to_dict()
        values["total_step"] = c.total_step if c.total_step is not None else c.tinit + c.tfinal + 1
        values["rank_pattern"] = self.rank_pattern()
        return values

    # --- merging -----------------------------------------------------------------------------------
    def merge(self, model: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
        """Fold every layer's update ``B (E ⊙ A) * scale``, as its forward computes it, into its base weight."""
        return merge_wrapped_linears(model, AdaLoraLinear)
