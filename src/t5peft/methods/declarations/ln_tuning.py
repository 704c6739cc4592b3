"""LayerNorm tuning (implementation: :mod:`t5peft.methods.ln_tuning`): PEFT's ``LNTuningConfig`` names and
``LN_TUNING`` files."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..declaration import AdapterFormat, MethodConfig, MethodDeclaration, Neutral, module_list

PEFT_LN_TUNING_NEUTRAL_FIELDS = {
    "modules_to_save": Neutral((None, []), written=True),
    "exclude_modules": Neutral((None, []), written=True),
}


@dataclass
class LnTuningConfig(MethodConfig):
    target_modules: list[str] = field(default_factory=lambda: ["final_layer_norm", "layer_norm"])

    def validate(self) -> None:
        self.target_modules = module_list("target_modules", self.target_modules)


DECLARATION = MethodDeclaration(
    name="ln_tuning",
    # BitFit (Ben Zaken et al., 2022), the bias-only analogue, used 1e-4 to 1e-3; the upper end for a small model
    default_lr=1e-3,
    config_class=LnTuningConfig,
    file_format=AdapterFormat(
        peft_type="LN_TUNING", peft_compatible=True, neutral_fields=PEFT_LN_TUNING_NEUTRAL_FIELDS
    ),
    implementation="ln_tuning.LnTuning",
)
