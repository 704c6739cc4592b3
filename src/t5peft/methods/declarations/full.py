"""Full fine-tuning (implementation: :mod:`t5peft.methods.full`): no options; what it saves is the whole model."""

from __future__ import annotations

from dataclasses import dataclass

from ..declaration import AdapterFormat, MethodConfig, MethodDeclaration


@dataclass
class FullConfig(MethodConfig):
    pass


DECLARATION = MethodDeclaration(
    name="full",
    default_lr=3e-4,
    config_class=FullConfig,
    # never written: a method that trains base weights saves the whole model
    file_format=AdapterFormat(peft_type="T5PEFT_FULL"),
    implementation="full.FullFineTuning",
)
