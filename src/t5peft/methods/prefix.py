"""Prefix tuning as Hugging Face PEFT's ``PREFIX_TUNING`` computes it on T5 with ``transformers``.

PEFT keeps one table ``[num_virtual_tokens, num_layers * 2 * token_dim]`` (``num_layers`` = the encoder depth, as
PEFT reads it from the T5 config; ``token_dim`` = ``d_model``), viewed as ``n`` x (``num_layers`` key/value pairs)
x heads x ``d_model / num_heads``, and hands it to ``transformers`` as ``past_key_values``. What T5 then does with
it, and therefore what this method does (checked numerically against ``transformers`` + ``peft``):

* only decoder **self-attention** sees prefixes: the encoder gets no ``past_key_values``, and PEFT replaces the
  cross-attention cache by an empty one, so cross-attention recomputes its keys from the encoder output;
* decoder layer ``i`` reads pair ``2i mod L`` of the table (``L = num_layers``): with
  ``num_transformer_submodules = 2`` (PEFT's default for sequence-to-sequence models) PEFT lays the ``2L``
  key/value entries out twice and hands each layer four consecutive ones (self key, self value, cross key, cross
  value), and the cross pair is then discarded. For an even ``L`` half of the pairs are never used: they get no
  gradient, but are saved and counted, as in PEFT. (With 1 submodule ``transformers``' T5 fails on PEFT's cache,
  so 2 is the only value accepted.);
* the prefixes are ``n`` earlier decoder positions: they receive T5's (causal) relative position bias as
  positions ``0 .. n-1``, and the decoder's tokens sit at positions ``n, n+1, ...`` (their relative positions
  among themselves are unchanged); every token sees every prefix key. This is the ``occupies_positions``
  extension point of ``model.t5.T5Stack.self_prefix``; prefixes are not part of the key/value cache, so cached
  generation works unchanged.

How it differs from ``ptuning2`` (deep prompts): those put prefixes in encoder self-, decoder self- and cross-
attention, one separate key/value pair per layer, with zero position bias. This method is the PEFT-compatible
one; ``ptuning2`` the one that reaches the encoder.

Parameterisations: direct (default) ``prompt_embeddings`` ``[n, L * 2 * d]``, standard normal (``nn.Embedding``'s
initialisation), zeros with ``init_weights="zero"``; ``prefix_projection=True``: an embedding ``[n, d]`` through
``Linear(d, h) -> tanh -> Linear(h, L * 2 * d)`` (``h = encoder_hidden_size``, default ``d``; the last layer zero
with ``init_weights="zero"``). No initialisation is neutral: even zero keys take a share of every softmax.

Trainable parameters (``n = num_virtual_tokens``, ``L`` = encoder layers, ``d = d_model``): direct ``n L 2 d``;
projected ``n d + (d h + h) + (h L 2 d + L 2 d)``. t5-small with the defaults (n = 20, L = 6, d = 512): 122,880;
projected with h = 512: 3,424,768.

File (PEFT's ``PREFIX_TUNING``): one tensor ``prompt_embeddings`` ``[n, L * 2 * d]``, the projection evaluated
(PEFT saves it so too); loading always builds the direct table, which gives identical logits.

Requirements PEFT's layout imposes: ``num_heads * d_kv == d_model`` (PEFT splits ``token_dim`` into heads) and
no more decoder than encoder layers (``transformers`` needs a prefix for every decoder layer once any has one).

Prefixes are attention keys and values, not a change of weights: they cannot be merged. Options and file format:
:mod:`.declarations.prefix`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .base import Method, MethodConfigError
from .declarations.prefix import DECLARATION, PREFIX_MODEL_KEY, PrefixTuningConfig
from .prompt import fill_model_fields

if TYPE_CHECKING:
    from ..model.config import T5Config


class PeftPrefix(nn.Module):
    """Decoder self-attention prefixes ``[decoder layers, 2, H, n, d_kv]`` read from PEFT's table layout."""

    occupies_positions = True  # model.t5.KeyValuePrefix: the prefixes are the first n decoder positions

    def __init__(
        self, config: PrefixTuningConfig, decoder_layers: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__()
        n, layers, d = config.num_virtual_tokens, config.num_layers, config.token_dim
        self.prefix_len = n
        self.layout = (n, layers, 2, config.num_attention_heads, d // config.num_attention_heads)
        pairs = [(i * config.num_transformer_submodules) % layers for i in range(decoder_layers)]  # 2i mod L
        self.register_buffer("pairs", torch.tensor(pairs, dtype=torch.long, device=device), persistent=False)
        zero = config.init_weights == "zero"
        if config.prefix_projection:
            h = config.encoder_hidden_size or d
            self.embedding = nn.Embedding(n, d, device=device, dtype=dtype)
            self.transform = nn.Sequential(
                nn.Linear(d, h, device=device, dtype=dtype),
                nn.Tanh(),
                nn.Linear(h, layers * 2 * d, device=device, dtype=dtype),
            )
            if zero:
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            self.prompt_embeddings = nn.Parameter(torch.empty(n, layers * 2 * d, device=device, dtype=dtype))
            if zero:
                nn.init.zeros_(self.prompt_embeddings)
            else:
                nn.init.normal_(self.prompt_embeddings)

    def table(self) -> Tensor:
        """PEFT's ``[n, L * 2 * d]`` table (what its file holds)."""
        if hasattr(self, "transform"):
            return self.transform(self.embedding.weight)
        return self.prompt_embeddings

    def forward(self) -> Tensor:
        per_pair = self.table().view(self.layout).index_select(1, self.pairs)  # [n, decoder layers, 2, H, d_kv]
        return per_pair.permute(1, 2, 3, 0, 4)


def check_model(config: T5Config) -> None:
    if config.num_heads * config.d_kv != config.d_model:
        raise MethodConfigError(
            f"PEFT's prefix tuning splits d_model into heads; this model has num_heads * d_kv = "
            f"{config.num_heads * config.d_kv} != d_model = {config.d_model}"
        )
    if config.num_decoder_layers > config.num_layers:
        raise MethodConfigError(
            f"PEFT's prefix table has one key/value pair per encoder layer ({config.num_layers}); transformers cannot "
            f"use it in a decoder of {config.num_decoder_layers} layers"
        )


class PrefixTuning(Method):
    declaration = DECLARATION
    identity_at_init = False
    cannot_merge = "prefixes are extra attention keys and values, not a change of weights"

    def inject(self, model) -> None:
        if model.decoder.self_prefix is not None:
            raise MethodConfigError("decoder.self_prefix is already set")
        check_model(model.config)
        config: PrefixTuningConfig = self.config
        fill_model_fields(config, model.config)
        if config.prefix_projection:
            config.encoder_hidden_size = config.encoder_hidden_size or config.token_dim  # recorded as used
        weight = model.shared.weight
        decoder_layers = model.config.num_decoder_layers
        model.decoder.self_prefix = PeftPrefix(config, decoder_layers, weight.device, weight.dtype)

    def closed_form_trainable(self, config: T5Config) -> int:
        """Direct ``n L 2 d``; projected ``n d + (d h + h) + (h L 2 d + L 2 d)``."""
        n, d, pairs = self.config.num_virtual_tokens, config.d_model, 2 * config.num_layers
        if not self.config.prefix_projection:
            return n * pairs * d
        h = self.config.encoder_hidden_size or d
        return n * d + (d * h + h) + (h * pairs * d + pairs * d)

    def export_state(self, model, names: list[str]) -> dict[str, Tensor]:
        with torch.no_grad():
            return {PREFIX_MODEL_KEY: model.decoder.self_prefix.table().detach().contiguous()}
