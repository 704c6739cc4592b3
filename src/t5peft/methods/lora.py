"""LoRA: ``y = W x + s * B A dropout(x)`` on chosen linear layers, ``s = alpha / r`` (or alpha / sqrt(r)).

The base weight stays under its original key (``...q.weight``); the adapter adds ``...q.lora_A.weight``
``[r, in]`` and ``...q.lora_B.weight`` ``[out, r]``, which are also Hugging Face PEFT's keys once prefixed
with ``base_model.model.``. ``A`` starts Kaiming-uniform and ``B`` at zero, so an untrained adapter leaves
the model unchanged.

Trainable parameters: ``r * (in_features + out_features)`` per target layer. t5-small with the defaults (q and v of
6 encoder self-, 6 decoder self- and 6 cross-attentions, 512 -> 512, r 8): 36 * 8 * 1,024 = 294,912.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    AdditiveLinear,
    Method,
    MethodConfig,
    Neutral,
    check_bool,
    check_fraction,
    check_int,
    check_positive,
    find_linear_targets,
    linear_targets,
    merge_wrapped_linears,
    module_list,
    replace_module,
)

if TYPE_CHECKING:
    from ..model.config import T5Config

# Fields of PEFT's LoraConfig that t5peft reads but does not implement: the values it accepts, and those it writes.
PEFT_LORA_NEUTRAL_FIELDS = {
    "bias": Neutral(("none",), written=True),
    "fan_in_fan_out": Neutral((False,), written=True),
    "use_dora": Neutral((False,), written=True),
    "init_lora_weights": Neutral((True,), written=True),
    "modules_to_save": Neutral((None, []), written=True),
    "layers_to_transform": Neutral((None,), written=True),
    "layers_pattern": Neutral((None,), written=True),
    "rank_pattern": Neutral(({}, None), written=True),
    "alpha_pattern": Neutral(({}, None), written=True),
    "lora_bias": Neutral((False,)),
    "use_qalora": Neutral((False,)),
    "exclude_modules": Neutral((None,)),
    "layer_replication": Neutral((None,)),
    "trainable_token_indices": Neutral((None,)),
    "target_parameters": Neutral((None,)),
    "alora_invocation_tokens": Neutral((None,)),
    "ensure_weight_tying": Neutral((False,)),
    "use_bdlora": Neutral((None, False)),
    # settings of initialisers / integrations that do not change a saved adapter's function
    "loftq_config": Neutral(({}, None)),
    "eva_config": Neutral((None,)),
    "corda_config": Neutral((None,)),
    "megatron_config": Neutral((None,)),
    "megatron_core": Neutral(("megatron.core", None)),
    "qalora_group_size": Neutral((16,), accept_int=True),
    "arrow_config": Neutral((None,)),
    "lora_ga_config": Neutral((None,)),
    "kasa_config": Neutral((None,)),
    "monteclora_config": Neutral((None,)),
    "velora_config": Neutral((None,)),
}


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
        out = F.linear(x, self.weight)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.lora_A.out_features}"


@dataclass
class LoraConfig(MethodConfig):
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])
    use_rslora: bool = False

    def validate(self) -> None:
        check_int("r", self.r)
        check_positive("lora_alpha", self.lora_alpha)
        check_fraction("lora_dropout", self.lora_dropout)
        self.target_modules = module_list("target_modules", self.target_modules)
        check_bool("use_rslora", self.use_rslora)


def inject_lora(model: nn.Module, config: LoraConfig, layer: type[LoraLinear] = LoraLinear) -> list[str]:
    """Wrap every target linear layer in ``layer`` (``LoraLinear`` or a subclass such as DoRA's)."""
    names = find_linear_targets(model, config.target_modules)
    for name in names:
        base = model.get_submodule(name)
        replace_module(model, name, layer(base, config.r, config.lora_alpha, config.lora_dropout, config.use_rslora))
    return names


def lora_trainable(config: LoraConfig, model_config: T5Config) -> int:
    """``r * (in + out)`` per target layer."""
    return sum(n * config.r * (i + o) for n, i, o in linear_targets(model_config, config.target_modules))


class Lora(Method):
    name = "lora"
    peft_type = "LORA"
    config_class = LoraConfig
    default_lr = 1e-3
    peft_compatible = True
    neutral_file_fields = PEFT_LORA_NEUTRAL_FIELDS
    identity_at_init = True

    def inject(self, model) -> None:
        inject_lora(model, self.config)

    def closed_form_trainable(self, config: T5Config) -> int:
        return lora_trainable(self.config, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and restore plain ``nn.Linear`` layers (a plain T5)."""
    return merge_wrapped_linears(model, LoraLinear)
