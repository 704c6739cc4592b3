"""t5peft: T5 written from scratch, and a benchmark of parameter-efficient fine-tuning methods."""

from ._version import __version__
from .errors import T5PeftError
from .methods import apply_method, count_parameters, load_adapter, load_trained, save_adapter, save_trained
from .model import CheckpointError, ConfigError, T5Config, T5ForConditionalGeneration, load_pretrained
from .tokenizer import T5Tokenizer, load_tokenizer

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
