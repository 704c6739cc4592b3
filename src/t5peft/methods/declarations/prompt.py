"""Prompt tuning (implementation: :mod:`t5peft.methods.prompt`): options with PEFT's ``PromptTuningConfig`` names,
PEFT's ``PROMPT_TUNING`` files (one table ``prompt_embeddings``, with no ``base_model.model.`` prefix)."""

from __future__ import annotations

from dataclasses import dataclass

from ..declaration import (
    AdapterFormat,
    MethodConfig,
    MethodDeclaration,
    Neutral,
    check_choice,
    check_int,
    check_optional_int,
    require,
)

PROMPT_FILE_KEY = "prompt_embeddings"
PROMPT_MODEL_KEY = "encoder.input_prefix.prompt_embeddings"
PROMPT_TABLE_FILE_KEYS = {PROMPT_MODEL_KEY: PROMPT_FILE_KEY}  # the file holds the table under PEFT's name
PROMPT_TUNING_INITS = ("SAMPLE_VOCAB", "TEXT", "RANDOM")
MODEL_FIELDS = ("token_dim", "num_attention_heads", "num_layers")  # the model's dimensions, as PEFT records them

# Fields of PEFT's PromptTuningConfig that t5peft reads but does not use, with the values it accepts.
PEFT_PROMPT_NEUTRAL_FIELDS = {
    "modules_to_save": Neutral((None, []), written=True),
    "tokenizer_kwargs": Neutral((None, {}), written=True),
}


@dataclass
class PromptTuningConfig(MethodConfig):
    num_virtual_tokens: int = 20
    prompt_tuning_init: str = "SAMPLE_VOCAB"
    prompt_tuning_init_text: str | None = None
    prompt_tuning_init_ids: list[int] | None = None
    tokenizer_name_or_path: str | None = None
    num_transformer_submodules: int = 1
    # model dimensions, as PEFT records them; None = taken from the model when the method is applied
    token_dim: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None

    def validate(self) -> None:
        check_int("num_virtual_tokens", self.num_virtual_tokens)
        self.prompt_tuning_init = str(self.prompt_tuning_init).upper()
        check_choice("prompt_tuning_init", self.prompt_tuning_init, PROMPT_TUNING_INITS)
        check_int("num_transformer_submodules", self.num_transformer_submodules, 1, 2)
        for name in MODEL_FIELDS:
            check_optional_int(name, getattr(self, name))
        if self.prompt_tuning_init_ids is not None:
            ids = self.prompt_tuning_init_ids
            require(
                isinstance(ids, list) and bool(ids) and all(isinstance(i, int) and i >= 0 for i in ids),
                f"prompt_tuning_init_ids must be a non-empty list of token ids, got {ids!r}",
            )

    def validate_initialisation(self) -> None:
        """The initialisation's inputs (a loaded prompt is not initialised, so its file needs no tokenizer)."""
        text_given = self.prompt_tuning_init_text is not None or self.prompt_tuning_init_ids is not None
        if self.prompt_tuning_init == "TEXT":
            require(
                self.prompt_tuning_init_ids is not None
                or (bool(self.prompt_tuning_init_text) and bool(self.tokenizer_name_or_path)),
                "prompt_tuning_init='TEXT' needs prompt_tuning_init_ids, or prompt_tuning_init_text together "
                "with tokenizer_name_or_path",
            )
        else:
            require(
                not text_given,
                "prompt_tuning_init_text / prompt_tuning_init_ids are only used with prompt_tuning_init='TEXT'",
            )

    @property
    def total_virtual_tokens(self) -> int:
        return self.num_virtual_tokens * self.num_transformer_submodules


PROMPT_FILE_FORMAT = AdapterFormat(
    peft_type="PROMPT_TUNING",
    peft_compatible=True,
    neutral_fields=PEFT_PROMPT_NEUTRAL_FIELDS,
    special_keys=PROMPT_TABLE_FILE_KEYS,
    written_when_set=("prompt_tuning_init_ids",),  # not a PEFT field: written only when used
)

DECLARATION = MethodDeclaration(
    name="prompt",
    default_lr=0.3,
    config_class=PromptTuningConfig,
    file_format=PROMPT_FILE_FORMAT,
    implementation="prompt.PromptTuning",
)
