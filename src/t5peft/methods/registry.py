"""The registered methods: one list, in the order ``t5peft methods`` shows them."""

from __future__ import annotations

from typing import Any

from .adalora import AdaLora
from .adapter import BottleneckAdapters
from .base import Method, MethodConfigError
from .dora import Dora
from .full import FullFineTuning
from .hybrid import LoraPrompt
from .ia3 import IA3
from .ln_tuning import LnTuning
from .lora import Lora
from .prefix import PrefixTuning
from .prompt import PromptTuning
from .ptuning import PTuning
from .ptuning2 import DeepPrompt
from .vera import Vera

METHODS: tuple[type[Method], ...] = (
    FullFineTuning,
    Lora,
    AdaLora,
    BottleneckAdapters,
    PromptTuning,
    DeepPrompt,
    LoraPrompt,
    IA3,
    Dora,
    Vera,
    PTuning,
    PrefixTuning,
    LnTuning,
)

_BY_NAME: dict[str, type[Method]] = {cls.name: cls for cls in METHODS}
if len(_BY_NAME) != len(METHODS):
    raise RuntimeError("two registered methods share a name")  # a programming error, caught on import


def method_names() -> list[str]:
    return list(_BY_NAME)


def get_method_class(name: str) -> type[Method]:
    if name not in _BY_NAME:
        raise MethodConfigError(f"unknown method {name!r}; known methods: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def method_for_file(values: dict[str, Any], source: str) -> type[Method]:
    """The method that reads an adapter_config.json with these ``values``.

    Candidates are the methods of its ``peft_type`` whose ``file_claims`` all hold in the file; the one claiming
    the most wins (a LORA file with ``use_dora: true`` is DoRA's, any other LORA file LoRA's)."""
    peft_type = values.get("peft_type")
    same_type = [cls for cls in METHODS if cls.peft_type == peft_type]
    if not same_type:
        known = sorted({c.peft_type for c in METHODS})
        raise MethodConfigError(f"{source}: peft_type {peft_type!r} is not supported (supported: {', '.join(known)})")
    claiming = [cls for cls in same_type if all(values.get(k) == v for k, v in cls.file_claims.items())]
    if not claiming:
        raise MethodConfigError(f"{source}: no {peft_type} method accepts this adapter_config.json")
    claiming.sort(key=lambda cls: len(cls.file_claims), reverse=True)
    if len(claiming) > 1 and len(claiming[0].file_claims) == len(claiming[1].file_claims):
        raise RuntimeError(f"methods {claiming[0].name!r} and {claiming[1].name!r} claim the same files")
    return claiming[0]
