"""t5peft: T5 written from scratch, and a benchmark of parameter-efficient fine-tuning methods.

The names below are imported on first use (PEP 562), so that ``import t5peft`` and the command line's
``--help`` / ``--version`` do not pay for importing torch (about 3 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import T5PeftError

if TYPE_CHECKING:
    from .methods import apply_method, count_parameters, load_adapter, load_trained, save_adapter, save_trained
    from .model import CheckpointError, ConfigError, T5Config, T5ForConditionalGeneration, load_pretrained
    from .tokenizer import T5Tokenizer, load_tokenizer

_LAZY = {
    "apply_method": ".methods",
    "count_parameters": ".methods",
    "load_adapter": ".methods",
    "load_trained": ".methods",
    "save_adapter": ".methods",
    "save_trained": ".methods",
    "CheckpointError": ".model",
    "ConfigError": ".model",
    "T5Config": ".model",
    "T5ForConditionalGeneration": ".model",
    "load_pretrained": ".model",
    "T5Tokenizer": ".tokenizer",
    "load_tokenizer": ".tokenizer",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "T5Config",
    "T5ForConditionalGeneration",
    "T5PeftError",
    "T5Tokenizer",
    "__version__",
    "apply_method",
    "count_parameters",
    "load_adapter",
    "load_pretrained",
    "load_tokenizer",
    "load_trained",
    "save_adapter",
    "save_trained",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
