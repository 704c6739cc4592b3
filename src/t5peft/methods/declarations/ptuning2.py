"""Deep prompts / P-Tuning v2 (implementation: :mod:`t5peft.methods.ptuning2`); no PEFT equivalent
(``T5PEFT_DEEP_PROMPT``). Files hold the final prefixes, so a loaded adapter is always the direct form."""

from __future__ import annotations

from dataclasses import dataclass

from ..declaration import (
    AdapterFormat,
    MethodConfig,
    MethodDeclaration,
    check_bool,
    check_int,
    check_non_negative,
    check_optional_int,
    require,
)

# option name -> (stack, extension-point attribute)
SITES: dict[str, tuple[str, str]] = {
    "encoder_self": ("encoder", "self_prefix"),
    "decoder_self": ("decoder", "self_prefix"),
    "decoder_cross": ("decoder", "cross_prefix"),
}


@dataclass
class DeepPromptConfig(MethodConfig):
    num_virtual_tokens: int = 20
    encoder_self: bool = True
    decoder_self: bool = True
    decoder_cross: bool = True
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None  # None = d_model
    init_std: float = 0.02  # direct prefixes only

    def validate(self) -> None:
        check_int("num_virtual_tokens", self.num_virtual_tokens)
        for name in (*SITES, "prefix_projection"):
            check_bool(name, getattr(self, name))
        require(any(getattr(self, s) for s in SITES), f"enable at least one of {', '.join(SITES)}")
        check_optional_int("encoder_hidden_size", self.encoder_hidden_size)
        check_non_negative("init_std", self.init_std)

    def sites(self) -> list[str]:
        return [s for s in SITES if getattr(self, s)]


DECLARATION = MethodDeclaration(
    name="ptuning2",
    default_lr=1e-2,
    config_class=DeepPromptConfig,
    # files hold folded prefixes, which only the direct parameterisation can take
    file_format=AdapterFormat(peft_type="T5PEFT_DEEP_PROMPT", loaded_options={"prefix_projection": False}),
    implementation="ptuning2.DeepPrompt",
)
