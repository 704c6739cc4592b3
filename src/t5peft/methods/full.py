"""Full fine-tuning: every weight of the model is trained (the baseline of the comparison).

It adds nothing and trains base weights, so what it saves is the whole model (``methods.files.save_trained``
decides that from what an applied method added and trains, not from its name)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method, MethodConfig


@dataclass
class FullConfig(MethodConfig):
    pass


class FullFineTuning(Method):
    name = "full"
    peft_type = "T5PEFT_FULL"
    config_class = FullConfig
    default_lr = 3e-4

    def inject(self, model) -> None:
        pass

    def trainable_names(self, model, added):
        return [name for name, _ in model.named_parameters()]
