"""VeRA (Kopiczko et al., 2024): one pair of frozen random matrices shared by all targets, scaled per layer.

For a target ``y = W x`` (``in`` -> ``out``): ``y = W x + b ⊙ (B (d ⊙ (A dropout(x))))`` with the trained vectors
``d = vera_lambda_d [r]`` and ``b = vera_lambda_b [out]``, and ``A = vera_A[:, :in]``, ``B = vera_B[:out, :]``
sliced from projections shared by every target: ``vera_A [r, max in]`` and ``vera_B [max out, r]``, the largest
input and output sizes among the targets taken separately.

The projections are drawn as Hugging Face PEFT draws them, so a file without them reproduces them: a CPU
``torch.Generator`` seeded with ``projection_prng_key`` fills first ``vera_A`` and then ``vera_B``, each
``float32`` and uniform in ``±sqrt(3) * sqrt(2) / sqrt(fan_in)`` (Kaiming-uniform with ``a = 0``; ``fan_in`` is the
second dimension: ``max in`` for ``A``, ``r`` for ``B``). They are frozen buffers (not parameters, never trained,
not counted; PEFT counts them neither), one shared :class:`VeraProjections` module referenced by every layer.

Initialisation (``init_weights=True``, PEFT's default): ``d = d_initial`` (0.1) and ``b = 0``, so an untrained
adapter leaves the model unchanged; ``init_weights=False``: ``b = 1`` and ``d ~ N(0, 1)`` (PEFT's choice).

Trainable parameters: ``out + r`` per target; for t5-small with the defaults (q and v of all 18 attentions,
out = 512, r = 256): ``36 * (512 + 256)`` = 27,648.

File format: Hugging Face PEFT's ``VERA``: per target ``base_model.model.<module path>.vera_lambda_b`` /
``.vera_lambda_d``, and with ``save_projection`` (the default) the shared ``base_model.vera_A`` /
``base_model.vera_B``; without it they are drawn again from ``projection_prng_key`` when loading.

:meth:`VeraLinear.merge` / :meth:`VeraLinear.unmerge` add / subtract ``(b ⊙ B)(d ⊙ A)`` to / from the weight;
:meth:`Vera.merge` returns a plain T5. Options and file format: :mod:`.declarations.vera`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.storage import linear
from .base import (
    AdditiveLinear,
    Method,
    find_linear_targets,
    linear_targets,
    merge_wrapped_linears,
    replace_module,
    resolve_targets,
)
from .declarations.vera import DECLARATION, PROJECTION_FILE_KEYS, VeraConfig

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """``float32`` uniform in ``±sqrt(6 / shape[1])``, drawn from ``generator`` (how PEFT draws VeRA's projections)."""
    std = math.sqrt(2.0) / math.sqrt(shape[1])
    bound = math.sqrt(3.0) * std  # in this order: the same float as PEFT's bound, hence the same draws
    return torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)


def draw_projections(r: int, max_in: int, max_out: int, key: int) -> tuple[Tensor, Tensor]:
    """``vera_A [r, max_in]`` then ``vera_B [max_out, r]`` from one CPU generator seeded with ``key``."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    vera_a = kaiming_uniform((r, max_in), generator)
    vera_b = kaiming_uniform((max_out, r), generator)
    return vera_a, vera_b


class VeraProjections(nn.Module):
    """The frozen ``vera_A`` / ``vera_B`` shared by every VeRA layer (non-persistent buffers)."""

    def __init__(self, vera_a: Tensor, vera_b: Tensor) -> None:
        super().__init__()
        self.register_buffer("vera_A", vera_a, persistent=False)
        self.register_buffer("vera_B", vera_b, persistent=False)


class VeraLinear(AdditiveLinear):
    """A bias-free linear layer plus VeRA's update through the shared projections."""

    def __init__(self, base: nn.Linear, projections: VeraProjections, dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.projections = projections  # the same module in every layer: its buffers exist once
        r = projections.vera_A.shape[0]
        device, dtype = base.weight.device, base.weight.dtype
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype))
        self.vera_lambda_d = nn.Parameter(torch.zeros(r, device=device, dtype=dtype))
        self.vera_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @torch.no_grad()
    def reset(self, init_weights: bool, d_initial: float) -> None:
        if init_weights:
            self.vera_lambda_b.zero_()
            self.vera_lambda_d.fill_(d_initial)
        else:
            self.vera_lambda_b.fill_(1.0)
            self.vera_lambda_d.normal_()

    def sliced(self) -> tuple[Tensor, Tensor]:
        return self.projections.vera_A[:, : self.in_features], self.projections.vera_B[: self.out_features]

    def delta_weight(self) -> Tensor:
        a, b = self.sliced()
        return (self.vera_lambda_b[:, None] * b) @ (self.vera_lambda_d[:, None] * a)

    def forward(self, x: Tensor) -> Tensor:
        out = linear(x, self.weight)
        if self.merged:
            return out
        a, b = self.sliced()
        hidden = F.linear(self.vera_dropout(x), a.to(x.dtype))
        update = F.linear(self.vera_lambda_d.to(hidden.dtype) * hidden, b.to(hidden.dtype))
        return out + self.vera_lambda_b.to(update.dtype) * update

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.vera_lambda_d.shape[0]}"


def inject_vera(model: T5ForConditionalGeneration, config: VeraConfig) -> VeraProjections:
    config.target_modules = resolve_targets(model.config, config.target_modules)  # recorded as adapted
    names = find_linear_targets(model, config.target_modules)
    layers = [model.get_submodule(name) for name in names]
    max_in = max(layer.in_features for layer in layers)
    max_out = max(layer.out_features for layer in layers)
    vera_a, vera_b = draw_projections(config.r, max_in, max_out, config.projection_prng_key)
    weight = layers[0].weight
    projections = VeraProjections(vera_a.to(weight.device, weight.dtype), vera_b.to(weight.device, weight.dtype))
    for name, base in zip(names, layers, strict=True):
        layer = VeraLinear(base, projections, config.vera_dropout)
        layer.reset(config.init_weights, config.d_initial)
        replace_module(model, name, layer)
    return projections


def _projections(model: nn.Module) -> VeraProjections:
    return next(m for m in model.modules() if isinstance(m, VeraProjections))


class Vera(Method):
    declaration = DECLARATION
    identity_at_init = True
    cannot_merge = None

    def inject(self, model) -> None:
        inject_vera(model, self.config)

    def closed_form_trainable(self, config: T5Config) -> int:
        """``sum over targets of out + r``."""
        targets = linear_targets(config, self.config.target_modules)
        return sum(n * (fan_out + self.config.r) for n, _, fan_out in targets.values())

    def export_state(self, model, names: list[str]) -> dict[str, Tensor]:
        state = super().export_state(model, names)
        if self.config.save_projection:
            projections = _projections(model)
            state.update(vera_A=projections.vera_A.detach(), vera_B=projections.vera_B.detach())
        return state

    def import_state(self, model, state: dict[str, Tensor], source: str) -> None:
        projections = _projections(model)
        with torch.no_grad():
            for key in PROJECTION_FILE_KEYS:
                if key in state:
                    getattr(projections, key).copy_(state[key])
        super().import_state(model, {k: v for k, v in state.items() if k not in PROJECTION_FILE_KEYS}, source)

    def merge(self, model):
        """Fold every VeRA update into its base weight and restore plain ``nn.Linear`` layers (a plain T5)."""
        return merge_wrapped_linears(model, VeraLinear)
