"""LoRA: ``y = W x + s * B A dropout(x)`` on chosen linear layers, ``s = alpha / r`` (or alpha / sqrt(r)).

The base weight stays under its original key (``...q.weight``); the adapter adds ``...q.lora_A.weight``
``[r, in]`` and ``...q.lora_B.weight`` ``[out, r]``, which are also Hugging Face PEFT's keys once prefixed
with ``base_model.model.``. ``A`` starts Kaiming-uniform and ``B`` at zero, so an untrained adapter leaves
the model unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method, MethodConfig, find_linear_targets, merge_wrapped_linears, replace_module, require
from .registry import register

# Fields of PEFT's LoraConfig that t5peft reads but does not implement, with the values it accepts.
PEFT_LORA_NEUTRAL_FIELDS = {
    "bias": ("none",),
    "fan_in_fan_out": (False,),
    "use_dora": (False,),
    "lora_bias": (False,),
    "use_qalora": (False,),
    "init_lora_weights": (True,),
    "modules_to_save": (None, []),
    "layers_to_transform": (None,),
    "layers_pattern": (None,),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "exclude_modules": (None,),
    "layer_replication": (None,),
    "trainable_token_indices": (None,),
    "target_parameters": (None,),
    "alora_invocation_tokens": (None,),
    "ensure_weight_tying": (False,),
    "use_bdlora": (None, False),
    # settings of initialisers / integrations that do not change a saved adapter's function
    "loftq_config": ({}, None),
    "eva_config": (None,),
    "corda_config": (None,),
    "megatron_config": (None,),
    "megatron_core": ("megatron.core", None),
    "qalora_group_size": tuple(range(1, 4097)),
    "arrow_config": (None,),
    "lora_ga_config": (None,),
    "kasa_config": (None,),
    "monteclora_config": (None,),
    "velora_config": (None,),
}


class LoraLinear(nn.Module):
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

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

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
        require(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}")
        require(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        require(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        require(bool(self.target_modules), "target_modules must name at least one linear layer")
        self.target_modules = sorted(set(self.target_modules))


def inject_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    names = find_linear_targets(model, config.target_modules)
    for name in names:
        base = model.get_submodule(name)
        replace_module(
            model, name, LoraLinear(base, config.r, config.lora_alpha, config.lora_dropout, config.use_rslora)
        )
    return names


@register
class Lora(Method):
    name = "lora"
    peft_type = "LORA"
    config_class = LoraConfig
    default_lr = 1e-3
    peft_compatible = True
    ignored_file_fields = PEFT_LORA_NEUTRAL_FIELDS

    def inject(self, model) -> None:
        inject_lora(model, self.config)

    def file_config(self) -> dict:
        values = self.config.to_dict()
        values.update(bias="none", fan_in_fan_out=False, use_dora=False, init_lora_weights=True)
        values.update(modules_to_save=None, layers_to_transform=None, layers_pattern=None)
        values.update(rank_pattern={}, alpha_pattern={})
        return values


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and restore plain ``nn.Linear`` layers (a plain T5)."""
    return merge_wrapped_linears(model, LoraLinear)
