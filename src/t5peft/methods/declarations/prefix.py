"""PEFT's prefix tuning (implementation: :mod:`t5peft.methods.prefix`): options with PEFT's ``PrefixTuningConfig``
names, PEFT's ``PREFIX_TUNING`` files (one table ``prompt_embeddings``, the projection evaluated)."""

from __future__ import annotations

from dataclasses import dataclass

from ..declaration import (
    AdapterFormat,
    MethodConfig,
    MethodDeclaration,
    Neutral,
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    require,
)
from .prompt import MODEL_FIELDS

PREFIX_FILE_KEY = "prompt_embeddings"
PREFIX_MODEL_KEY = "decoder.self_prefix.prompt_embeddings"
PREFIX_TABLE_FILE_KEYS = {PREFIX_MODEL_KEY: PREFIX_FILE_KEY}
PEFT_PREFIX_NEUTRAL_FIELDS = {"modules_to_save": Neutral((None, []), written=True)}


@dataclass
class PrefixTuningConfig(MethodConfig):
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None  # None = token_dim
    init_weights: str | None = None  # None: standard normal; "zero"
    # PEFT's value for sequence-to-sequence models, the only one T5 works with; decides which pair each layer reads
    num_transformer_submodules: int = 2
    # model dimensions, as PEFT records them; None = taken from the model when the method is applied
    token_dim: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None

    def validate(self) -> None:
        check_int("num_virtual_tokens", self.num_virtual_tokens)
        check_bool("prefix_projection", self.prefix_projection)
        check_optional_int("encoder_hidden_size", self.encoder_hidden_size)
        check_choice("init_weights", self.init_weights, (None, "zero"))
        require(
            self.num_transformer_submodules == 2,
            "num_transformer_submodules must be 2 for T5 (with 1, transformers' T5 fails on PEFT's prefix cache), "
            f"got {self.num_transformer_submodules!r}",
        )
        for name in MODEL_FIELDS:
            check_optional_int(name, getattr(self, name))


DECLARATION = MethodDeclaration(
    name="prefix",
    # direct prefixes (no reparameterisation): 1e-2 as PEFT's T5 prefix-tuning example and P-Tuning v2 (5e-3..1e-2)
    default_lr=1e-2,
    config_class=PrefixTuningConfig,
    file_format=AdapterFormat(
        peft_type="PREFIX_TUNING",
        peft_compatible=True,
        neutral_fields=PEFT_PREFIX_NEUTRAL_FIELDS,
        special_keys=PREFIX_TABLE_FILE_KEYS,
        loaded_options={"prefix_projection": False},  # the file holds the evaluated table: the direct form
    ),
    implementation="prefix.PrefixTuning",
)
