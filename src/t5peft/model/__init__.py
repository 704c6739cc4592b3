from .checkpoint import CheckpointError
from .config import ConfigError, T5Config
from .t5 import KVCache, Seq2SeqLMOutput, T5ForConditionalGeneration, load_pretrained, save_pretrained

__all__ = [
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "Seq2SeqLMOutput",
    "T5Config",
    "T5ForConditionalGeneration",
    "load_pretrained",
    "save_pretrained",
]
