"""VeRA (implementation: :mod:`t5peft.methods.vera`): options with PEFT's ``VeraConfig`` names, PEFT's ``VERA`` files
(the shared projections, when saved, under ``base_model.vera_A`` / ``base_model.vera_B``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..declaration import (
    AdapterFormat,
    MethodConfig,
    MethodDeclaration,
    Neutral,
    check_bool,
    check_fraction,
    check_int,
    check_positive,
    module_list,
)

# the shared projections: model key (what the method's export_state returns) -> file key (PEFT's)
PROJECTION_FILE_KEYS = {"vera_A": "base_model.vera_A", "vera_B": "base_model.vera_B"}

PEFT_VERA_NEUTRAL_FIELDS = {
    "bias": Neutral(("none",), written=True),
    "fan_in_fan_out": Neutral((False,), written=True),
    "modules_to_save": Neutral((None, []), written=True),
    "layers_to_transform": Neutral((None,), written=True),
    "layers_pattern": Neutral((None,), written=True),
}


@dataclass
class VeraConfig(MethodConfig):
    r: int = 256
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1
    init_weights: bool = True

    def validate(self) -> None:
        check_int("r", self.r)
        self.target_modules = module_list("target_modules", self.target_modules)
        check_int("projection_prng_key", self.projection_prng_key, 0)
        check_bool("save_projection", self.save_projection)
        check_fraction("vera_dropout", self.vera_dropout)
        check_positive("d_initial", self.d_initial)
        check_bool("init_weights", self.init_weights)


DECLARATION = MethodDeclaration(
    name="vera",
    # Kopiczko et al. (2024) trained the scaling vectors at 4e-3 to 1e-2 on GLUE (RoBERTa); the lower end
    default_lr=4e-3,
    config_class=VeraConfig,
    file_format=AdapterFormat(
        peft_type="VERA",
        peft_compatible=True,
        neutral_fields=PEFT_VERA_NEUTRAL_FIELDS,
        special_keys=PROJECTION_FILE_KEYS,
    ),
    implementation="vera.Vera",
)
