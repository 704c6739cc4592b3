"""t5peft: T5 written from scratch, and a benchmark of parameter-efficient fine-tuning methods."""

from .methods import apply_method, count_parameters, load_adapter, save_adapter
from .model import CheckpointError, ConfigError, T5Config, T5ForConditionalGeneration, load_pretrained
from .tokenizer import T5Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "T5Config",
    "T5ForConditionalGeneration",
    "T5Tokenizer",
    "__version__",
    "apply_method",
    "count_parameters",
    "load_adapter",
    "load_pretrained",
    "load_tokenizer",
    "save_adapter",
]
