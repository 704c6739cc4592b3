"""P-tuning (implementation: :mod:`t5peft.methods.ptuning`): options with PEFT's ``PromptEncoderConfig`` names, PEFT's
``P_TUNING`` files (one table ``prompt_embeddings``: the encoder's output, never the encoder)."""

from __future__ import annotations

from dataclasses import dataclass

from ..declaration import (
    AdapterFormat,
    MethodConfig,
    MethodDeclaration,
    Neutral,
    check_choice,
    check_fraction,
    check_int,
    check_optional_int,
)
from .prompt import MODEL_FIELDS, PROMPT_TABLE_FILE_KEYS

ENCODER_TYPES = ("MLP", "LSTM")
PEFT_P_TUNING_NEUTRAL_FIELDS = {"modules_to_save": Neutral((None, []), written=True)}


@dataclass
class PTuningConfig(MethodConfig):
    num_virtual_tokens: int = 20
    encoder_reparameterization_type: str = "MLP"
    encoder_hidden_size: int | None = None  # None = d_model
    encoder_num_layers: int = 2  # LSTM only (PEFT ignores it for the MLP)
    encoder_dropout: float = 0.0  # LSTM only, between its layers
    num_transformer_submodules: int = 1
    # model dimensions, as PEFT records them; None = taken from the model when the method is applied
    token_dim: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None

    def validate(self) -> None:
        check_int("num_virtual_tokens", self.num_virtual_tokens)
        self.encoder_reparameterization_type = str(self.encoder_reparameterization_type).upper()
        check_choice("encoder_reparameterization_type", self.encoder_reparameterization_type, ENCODER_TYPES)
        check_optional_int("encoder_hidden_size", self.encoder_hidden_size)
        check_int("encoder_num_layers", self.encoder_num_layers)
        check_fraction("encoder_dropout", self.encoder_dropout)
        check_int("num_transformer_submodules", self.num_transformer_submodules, 1, 2)
        for name in MODEL_FIELDS:
            check_optional_int(name, getattr(self, name))

    @property
    def total_virtual_tokens(self) -> int:
        return self.num_virtual_tokens * self.num_transformer_submodules


DECLARATION = MethodDeclaration(
    name="ptuning",
    default_lr=1e-3,  # PEFT's P-tuning guide trains the prompt encoder at 1e-3
    config_class=PTuningConfig,
    file_format=AdapterFormat(
        peft_type="P_TUNING",
        peft_compatible=True,
        neutral_fields=PEFT_P_TUNING_NEUTRAL_FIELDS,
        special_keys=PROMPT_TABLE_FILE_KEYS,
    ),
    implementation="ptuning.PTuning",
)
