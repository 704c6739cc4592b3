"""LoRA (implementation: :mod:`t5peft.methods.lora`): options with PEFT's ``LoraConfig`` names, PEFT's ``LORA``
files."""

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

# Fields of PEFT's LoraConfig that t5peft reads but does not implement: the values it accepts, and those it writes.
PEFT_LORA_NEUTRAL_FIELDS = {
    "bias": Neutral(("none",), written=True),
    "fan_in_fan_out": Neutral((False,), written=True),
    "use_dora": Neutral((False,), written=True),
    "init_lora_weights": Neutral((True,), written=True),
    "modules_to_save": Neutral((None, []), written=True),
    "layers_to_transform": Neutral((None,), written=True),
    "layers_pattern": Neutral((None,), written=True),
    "rank_pattern": Neutral(({}, None), written=True),
    "alpha_pattern": Neutral(({}, None), written=True),
    "lora_bias": Neutral((False,)),
    "use_qalora": Neutral((False,)),
    "exclude_modules": Neutral((None,)),
    "layer_replication": Neutral((None,)),
    "trainable_token_indices": Neutral((None,)),
    "target_parameters": Neutral((None,)),
    "alora_invocation_tokens": Neutral((None,)),
    "ensure_weight_tying": Neutral((False,)),
    "use_bdlora": Neutral((None, False)),
    # settings of initialisers / integrations that do not change a saved adapter's function
    "loftq_config": Neutral(({}, None)),
    "eva_config": Neutral((None,)),
    "corda_config": Neutral((None,)),
    "megatron_config": Neutral((None,)),
    "megatron_core": Neutral(("megatron.core", None)),
    "qalora_group_size": Neutral((16,), accept_int=True),
    "arrow_config": Neutral((None,)),
    "lora_ga_config": Neutral((None,)),
    "kasa_config": Neutral((None,)),
    "monteclora_config": Neutral((None,)),
    "velora_config": Neutral((None,)),
}


@dataclass
class LoraConfig(MethodConfig):
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    # leaf names of linear layers; on gated T5s (v1.1, flan-t5) "wi" stands for wi_0 and wi_1
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])
    use_rslora: bool = False

    def validate(self) -> None:
        check_int("r", self.r)
        check_positive("lora_alpha", self.lora_alpha)
        check_fraction("lora_dropout", self.lora_dropout)
        self.target_modules = module_list("target_modules", self.target_modules)
        check_bool("use_rslora", self.use_rslora)


DECLARATION = MethodDeclaration(
    name="lora",
    default_lr=1e-3,
    config_class=LoraConfig,
    file_format=AdapterFormat(peft_type="LORA", peft_compatible=True, neutral_fields=PEFT_LORA_NEUTRAL_FIELDS),
    implementation="lora.Lora",
)
