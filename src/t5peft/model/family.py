"""The published T5 family by name: the architecture part of each checkpoint's ``config.json``, without weights.

``--init random --model t5-large`` and ``t5peft plan-memory --model google/flan-t5-xxl`` read these instead of a
folder (nothing is downloaded). The values are those of the ``config.json`` files on the Hugging Face Hub; the
parameter counts beside them are the published ones (``tests/test_model_family.py`` builds every model on the meta
device and checks its count):

* T5 v1.0 (``t5-*``, Raffel et al. 2020; also ``google-t5/t5-*``): ReLU FFN, embedding tied to the LM head.
  Counts as ``transformers`` reports them for the Hub checkpoints.
* T5 v1.1 (``google/t5-v1_1-*``) and FLAN-T5 (``google/flan-t5-*``, the v1.1 architecture instruction-tuned):
  gated-GELU FFN, untied LM head, different widths. Counts from the T5 v1.1 table of KerasNLP's presets
  (``t5_1.1_base`` 247,577,856, ``t5_1.1_xxl`` 11,135,332,352) and reports of ``flan-t5-base`` = 247,577,856.

No torch here: the command line lists the names without importing it.
"""

from __future__ import annotations

from typing import Any

from .config import ConfigError, T5Config

_V1_0 = dict(feed_forward_proj="relu", tie_word_embeddings=True, vocab_size=32128, dropout_rate=0.1)
_V1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=32128, dropout_rate=0.1)


def _arch(base: dict[str, Any], d_model: int, d_ff: int, d_kv: int, num_heads: int, num_layers: int) -> dict[str, Any]:
    return {
        **base,
        "d_model": d_model,
        "d_ff": d_ff,
        "d_kv": d_kv,
        "num_heads": num_heads,
        "num_layers": num_layers,
        "num_decoder_layers": num_layers,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "model_type": "t5",
    }


_V1_0_SIZES = {
    "small": (512, 2048, 64, 8, 6),
    "base": (768, 3072, 64, 12, 12),
    "large": (1024, 4096, 64, 16, 24),
    "3b": (1024, 16384, 128, 32, 24),
    "11b": (1024, 65536, 128, 128, 24),
}
_V1_1_SIZES = {
    "small": (512, 1024, 64, 6, 8),
    "base": (768, 2048, 64, 12, 12),
    "large": (1024, 2816, 64, 16, 24),
    "xl": (2048, 5120, 64, 32, 24),
    "xxl": (4096, 10240, 64, 64, 24),
}

# name -> config.json values (architecture only)
FAMILY: dict[str, dict[str, Any]] = {
    **{f"t5-{size}": _arch(_V1_0, *dims) for size, dims in _V1_0_SIZES.items()},
    **{f"google/t5-v1_1-{size}": _arch(_V1_1, *dims) for size, dims in _V1_1_SIZES.items()},
    **{f"google/flan-t5-{size}": _arch(_V1_1, *dims) for size, dims in _V1_1_SIZES.items()},
}

# name -> the published parameter count (the tied embedding counted once)
PUBLISHED_PARAMETERS: dict[str, int] = {
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "t5-3b": 2_851_598_336,
    "t5-11b": 11_307_321_344,
    **{
        f"{prefix}-{size}": count
        for prefix in ("google/t5-v1_1", "google/flan-t5")
        for size, count in {
            "small": 76_961_152,
            "base": 247_577_856,
            "large": 783_150_080,
            "xl": 2_849_757_184,
            "xxl": 11_135_332_352,
        }.items()
    },
}

_ALIASES = {f"google-t5/t5-{size}": f"t5-{size}" for size in _V1_0_SIZES}


def canonical_name(name: str) -> str | None:
    """The family name ``name`` stands for (``google-t5/t5-base`` is ``t5-base``), or None."""
    name = _ALIASES.get(name, name)
    return name if name in FAMILY else None


def family_config_dict(name: str) -> dict[str, Any]:
    """The ``config.json`` values of a family member; a :class:`ConfigError` naming the known ones otherwise."""
    known = canonical_name(name)
    if known is None:
        raise ConfigError(f"unknown model {name!r}: not a folder, and not one of {', '.join(FAMILY)}")
    return {**FAMILY[known], "_name_or_path": known}


def family_config(name: str) -> T5Config:
    """The :class:`T5Config` of a family member (see :func:`family_config_dict`)."""
    return T5Config.from_dict(family_config_dict(name), source=name)
