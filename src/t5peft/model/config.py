"""T5 configuration, read from and written to a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import T5PeftError

ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")


class ConfigError(T5PeftError, ValueError):
    """A configuration value that cannot describe a T5 model."""


@dataclass
class T5Config:
    """Hyper-parameters of a T5 encoder-decoder.

    Defaults are t5-small. Field names are those of Hugging Face's ``config.json`` so a file maps one to
    one; keys that do not describe the architecture (``task_specific_params``, ``architectures``, ...) are
    ignored when reading.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    # v1.0 rescales the decoder output by d_model**-0.5 before the (tied) head; v1.1 does not.
    # None means "follow tie_word_embeddings", which is what every published checkpoint implies.
    scale_decoder_outputs: bool | None = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    name_or_path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        self.validate()

    # ----------------------------------------------------------------------------------------------
    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        act = self.feed_forward_proj.removeprefix("gated-")
        # Hugging Face maps "gated-gelu" to the tanh approximation (gelu_new); plain "gelu" stays exact.
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def validate(self) -> None:
        positive = (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.relative_attention_num_buckets < 4:
            raise ConfigError("relative_attention_num_buckets must be at least 4")
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if not float(self.layer_norm_epsilon) > 0.0:
            raise ConfigError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        parts = self.feed_forward_proj.split("-")
        gated_ok = len(parts) == 2 and parts[0] == "gated"
        if not (len(parts) == 1 or gated_ok) or parts[-1] not in ACTIVATIONS:
            raise ConfigError(
                f"feed_forward_proj must be one of {list(ACTIVATIONS)} or 'gated-<one of them>', "
                f"got {self.feed_forward_proj!r}"
            )
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} must be a token id in [0, {self.vocab_size}), got {value!r}")

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> T5Config:
        """Build from a ``config.json`` dict; keys that do not describe the architecture are ignored."""
        model_type = values.get("model_type", "t5")
        if model_type not in ("t5", "mt5", "umt5"):
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected 't5'")
        known = {f.name for f in dataclasses.fields(cls)} - {"name_or_path"}
        kwargs = {k: v for k, v in values.items() if k in known}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        for key in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if kwargs.get(key, 0) is None:
                kwargs.pop(key)
        try:
            return cls(**kwargs, name_or_path=values.get("_name_or_path", ""))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except TypeError as err:  # e.g. a string where a number belongs
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> T5Config:
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        config = cls.from_dict(values, source=str(path))
        config.name_or_path = str(path.parent)
        return config

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` that ``transformers`` reads back to the same architecture."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name_or_path"}
        values.update(
            model_type="t5",
            architectures=["T5ForConditionalGeneration"],
            is_encoder_decoder=True,
            is_gated_act=self.is_gated_act,
            dense_act_fn=self.dense_act_fn,
        )
        if self.name_or_path:  # e.g. "random-init:configs/models/t5-tiny" for weights drawn from a seed
            values["_name_or_path"] = self.name_or_path
        return values

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path
