"""The method test cases: one table, ``CONTRACTS``, of every registered method's option sets (each a case, named by
its id), its t5-small counts and, for a PEFT format, the PEFT config equal to a case; and ``applied``, a case's
method applied to a base. The contract suite (``test_method_contract.py``) runs every check on every case; the
method-specific tests take their cases from here too, by id (``CASES``).

A new method is covered by one entry in ``CONTRACTS`` (``test_every_registered_method_has_a_contract`` fails until
it has one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t5peft import T5ForConditionalGeneration, apply_method, load_pretrained

T5_SMALL_PARAMETERS = 60_506_624
SEQ2SEQ = "SEQ_2_SEQ_LM"

PeftConfigBuilder = Callable[[Any, dict[str, Any]], Any]  # (the peft module, a case's options) -> a PEFT config


@dataclass(frozen=True)
class Contract:
    """One method's entry: its cases, its t5-small counts, and (with a PEFT format) how PEFT spells a case."""

    # case id -> options on the tiny T5 (each case runs every check)
    cases: dict[str, dict[str, Any]]
    # (options, trainable parameters on t5-small): the numbers stated in the method's docstring; defaults first
    t5_small: tuple[tuple[dict[str, Any], int], ...]
    # the PEFT config equal to a case's options; given exactly when the method's file format is ``peft_compatible``
    peft_config: PeftConfigBuilder | None = None
    # overrides of helpers.TINY_T5 for the tiny T5 this method's cases run on (its counts too), where the method
    # cannot run on the default one
    base: dict[str, Any] = field(default_factory=dict)
    # True for a case whose file holds an evaluated reparameterisation (P-tuning's encoder output, a projected
    # prefix): loaded, it trains that table, not PEFT's training-time parameters
    folds_on_save: Callable[[dict[str, Any]], bool] = lambda options: False


def _peft_as_is(config_name: str, **defaults: Any) -> PeftConfigBuilder:
    """A builder passing a case's options to PEFT's ``config_name`` unchanged (over ``defaults``, where t5peft's
    defaults differ from PEFT's)."""
    return lambda peft, options: getattr(peft, config_name)(task_type=SEQ2SEQ, **{**defaults, **options})


CONTRACTS: dict[str, Contract] = {
    "full": Contract(cases={"full": {}}, t5_small=(({}, T5_SMALL_PARAMETERS),)),
    "lora": Contract(
        cases={"lora": dict(r=4, lora_alpha=8, target_modules=["q", "v", "wo"])},
        t5_small=(({}, 294_912),),
        peft_config=_peft_as_is("LoraConfig"),
    ),
    "adalora": Contract(
        # a schedule that prunes from the third step on; PEFT needs total_step
        cases={
            "adalora": dict(
                init_r=4, target_r=2, tinit=1, total_step=50, target_modules=["k", "o", "q", "v", "wi", "wo"]
            )
        },
        t5_small=(({}, 1_623_168),),
        peft_config=_peft_as_is("AdaLoraConfig"),
    ),
    "adapter": Contract(
        cases={
            "adapter-pfeiffer": {},
            "adapter-houlsby": dict(placement="houlsby", non_linearity="gelu", reduction_factor=8),
        },
        t5_small=(({}, 399_744), (dict(placement="houlsby"), 999_360)),
    ),
    "prompt": Contract(
        cases={
            "prompt": dict(num_virtual_tokens=5),
            "prompt-2-submodules": dict(num_virtual_tokens=4, num_transformer_submodules=2),
        },
        t5_small=(({}, 10_240), (dict(num_virtual_tokens=100, num_transformer_submodules=2), 102_400)),
        peft_config=_peft_as_is("PromptTuningConfig", num_transformer_submodules=1),  # PEFT's seq2seq default is 2
    ),
    "ptuning2": Contract(
        cases={
            "ptuning2": dict(num_virtual_tokens=3),
            "ptuning2-projected": dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=24),
            "ptuning2-encoder-only": dict(num_virtual_tokens=2, decoder_self=False, decoder_cross=False),
        },
        t5_small=(
            ({}, 368_640),
            (dict(num_virtual_tokens=16, decoder_cross=False), 196_608),
            (dict(prefix_projection=True), 10_274_304),
            (dict(prefix_projection=True, encoder_hidden_size=64, encoder_self=False), 884_864),
        ),
    ),
    "lora+prompt": Contract(cases={"lora+prompt": dict(num_virtual_tokens=3, r=4)}, t5_small=(({}, 305_152),)),
    "ia3": Contract(
        cases={
            "ia3": {},
            "ia3-custom": dict(target_modules=["q", "o", "wi", "wo"], feedforward_modules=["wi", "wo"]),
            # PEFT tests feedforward names as suffixes of the module path: "o" also makes every wo feedforward
            "ia3-suffix": dict(target_modules=["o", "wo"], feedforward_modules=["o"]),
        },
        t5_small=(({}, 43_008),),
        peft_config=_peft_as_is("IA3Config"),
    ),
    "dora": Contract(
        cases={"dora": dict(r=4, lora_alpha=8, target_modules=["q", "v", "wo"])},
        t5_small=(({}, 313_344),),
        peft_config=_peft_as_is("LoraConfig", use_dora=True),
    ),
    "vera": Contract(
        cases={
            "vera": dict(r=8, target_modules=["q", "v", "wo"]),  # projections sliced for q/v and for wo
            "vera-no-projection": dict(
                r=6, target_modules=["k", "wi"], save_projection=False, projection_prng_key=7
            ),  # the file without them: drawn again from the key, as PEFT draws them
        },
        t5_small=(({}, 27_648),),
        peft_config=_peft_as_is("VeraConfig"),
    ),
    "ptuning": Contract(
        cases={
            "ptuning": dict(num_virtual_tokens=5, encoder_hidden_size=24),
            "ptuning-lstm": dict(
                num_virtual_tokens=3,
                encoder_reparameterization_type="LSTM",
                encoder_hidden_size=12,
                num_transformer_submodules=2,  # the LSTM runs over the unused second half too
            ),
        },
        t5_small=(({}, 798_208), (dict(encoder_reparameterization_type="LSTM", encoder_hidden_size=128), 1_260_288)),
        peft_config=_peft_as_is("PromptEncoderConfig", num_transformer_submodules=1),  # PEFT's seq2seq default is 2
        folds_on_save=lambda options: True,
    ),
    "prefix": Contract(
        cases={
            "prefix": dict(num_virtual_tokens=4),
            "prefix-projected": dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=24),
        },
        t5_small=(({}, 122_880), (dict(prefix_projection=True), 3_424_768)),
        peft_config=_peft_as_is("PrefixTuningConfig"),
        # PEFT's layout: no deeper decoder than encoder, num_heads * d_kv = d_model (d_kv for the gated count too)
        base=dict(num_layers=3, d_kv=16),
        folds_on_save=lambda options: bool(options.get("prefix_projection")),
    ),
    "ln_tuning": Contract(
        cases={"ln_tuning": {}, "ln_tuning-final": dict(target_modules=["final_layer_norm"])},
        t5_small=(({}, 16_384), (dict(target_modules=["final_layer_norm"]), 1_024)),
        peft_config=_peft_as_is("LNTuningConfig"),
    ),
}


# case id -> (method, options): every case of the table, flat
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    case: (method, options) for method, contract in CONTRACTS.items() for case, options in contract.cases.items()
}
if len(CASES) != sum(len(contract.cases) for contract in CONTRACTS.values()):
    raise RuntimeError("two cases share an id")


def applied(base_dir: Path, case: str, **extra: Any) -> T5ForConditionalGeneration:
    """Case ``case``'s method with its options (and ``extra`` ones) applied to the checkpoint at ``base_dir``."""
    method, options = CASES[case]
    return apply_method(load_pretrained(base_dir), method, **{**options, **extra})


def peft_config(peft: Any, case: str) -> Any:
    """The PEFT config equal to case ``case`` (its method must have a PEFT format); ``peft`` is the imported module."""
    method, options = CASES[case]
    builder = CONTRACTS[method].peft_config
    if builder is None:
        raise ValueError(f"method {method!r} has no PEFT format")
    return builder(peft, options)
