"""t5peft: T5 written from scratch, and a benchmark of parameter-efficient fine-tuning methods.

The names below that need torch load on first use (PEP 562), so importing a torch-free part of the package (the
command line's help, the method declarations) does not import torch, which alone takes seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from ._version import __version__
from .errors import T5PeftError

if TYPE_CHECKING:
    from .methods import (
        apply_method,
        count_parameters,
        load_adapter,
        load_trained,
        merge_method,
        save_adapter,
        save_trained,
    )
    from .model import CheckpointError, ConfigError, T5Config, T5ForConditionalGeneration, load_pretrained
    from .tokenizer import T5Tokenizer, load_tokenizer

_LAZY = {
    "apply_method": "methods",
    "count_parameters": "methods",
    "load_adapter": "methods",
    "load_trained": "methods",
    "merge_method": "methods",
    "save_adapter": "methods",
    "save_trained": "methods",
    "CheckpointError": "model",
    "ConfigError": "model",
    "T5Config": "model",
    "T5ForConditionalGeneration": "model",
    "load_pretrained": "model",
    "T5Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
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
    "merge_method",
    "save_adapter",
    "save_trained",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
