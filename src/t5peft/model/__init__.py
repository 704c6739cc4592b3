from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .config import ConfigError, T5Config
from .t5 import KVCache, Seq2SeqLMOutput, T5ForConditionalGeneration

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
