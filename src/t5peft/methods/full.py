"""Full fine-tuning: every weight of the model is trained (the baseline of the comparison)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method, MethodConfig
from .registry import register


@dataclass
class FullConfig(MethodConfig):
    pass


@register
class FullFineTuning(Method):
    name = "full"
    peft_type = "T5PEFT_FULL"
    config_class = FullConfig
    default_lr = 3e-4
    saves_adapter = False

    def inject(self, model) -> None:
        pass

    def trainable_names(self, model, added):
        return [name for name, _ in model.named_parameters()]
