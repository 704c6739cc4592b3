"""The registered methods: one list, in the order ``t5peft methods`` shows them."""

from __future__ import annotations

from .adalora import AdaLora
from .adapter import BottleneckAdapters
from .base import Method, MethodConfigError
from .full import FullFineTuning
from .hybrid import LoraPrompt
from .ia3 import IA3
from .lora import Lora
from .prompt import PromptTuning
from .ptuning2 import DeepPrompt

METHODS: tuple[type[Method], ...] = (
    FullFineTuning,
    Lora,
    AdaLora,
    BottleneckAdapters,
    PromptTuning,
    DeepPrompt,
    LoraPrompt,
    IA3,
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


def method_for_peft_type(peft_type: str, source: str) -> type[Method]:
    """The method that reads adapter files of ``peft_type`` (the first registered one that declares it)."""
    for cls in METHODS:
        if cls.peft_type == peft_type:
            return cls
    known = sorted({c.peft_type for c in METHODS})
    raise MethodConfigError(f"{source}: peft_type {peft_type!r} is not supported (supported: {', '.join(known)})")
