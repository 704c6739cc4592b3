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

:meth:`IA3.merge` folds the vectors into the weights (rows for ``[out, 1]``, columns for ``[1, in]``) and returns a
plain T5. There is no unmerge: dividing by a learned scale is not exact, and a vector may contain zeros. On a gated T5
``wi`` stands for ``wi_0`` and ``wi_1`` in both lists. Options and file format: :mod:`.declarations.ia3`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..model.storage import linear
from .base import Method, find_linear_targets, linear_targets, merge_wrapped_linears, replace_module, resolve_targets
from .declarations.ia3 import DECLARATION, IA3Config

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration


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
            return linear(x, self.weight)
        scale = self.ia3_l.view(-1)
        if self.is_feedforward:
            return linear(x * scale.to(x.dtype), self.weight)
        out = linear(x, self.weight)
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


def inject_ia3(model: T5ForConditionalGeneration, config: IA3Config) -> list[str]:
    config.target_modules = resolve_targets(model.config, config.target_modules)  # recorded as adapted
    config.feedforward_modules = resolve_targets(model.config, config.feedforward_modules)
    names = find_linear_targets(model, config.target_modules)
    for name in names:
        is_feedforward = any(name.endswith(f) for f in config.feedforward_modules)
        replace_module(model, name, IA3Linear(model.get_submodule(name), is_feedforward, config.init_ia3_weights))
    return names


class IA3(Method):
    declaration = DECLARATION
    identity_at_init = True  # with init_ia3_weights (the default): every vector starts at one
    cannot_merge = None

    def inject(self, model) -> None:
        inject_ia3(model, self.config)

    def closed_form_trainable(self, config: T5Config) -> int:
        feedforward = resolve_targets(config, self.config.feedforward_modules)
        total = 0
        for name, (n, i, o) in linear_targets(config, self.config.target_modules).items():
            # a module path ends with a feedforward name exactly when its leaf name does (names have no dots)
            total += n * (i if any(name.endswith(f) for f in feedforward) else o)
        return total

    def merge(self, model):
        """Fold every (IA)^3 vector into its base weight and restore plain ``nn.Linear`` layers (a plain T5)."""
        return merge_wrapped_linears(model, IA3Linear)
