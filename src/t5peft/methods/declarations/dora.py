"""DoRA (implementation: :mod:`t5peft.methods.dora`): LoRA's options; PEFT's ``LORA`` files with ``use_dora: true``.

A LORA folder with ``use_dora: true`` is read as DoRA (the format's ``claims``), never as plain LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..declaration import AdapterFormat, MethodDeclaration, Neutral
from .lora import PEFT_LORA_NEUTRAL_FIELDS, LoraConfig

PEFT_DORA_NEUTRAL_FIELDS = {**PEFT_LORA_NEUTRAL_FIELDS, "use_dora": Neutral((True,), written=True)}


@dataclass
class DoraConfig(LoraConfig):
    """LoRA's options (PEFT's ``LoraConfig`` names); ``use_dora`` is implied by the method."""


DECLARATION = MethodDeclaration(
    name="dora",
    default_lr=1e-3,  # DoRA reuses LoRA's hyperparameters (Liu et al. 2024); LoRA on t5-small: 1e-3
    config_class=DoraConfig,
    file_format=AdapterFormat(
        peft_type="LORA",
        peft_compatible=True,
        neutral_fields=PEFT_DORA_NEUTRAL_FIELDS,
        claims={"use_dora": True},  # a LORA file with use_dora: true is DoRA's
    ),
    implementation="dora.Dora",
)
