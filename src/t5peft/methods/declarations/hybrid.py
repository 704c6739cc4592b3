"""LoRA + prompt tuning (implementation: :mod:`t5peft.methods.hybrid`): the union of both methods' options plus
``prompt_lr``; one adapter folder (``T5PEFT_LORA_PROMPT``, no PEFT equivalent) with LoRA's keys and the prompt's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..declaration import MethodDeclaration, check_positive
from .lora import LoraConfig
from .prompt import PROMPT_FILE_FORMAT, PromptTuningConfig


@dataclass
class LoraPromptConfig(LoraConfig, PromptTuningConfig):
    prompt_lr: float = 0.3

    def validate(self) -> None:
        LoraConfig.validate(self)
        PromptTuningConfig.validate(self)
        check_positive("prompt_lr", self.prompt_lr)


DECLARATION = MethodDeclaration(
    name="lora+prompt",
    default_lr=1e-3,
    config_class=LoraPromptConfig,
    # the prompt's format (its table under PEFT's key, its neutral fields), with a type of our own: PEFT refuses it
    file_format=dataclasses.replace(PROMPT_FILE_FORMAT, peft_type="T5PEFT_LORA_PROMPT", peft_compatible=False),
    implementation="hybrid.LoraPrompt",
)
