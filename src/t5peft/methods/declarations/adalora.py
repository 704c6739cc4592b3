"""AdaLoRA (implementation: :mod:`t5peft.methods.adalora`): options with PEFT's ``AdaLoraConfig`` names, PEFT's
``ADALORA`` files (``rank_pattern`` records the kept triplets of each layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..declaration import (
    AdapterFormat,
    MethodConfig,
    MethodDeclaration,
    Neutral,
    check_fraction,
    check_int,
    check_non_negative,
    check_positive,
    is_int,
    module_list,
    require,
)
from .lora import PEFT_LORA_NEUTRAL_FIELDS

PATTERN_SUFFIX = ".lora_E"
# PEFT's LoraConfig fields that AdaLoRA either ignores or we accept only at their neutral values
PEFT_ADALORA_NEUTRAL_FIELDS = {
    **{k: v for k, v in PEFT_LORA_NEUTRAL_FIELDS.items() if k != "rank_pattern"},  # rank_pattern is an option
    # initialisation only; a loaded adapter's weights come from the file
    "init_lora_weights": Neutral((True, False), written=True),
    "use_rslora": Neutral((False, True)),  # PEFT's AdaLoRA scaling ignores it
}


@dataclass
class AdaLoraConfig(MethodConfig):
    init_r: int = 12
    target_r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["k", "o", "q", "v", "wi", "wo"])
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.1
    total_step: int | None = None
    rank_pattern: dict[str, list[bool]] | None = None

    def validate(self) -> None:
        check_int("init_r", self.init_r)
        check_int("target_r", self.target_r, 1, self.init_r if is_int(self.init_r) else None)
        check_positive("lora_alpha", self.lora_alpha)
        check_fraction("lora_dropout", self.lora_dropout)
        check_int("tinit", self.tinit, 0)
        check_int("tfinal", self.tfinal, 0)
        check_int("deltaT", self.deltaT)
        check_fraction("beta1", self.beta1, open_low=True)
        check_fraction("beta2", self.beta2, open_low=True)
        check_non_negative("orth_reg_weight", self.orth_reg_weight)
        if self.total_step is not None:
            self.check_schedule(self.total_step)
        self.target_modules = module_list("target_modules", self.target_modules)
        if self.rank_pattern is not None:
            self.rank_pattern = _normalise_pattern(self.rank_pattern, self.init_r)

    def check_schedule(self, total_step: int) -> None:
        check_int("total_step", total_step)
        require(
            self.tinit < total_step - self.tfinal,
            f"tinit={self.tinit} and tfinal={self.tfinal} leave no rank-reduction phase in total_step={total_step} "
            "steps (need tinit < total_step - tfinal)",
        )


def _normalise_pattern(pattern: Any, init_r: int) -> dict[str, list[bool]]:
    """Check a rank_pattern; PEFT may key it with the adapter name (``...lora_E.default``), which is dropped."""
    require(isinstance(pattern, dict), f"rank_pattern must be a mapping, got {type(pattern).__name__}")
    result = {}
    for key, value in pattern.items():
        require(isinstance(key, str), f"rank_pattern keys must be strings, got {key!r}")
        name = key.removesuffix(".default")
        require(name.endswith(PATTERN_SUFFIX), f"rank_pattern key {key!r} does not name a lora_E tensor")
        require(
            isinstance(value, list) and len(value) == init_r and all(isinstance(v, bool) for v in value),
            f"rank_pattern[{key!r}] must be a list of {init_r} booleans (init_r)",
        )
        result[name] = value
    return result


DECLARATION = MethodDeclaration(
    name="adalora",
    default_lr=1e-3,
    config_class=AdaLoraConfig,
    file_format=AdapterFormat(
        peft_type="ADALORA",
        peft_compatible=True,
        neutral_fields=PEFT_ADALORA_NEUTRAL_FIELDS,
        ignored_fields=frozenset({"r"}),  # PEFT writes LoraConfig's r too; AdaLoRA's rank is init_r
    ),
    implementation="adalora.AdaLora",
)
