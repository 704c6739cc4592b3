"""LoRA + prompt tuning together: LoRA on chosen linear layers and a soft prompt on the encoder input.

The LoRA layers are :class:`~t5peft.methods.lora.LoraLinear` and the prompt is
:class:`~t5peft.methods.prompt.SoftPrompt`, inserted exactly as the ``lora`` and ``prompt`` methods insert
them. The options are the union of both methods' options (same names and defaults: ``r=8``,
``lora_alpha=16``, ``target_modules=["q", "v"]``, ``num_virtual_tokens=20``,
``prompt_tuning_init="SAMPLE_VOCAB"``, ...) plus ``prompt_lr``.

Optimizer: two parameter groups, the LoRA matrices at the main learning rate (default 1e-3) and weight
decay as given, the prompt at ``prompt_lr`` (default 0.3) with weight decay 0.

An untrained hybrid changes the logits exactly as its prompt alone does (LoRA starts with ``B = 0``).

Trainable parameters: LoRA's ``sum over targets of r * (in + out)`` plus the prompt's
``num_virtual_tokens * num_transformer_submodules * d_model``; t5-small with the defaults:
294,912 + 10,240 = 305,152.

File: ``peft_type`` ``T5PEFT_LORA_PROMPT`` (no Hugging Face PEFT equivalent; PEFT refuses it), one
``adapter_model.safetensors`` holding both sets: the LoRA tensors under PEFT's LoRA keys
(``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``) and the prompt as ``prompt_embeddings``
(PEFT's prompt-tuning key), so either set can be cut out into a PEFT ``LORA`` or ``PROMPT_TUNING`` folder.
Options and file format: :mod:`.declarations.hybrid`. Its prompt cannot be merged, so neither can the hybrid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method
from .declarations.hybrid import DECLARATION
from .declarations.prompt import PROMPT_MODEL_KEY
from .lora import inject_lora, lora_trainable
from .prompt import PROMPT_CANNOT_MERGE, inject_prompt, prompt_trainable

if TYPE_CHECKING:
    from ..model.config import T5Config


class LoraPrompt(Method):
    """LoRA's layers and the prompt method's soft prompt, with an optimizer group each."""

    declaration = DECLARATION
    identity_at_init = False  # its prompt is never neutral
    cannot_merge = f"{PROMPT_CANNOT_MERGE} (merging the LoRA part alone would not give a plain T5)"

    def inject(self, model) -> None:
        inject_lora(model, self.config)
        inject_prompt(model, self.config, initialise=not self.from_file)

    def closed_form_trainable(self, config: T5Config) -> int:
        return lora_trainable(self.config, config) + prompt_trainable(self.config, config)

    def param_groups(self, model, lr: float, weight_decay: float) -> list[dict]:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        lora = [p for n, p in trainable if n != PROMPT_MODEL_KEY]
        prompt = [p for n, p in trainable if n == PROMPT_MODEL_KEY]
        return [
            {"params": lora, "lr": lr, "weight_decay": weight_decay},
            {"params": prompt, "lr": self.config.prompt_lr, "weight_decay": 0.0},
        ]
