"""LoRA: ``y = W x + s * B A dropout(x)`` on chosen linear layers, ``s = alpha / r`` (or alpha / sqrt(r)).

The base weight stays under its original key (``...q.weight``); the adapter adds ``...q.lora_A.weight``
``[r, in]`` and ``...q.lora_B.weight`` ``[out, r]``, which are also Hugging Face PEFT's keys once prefixed
with ``base_model.model.``. ``A`` starts Kaiming-uniform and ``B`` at zero, so an untrained adapter leaves
the model unchanged.

Trainable parameters: ``r * (in_features + out_features)`` per target layer. t5-small with the defaults (q and v of
6 encoder self-, 6 decoder self- and 6 cross-attentions, 512 -> 512, r 8): 36 * 8 * 1,024 = 294,912.

Targets are leaf names of linear layers; on a gated T5 (v1.1, flan-t5) ``wi`` stands for ``wi_0`` and ``wi_1``, and the
saved config names those two (PEFT matches names exactly). Options and file format: :mod:`.declarations.lora`.
:meth:`Lora.merge` folds the update into the weights and returns a plain T5 (``LoraLinear.unmerge`` undoes a merge).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

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
from .declarations.lora import DECLARATION, LoraConfig

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration


class LoraLinear(AdditiveLinear):
    """A linear layer plus a low-rank update; ``merge`` folds the update into ``weight``."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, use_rslora: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=base.weight.device)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        out = linear(x, self.weight)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.lora_A.out_features}"


def inject_lora(
    model: T5ForConditionalGeneration, config: LoraConfig, layer: type[LoraLinear] = LoraLinear
) -> list[str]:
    """Wrap every target linear layer in ``layer`` (``LoraLinear`` or a subclass such as DoRA's); the config records
    the layers as adapted (``wi`` on a gated T5 as ``wi_0`` and ``wi_1``, the names PEFT needs)."""
    config.target_modules = resolve_targets(model.config, config.target_modules)
    names = find_linear_targets(model, config.target_modules)
    for name in names:
        base = model.get_submodule(name)
        replace_module(model, name, layer(base, config.r, config.lora_alpha, config.lora_dropout, config.use_rslora))
    return names


def lora_trainable(config: LoraConfig, model_config: T5Config) -> int:
    """``r * (in + out)`` per target layer."""
    return sum(n * config.r * (i + o) for n, i, o in linear_targets(model_config, config.target_modules).values())


class Lora(Method):
    declaration = DECLARATION
    identity_at_init = True
    cannot_merge = None

    def inject(self, model) -> None:
        inject_lora(model, self.config)

    def closed_form_trainable(self, config: T5Config) -> int:
        return lora_trainable(self.config, config)

    def merge(self, model):
        """Fold every LoRA update into its base weight and restore plain ``nn.Linear`` layers (a plain T5)."""
        return merge_wrapped_linears(model, LoraLinear)
