"""(IA)^3 (implementation: :mod:`t5peft.methods.ia3`): options with PEFT's ``IA3Config`` names, PEFT's ``IA3`` files."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..declaration import AdapterFormat, MethodConfig, MethodDeclaration, Neutral, check_bool, module_list, require

DEFAULT_TARGETS = ["k", "v", "wo"]
DEFAULT_FEEDFORWARD = ["wo"]

# Fields of PEFT's IA3Config that t5peft reads but does not implement, with the values it accepts.
PEFT_IA3_NEUTRAL_FIELDS = {
    "fan_in_fan_out": Neutral((False,), written=True),
    "modules_to_save": Neutral((None, []), written=True),
    "exclude_modules": Neutral((None, []), written=True),
}


@dataclass
class IA3Config(MethodConfig):
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    # None (the default) means PEFT's choice for T5: wo, if it is a target
    feedforward_modules: list[str] | None = None
    init_ia3_weights: bool = True

    def validate(self) -> None:
        self.target_modules = module_list("target_modules", self.target_modules)
        if self.feedforward_modules is None:
            self.feedforward_modules = [f for f in DEFAULT_FEEDFORWARD if f in self.target_modules]
        elif self.feedforward_modules != []:
            self.feedforward_modules = module_list("feedforward_modules", self.feedforward_modules)
        extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
        require(not extra, f"feedforward_modules must be a subset of target_modules; not targets: {extra}")
        check_bool("init_ia3_weights", self.init_ia3_weights)


DECLARATION = MethodDeclaration(
    name="ia3",
    default_lr=3e-3,
    config_class=IA3Config,
    file_format=AdapterFormat(peft_type="IA3", peft_compatible=True, neutral_fields=PEFT_IA3_NEUTRAL_FIELDS),
    implementation="ia3.IA3",
)
