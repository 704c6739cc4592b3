"""(IA)^3 (Liu et al. 2022): learned vectors that rescale activations of chosen linear layers.

For a target ``y = W x``: an ordinary target scales its output, ``y = l * (W x)`` with ``ia3_l`` of shape
``[out, 1]``; a *feedforward* target scales its input, ``y = W (l * x)`` with ``ia3_l`` ``[1, in]``. With the
defaults (``target_modules = [k, v, wo]``, ``feedforward_modules = [wo]``, Hugging Face PEFT's choice for T5)
this rescales the attention keys and values and the FFN's hidden activation, as in the paper. ``init_ia3_weights``
(True) starts every vector at one, so an untrained adapter leaves the model exactly unchanged; False draws them
from ``N(0, 1)`` as PEFT does.

Target matching is PEFT's: a target is a linear layer whose last name component is in ``target_modules``; it is
feedforward when its full module path ends with one of ``feedforward_modules`` (a plain string suffix, as PEFT
tests it). ``feedforward_modules`` must be a subset of ``target_modules``; left unset it is ``[wo]`` when ``wo`` is a
target and empty otherwise (PEFT's default for T5).

Parameter count: ``out_features`` per ordinary target and ``in_features`` per feedforward target. At the
defaults: ``L_enc * (2 * inner + d_ff) + L_dec * (4 * inner + d_ff)`` with ``inner = num_heads * d_kv`` (k and v
of every self-attention and cross-attention, plus wo of every FFN). For t5-small (inner 512, d_ff 2048, 6 + 6
layers): 6 * 3,072 + 6 * 4,096 = 43,008.

File format: Hugging Face PEFT's ``IA3``; the base weight stays under its original key (``...k.weight``), the
vector is ``...k.ia3_l``, in the file ``base_model.model.<module path>.ia3_l``.

:func:`merge_ia3` folds the vectors into the weights (rows for ``[out, 1]``, columns for ``[1, in]``) and returns a
plain T5. There is no unmerge: dividing by a learned scale is not exact, and a vector may contain zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Method,
    MethodConfig,
    Neutral,
    check_bool,
    find_linear_targets,
    linear_targets,
    merge_wrapped_linears,
    module_list,
    replace_module,
    require,
)

if TYPE_CHECKING:
    from ..model.config import T5Config

DEFAULT_TARGETS = ["k", "v", "wo"]
DEFAULT_FEEDFORWARD = ["wo"]

# Fields of PEFT's IA3Config that t5peft reads but does not implement, with the values it accepts.
PEFT_IA3_NEUTRAL_FIELDS = {
    "fan_in_fan_out": Neutral((False,), written=True),
    "modules_to_save": Neutral((None, []), written=True),
    "exclude_modules": Neutral((None, []), written=True),
}


class IA3Linear(nn.Module):
    """A bias-free linear layer whose output (or, if feedforward, input) is scaled by a learned vector."""

    def __init__(self, base: nn.Linear, is_feedforward: bool, init_ones: bool) -> None:
        super().__init__()
        if base.bias is not None:
            raise ValueError("IA3Linear expects a bias-free linear layer (T5 has no biases)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.is_feedforward = is_feedforward
        self.weight = base.weight
        shape = (1, self.in_features) if is_feedforward else (self.out_features, 1)
        self.ia3_l = nn.Parameter(torch.empty(shape, device=base.weight.device, dtype=base.weight.dtype))
        self.merged = False
        with torch.no_grad():
            if init_ones:
                self.ia3_l.fill_(1.0)
            else:
                self.ia3_l.normal_()

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return F.linear(x, self.weight)
        scale = self.ia3_l.view(-1)
        if self.is_feedforward:
            return F.linear(x * scale.to(x.dtype), self.weight)
        out = F.linear(x, self.weight)
        return out * scale.to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the scaling into ``weight``: ``[out, 1]`` scales its rows, ``[1, in]`` its columns."""
        if not self.merged:
            self.weight.mul_(self.ia3_l.to(self.weight.dtype))
            self.merged = True

    def extra_repr(self) -> str:
        kind = "input" if self.is_feedforward else "output"
        return f"in={self.in_features}, out={self.out_features}, scales={kind}"


@dataclass
class IA3Config(MethodConfig):
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    # None (the default) means PEFT's choice for T5: wo, if it is a target
    feedforward_modules: list[str] | None = None
    init_ia3_weights: bool = True

    def validate(self) -> None:
        self.target_modules = module_list("target_modules", self.target_modules)
        if self.feedforward_modules is None:
            self.feedforward_modules = [f for f in DEFAULT_FEEDFORWARD if f in self.target_modules]
        elif self.feedforward_modules != []:
            self.feedforward_modules = module_list("feedforward_modules", self.feedforward_modules)
        extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
        require(not extra, f"feedforward_modules must be a subset of target_modules; not targets: {extra}")
        check_bool("init_ia3_weights", self.init_ia3_weights)


def inject_ia3(model: nn.Module, config: IA3Config) -> list[str]:
    names = find_linear_targets(model, config.target_modules)
    for name in names:
        is_feedforward = any(name.endswith(f) for f in config.feedforward_modules)
        replace_module(model, name, IA3Linear(model.get_submodule(name), is_feedforward, config.init_ia3_weights))
    return names


class IA3(Method):
    name = "ia3"
    peft_type = "IA3"
    config_class = IA3Config
    default_lr = 3e-3
    peft_compatible = True
    neutral_file_fields = PEFT_IA3_NEUTRAL_FIELDS
    identity_at_init = True  # with init_ia3_weights (the default): every vector starts at one

    def inject(self, model) -> None:
        inject_ia3(model, self.config)

    def closed_form_trainable(self, config: T5Config) -> int:
        targets = self.config.target_modules
        total = 0
        for name, (n, i, o) in zip(targets, linear_targets(config, targets), strict=True):
            # a module path ends with a feedforward name exactly when its leaf name does (names have no dots)
            total += n * (i if any(name.endswith(f) for f in self.config.feedforward_modules) else o)
        return total


def merge_ia3(model: nn.Module) -> nn.Module:
    """Fold every (IA)^3 vector into its base weight and restore plain ``nn.Linear`` layers (a plain T5)."""
    return merge_wrapped_linears(model, IA3Linear)
