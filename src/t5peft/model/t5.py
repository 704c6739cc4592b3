"""The whole T5 encoder-decoder in one file.

Module names follow Hugging Face's ``modeling_t5.py`` exactly (``shared``, ``encoder.block.{i}.layer.{j}``,
``SelfAttention``/``EncDecAttention`` with ``q, k, v, o``, ``DenseReluDense.{wi,wo}``, ``layer_norm``,
``final_layer_norm``, ``relative_attention_bias``, ``lm_head``) so checkpoints and PEFT adapter files map
without renaming. Differences from Hugging Face's code are in *how* it computes, not *what*:

* attention runs through ``F.scaled_dot_product_attention`` with the relative position bias, the causal
  mask and the padding mask folded into one additive mask, built once per stack and shared by all layers;
* the stacks do not own an ``embed_tokens`` alias of ``shared``; the top-level model embeds tokens, so
  input embeddings (soft prompts) can be edited in one place.

Extension points used by the PEFT methods (``t5peft.methods``), all ``None`` on a plain model:

* ``T5Stack.input_prefix`` (an :class:`InputPrefix`): ``(embeds, mask) -> (embeds, mask)`` applied to the encoder
  input (prompt tuning);
* ``T5Stack.self_prefix`` / ``T5Stack.cross_prefix`` (each a :class:`KeyValuePrefix`): modules returning per-layer
  key/value prefixes, a tensor ``[num_layers, 2, num_heads, prefix_len, d_kv]`` (deep prompts, P-Tuning v2). A
  self-attention prefix with ``occupies_positions = True`` stands for ``prefix_len`` positions before the first
  token (it receives relative position bias as positions ``0 .. prefix_len - 1``, and the stack's tokens start at
  position ``prefix_len``: Hugging Face's ``past_key_values`` prefixes, PEFT's prefix tuning); otherwise the
  prefix keys have no position and get zero bias;
* ``T5LayerSelfAttention.adapter`` / ``T5LayerCrossAttention.adapter`` / ``T5LayerFF.adapter``: a module
  applied to the sub-layer's output before the residual add (bottleneck adapters).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..hub import Downloader
from .checkpoint import CheckpointError, check_names, check_part, stream_checkpoint, write_checkpoint
from .config import T5Config

# --------------------------------------------------------------------------------------------------
# Building blocks


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias, accumulated in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    return nn.SiLU()  # "silu" / "swish"; T5Config.validate rejects anything else


class T5DenseActDense(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = _activation(config.dense_act_fn)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.wo(self.dropout(self.act(self.wi(hidden_states))))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = _activation(config.dense_act_fn)

    def forward(self, hidden_states: Tensor) -> Tensor:
        gated = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        return self.wo(self.dropout(gated))


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Map ``key_pos - query_pos`` to a bucket: exact for small distances, log-spaced up to max_distance."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 log as in Mesh TensorFlow; distance 0 only occurs where is_small selects the exact branch
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


@dataclass
class KVCache:
    """Key/value cache for incremental decoding: one entry per decoder layer."""

    self_kv: list[tuple[Tensor, Tensor] | None]
    cross_kv: list[tuple[Tensor, Tensor] | None]
    length: int = 0  # decoder positions already cached

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls([None] * num_layers, [None] * num_layers)


class T5Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d_kv) scaling (T5 folds it into the initialisation)."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False) -> None:
        super().__init__()
        self.n_heads = config.num_heads
        self.d_kv = config.d_kv
        self.dropout = config.dropout_rate
        inner = config.inner_dim
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_kv).transpose(1, 2)

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None,
        key_value_states: Tensor | None = None,
        cached_kv: tuple[Tensor, Tensor] | None = None,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend; returns the output and the (un-prefixed) keys/values for a cache.

        ``cached_kv`` holds earlier keys/values: for self-attention new ones are appended to them, for
        cross-attention (``key_value_states`` given) they are reused as they are. ``prefix`` holds
        ``[B, H, P, d_kv]`` keys/values prepended to every query's view (deep prompts).
        """
        batch, length, _ = hidden_states.shape
        query = self._heads(self.q(hidden_states))
        if key_value_states is not None and cached_kv is not None:
            key, value = cached_kv
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key, value = self._heads(self.k(source)), self._heads(self.v(source))
            if cached_kv is not None:
                key = torch.cat([cached_kv[0], key], dim=2)
                value = torch.cat([cached_kv[1], value], dim=2)
        keys, values = key, value
        if prefix is not None:
            keys = torch.cat([prefix[0].to(key.dtype), key], dim=2)
            values = torch.cat([prefix[1].to(value.dtype), value], dim=2)
        out = F.scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            scale=1.0,
        )
        out = out.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_kv)
        return self.o(out), (key, value)


class _SubLayer(nn.Module):
    """What the three sub-layers share: pre-norm, and "dropout -> optional adapter -> residual" after them.

    Subclasses create their main module first and then call :meth:`_add_norm_and_dropout`, so parameters are
    registered in Hugging Face's order (``SelfAttention.q`` ... before ``layer_norm``): optimizer state and
    gradient-norm sums then run over the same order as ``transformers`` and as earlier t5peft versions.
    """

    def _add_norm_and_dropout(self, config: T5Config) -> None:
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.adapter: nn.Module | None = None  # extension point (bottleneck adapters)

    def add_residual(self, hidden_states: Tensor, out: Tensor) -> Tensor:
        out = self.dropout(out)
        if self.adapter is not None:
            out = self.adapter(out)
        return hidden_states + out


class T5LayerSelfAttention(_SubLayer):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self._add_norm_and_dropout(config)

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None,
        cached_kv: tuple[Tensor, Tensor] | None = None,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, kv = self.SelfAttention(self.layer_norm(hidden_states), mask, cached_kv=cached_kv, prefix=prefix)
        return self.add_residual(hidden_states, out), kv


class T5LayerCrossAttention(_SubLayer):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, has_relative_attention_bias=False)
        self._add_norm_and_dropout(config)

    def forward(
        self,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        mask: Tensor | None,
        cached_kv: tuple[Tensor, Tensor] | None = None,
        prefix: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, kv = self.EncDecAttention(
            self.layer_norm(hidden_states),
            mask,
            key_value_states=encoder_hidden_states,
            cached_kv=cached_kv,
            prefix=prefix,
        )
        return self.add_residual(hidden_states, out), kv


class T5LayerFF(_SubLayer):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        dense = T5DenseGatedActDense if config.is_gated_act else T5DenseActDense
        self.DenseReluDense = dense(config)
        self._add_norm_and_dropout(config)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.add_residual(hidden_states, self.DenseReluDense(self.layer_norm(hidden_states)))


@dataclass
class LayerPrefixes:
    """Deep-prompt key/value prefixes for one block, each ``([B, H, P, d_kv], [B, H, P, d_kv])`` or None."""

    self_kv: tuple[Tensor, Tensor] | None = None
    cross_kv: tuple[Tensor, Tensor] | None = None


class T5Block(nn.Module):
    """Self-attention, cross-attention (decoder only) and the FFN, applied in that order."""

    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        layers: list[nn.Module] = [T5LayerSelfAttention(config, has_relative_attention_bias)]
        if is_decoder:
            layers.append(T5LayerCrossAttention(config))
        layers.append(T5LayerFF(config))
        self.layer = nn.ModuleList(layers)
        # set by T5ForConditionalGeneration.set_activation_checkpointing: keep only the block's inputs for the
        # backward pass and run its forward again there (torch.utils.checkpoint, non-reentrant)
        self.activation_checkpointing = False

    def forward(
        self,
        hidden_states: Tensor,
        self_mask: Tensor | None,
        encoder_hidden_states: Tensor | None = None,
        cross_mask: Tensor | None = None,
        prefixes: LayerPrefixes | None = None,
        cache: KVCache | None = None,
        index: int = 0,
    ) -> Tensor:
        """One block; ``cache`` (incremental decoding) is read and updated at position ``index``.

        With ``activation_checkpointing`` on, a forward that records gradients keeps only the block's inputs and
        recomputes the rest in the backward pass (the random state is restored for the recomputation, so dropout
        draws the same masks); decoding with a cache never records gradients and runs plainly.
        """
        prefixes = prefixes or LayerPrefixes()
        if (
            self.activation_checkpointing
            and cache is None
            and self._needs_backward(prefixes, hidden_states, self_mask, encoder_hidden_states, cross_mask)
        ):
            # the prefixes go in as tensors (not the dataclass), so torch.compile traces the region as one graph
            return checkpoint(
                self._checkpointed,
                hidden_states,
                self_mask,
                encoder_hidden_states,
                cross_mask,
                prefixes.self_kv,
                prefixes.cross_kv,
                use_reentrant=False,
            )
        return self._forward(hidden_states, self_mask, encoder_hidden_states, cross_mask, prefixes, cache, index)

    def _needs_backward(self, prefixes: LayerPrefixes, *inputs: Tensor | None) -> bool:
        """Whether this forward builds a graph to differentiate: a block nothing trains through (the encoder under
        decoder-only prefix tuning) saves nothing, so there is nothing to checkpoint."""
        if not torch.is_grad_enabled():
            return False
        tensors = [t for t in inputs if t is not None]
        tensors += [t for pair in (prefixes.self_kv, prefixes.cross_kv) if pair is not None for t in pair]
        return any(t.requires_grad for t in tensors) or any(p.requires_grad for p in self.parameters())

    def _checkpointed(
        self,
        hidden_states: Tensor,
        self_mask: Tensor | None,
        encoder_hidden_states: Tensor | None,
        cross_mask: Tensor | None,
        self_kv: tuple[Tensor, Tensor] | None,
        cross_kv: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        prefixes = LayerPrefixes(self_kv, cross_kv)
        return self._forward(hidden_states, self_mask, encoder_hidden_states, cross_mask, prefixes, None, 0)

    def _forward(
        self,
        hidden_states: Tensor,
        self_mask: Tensor | None,
        encoder_hidden_states: Tensor | None,
        cross_mask: Tensor | None,
        prefixes: LayerPrefixes,
        cache: KVCache | None,
        index: int,
    ) -> Tensor:
        cached = cache.self_kv[index] if cache is not None else None
        hidden_states, kv = self.layer[0](hidden_states, self_mask, cached_kv=cached, prefix=prefixes.self_kv)
        if cache is not None:
            cache.self_kv[index] = kv
        if self.is_decoder:
            if encoder_hidden_states is None:
                raise ValueError("the decoder needs encoder_hidden_states")
            cached = cache.cross_kv[index] if cache is not None else None
            hidden_states, kv = self.layer[1](
                hidden_states, encoder_hidden_states, cross_mask, cached_kv=cached, prefix=prefixes.cross_kv
            )
            if cache is not None:
                cache.cross_kv[index] = kv
        return self.layer[-1](hidden_states)


# --------------------------------------------------------------------------------------------------
# Stacks


def _mask_dtype(reference: Tensor) -> torch.dtype:
    """The dtype attention runs in: the autocast dtype when autocast is on, else the activations'."""
    device_type = reference.device.type
    if device_type != "meta" and torch.is_autocast_enabled(device_type):  # meta (shapes only) has no autocast
        return torch.get_autocast_dtype(device_type)
    return reference.dtype


def _prefix_columns(mask: Tensor, prefix_len: int, columns: Tensor | None = None) -> Tensor:
    """Prepend ``prefix_len`` always-visible key columns to an additive mask: ``columns`` ``[1, H, Lq, P]``
    (a position bias), or zeros."""
    if prefix_len == 0:
        return mask
    if columns is None:
        columns = mask.new_zeros((*mask.shape[:-1], prefix_len))
    else:
        columns = columns.to(mask.dtype).expand(mask.shape[0], -1, -1, -1)
    return torch.cat([columns, mask], dim=-1)


class InputPrefix(Protocol):
    """What ``T5Stack.input_prefix`` holds (an ``nn.Module``, so its parameters are the model's): it extends the
    encoder's input embeddings ``[B, L, d_model]`` and attention mask ``[B, L]`` (None: no padding) to ``L + P``."""

    def __call__(self, inputs_embeds: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]: ...


class KeyValuePrefix(Protocol):
    """What ``T5Stack.self_prefix`` / ``cross_prefix`` hold (an ``nn.Module``, so its parameters are the model's).

    Called without arguments it returns every layer's prefix keys and values, ``[num_layers, 2, num_heads,
    prefix_len, d_kv]``; ``occupies_positions`` says whether the prefix stands for ``prefix_len`` positions before
    the first token (relative position bias as positions ``0 .. prefix_len - 1``; self-attention only) or has no
    position (zero bias)."""

    prefix_len: int
    occupies_positions: bool

    def __call__(self) -> Tensor: ...


class T5Stack(nn.Module):
    """The encoder or the decoder: blocks of (self-attention, [cross-attention], FFN) + final norm."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        n_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList(
            [T5Block(config, is_decoder, has_relative_attention_bias=(i == 0)) for i in range(n_layers)]
        )
        self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.input_prefix: InputPrefix | None = None
        self.self_prefix: KeyValuePrefix | None = None
        self.cross_prefix: KeyValuePrefix | None = None

    def position_bias(self, query_len: int, key_len: int, offset: int, device: torch.device) -> Tensor:
        """Relative position bias ``[1, H, query_len, key_len]``; query i sits at position offset + i."""
        context = torch.arange(query_len, device=device)[:, None] + offset
        memory = torch.arange(key_len, device=device)[None, :]
        buckets = relative_position_bucket(
            memory - context,
            bidirectional=not self.is_decoder,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias
        return table(buckets).permute(2, 0, 1).unsqueeze(0)

    def self_attention_mask(
        self, hidden: Tensor, attention_mask: Tensor | None, offset: int, prefix_len: int, positioned: bool = False
    ) -> Tensor:
        """Position bias, causal mask (decoder) and padding mask as one additive ``[B|1, H, Lq, P+Lk]``.

        ``positioned``: the ``prefix_len`` prefix keys sit at positions ``0 .. P-1`` and the tokens after them
        (query ``i`` at ``P + offset + i``); relative positions among the tokens are unchanged by that shift,
        so only the prefix columns differ from an unpositioned prefix, whose columns get zero bias. Prefix
        keys are visible to every query either way (they precede every token under the causal mask).
        """
        query_len = hidden.shape[1]
        key_len = offset + query_len
        dtype = _mask_dtype(hidden)
        bias = self.position_bias(query_len, key_len, offset, hidden.device).to(dtype)
        allowed = None
        if self.is_decoder:
            positions = torch.arange(key_len, device=hidden.device)
            allowed = (positions[None, :] <= positions[offset:, None])[None, None]
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :key_len].bool()
            allowed = keep if allowed is None else allowed & keep
        mask = bias if allowed is None else torch.where(allowed, bias, torch.finfo(dtype).min)
        columns = None
        if positioned and prefix_len:
            columns = self.position_bias(query_len, prefix_len, offset + prefix_len, hidden.device)
        return _prefix_columns(mask, prefix_len, columns)

    @staticmethod
    def cross_attention_mask(hidden: Tensor, encoder_mask: Tensor | None, prefix_len: int) -> Tensor | None:
        if encoder_mask is None:
            return None  # no padding: every key is visible, prefix included
        dtype = _mask_dtype(hidden)
        mask = torch.zeros(encoder_mask.shape, dtype=dtype, device=hidden.device)
        mask = mask.masked_fill(~encoder_mask.bool(), torch.finfo(dtype).min)[:, None, None, :]
        return _prefix_columns(mask, prefix_len)

    @staticmethod
    def _prefix_len(module: KeyValuePrefix | None) -> int:
        return 0 if module is None else module.prefix_len

    def layer_prefixes(self, batch: int) -> list[LayerPrefixes]:
        """Per block, the deep-prompt prefixes of the ``self_prefix`` / ``cross_prefix`` modules, batch-expanded."""
        tables = [None if module is None else module() for module in (self.self_prefix, self.cross_prefix)]
        prefixes = []
        for i in range(len(self.block)):
            pairs = [
                None
                if table is None  # [num_layers, 2, H, P, d_kv]
                else (table[i, 0].expand(batch, -1, -1, -1), table[i, 1].expand(batch, -1, -1, -1))
                for table in tables
            ]
            prefixes.append(LayerPrefixes(*pairs))
        return prefixes

    def forward(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        offset = cache.length if cache is not None else 0
        hidden = self.dropout(inputs_embeds)
        self_mask = self.self_attention_mask(
            hidden,
            attention_mask,
            offset,
            self._prefix_len(self.self_prefix),
            positioned=self.self_prefix is not None and self.self_prefix.occupies_positions,
        )
        cross_mask = None
        if self.is_decoder:
            cross_mask = self.cross_attention_mask(hidden, encoder_attention_mask, self._prefix_len(self.cross_prefix))
        prefixes = self.layer_prefixes(inputs_embeds.shape[0])
        for i, block in enumerate(self.block):
            hidden = block(hidden, self_mask, encoder_hidden_states, cross_mask, prefixes[i], cache, i)
        if cache is not None:
            cache.length += inputs_embeds.shape[1]
        return self.dropout(self.final_layer_norm(hidden))


# --------------------------------------------------------------------------------------------------
# The model


@dataclass
class Seq2SeqLMOutput:
    logits: Tensor
    loss: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None
    encoder_attention_mask: Tensor | None = None


class T5ForConditionalGeneration(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        self.peft = None  # set by t5peft.methods.apply_method
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random initialisation with the same distributions as Hugging Face's T5."""
        if self.shared.weight.is_meta:  # shapes only (parameter counts): there are no values to draw
            return
        c = self.config
        f = c.initializer_factor
        nn.init.normal_(self.shared.weight, std=f)
        if not c.tie_word_embeddings:
            nn.init.normal_(self.lm_head.weight, std=f)
        for module in self.modules():
            if isinstance(module, T5LayerNorm):
                module.weight.fill_(f)
            elif isinstance(module, T5Attention):
                nn.init.normal_(module.q.weight, std=f * (c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.v.weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.o.weight, std=f * c.inner_dim**-0.5)
                if module.has_relative_attention_bias:
                    nn.init.normal_(module.relative_attention_bias.weight, std=f * c.d_model**-0.5)
            elif isinstance(module, (T5DenseActDense, T5DenseGatedActDense)):
                for name in ("wi", "wi_0", "wi_1"):
                    if hasattr(module, name):
                        nn.init.normal_(getattr(module, name).weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=f * c.d_ff**-0.5)

    def set_dropout(self, rate: float) -> None:
        """Set the rate of every dropout, attention probabilities included (before applying a PEFT method,
        whose own dropouts keep their configured rates)."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {rate}")
        self.config.dropout_rate = rate
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = rate
            elif isinstance(module, T5Attention):
                module.dropout = rate

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint every T5 block (encoder and decoder) in training forwards: activation memory falls from
        all the blocks' intermediates to their inputs plus one block's, for one more forward pass per step.
        Gradients are those of the plain model; PEFT methods applied before or after are covered alike."""
        for stack in (self.encoder, self.decoder):
            for block in stack.block:
                block.activation_checkpointing = bool(enabled)

    @property
    def activation_checkpointing(self) -> bool:
        return all(block.activation_checkpointing for stack in (self.encoder, self.decoder) for block in stack.block)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return self.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.shared.weight.dtype

    # ----------------------------------------------------------------------------------------------
    def shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs from labels: start token first, -100 (ignored) replaced by padding."""
        shifted = labels.new_full(labels.shape, self.config.decoder_start_token_id)
        shifted[..., 1:] = labels[..., :-1]
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def encode(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Encoder states and the mask the decoder must use for them (prompts may lengthen both)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.shared(input_ids)
        if self.encoder.input_prefix is not None:
            inputs_embeds, attention_mask = self.encoder.input_prefix(inputs_embeds, attention_mask)
        return self.encoder(inputs_embeds, attention_mask), attention_mask

    def decode(
        self,
        decoder_input_ids: Tensor | None,
        encoder_hidden_states: Tensor,
        encoder_attention_mask: Tensor | None,
        decoder_attention_mask: Tensor | None = None,
        decoder_inputs_embeds: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Logits for the decoder positions given."""
        if decoder_inputs_embeds is None:
            if decoder_input_ids is None:
                raise ValueError("pass decoder_input_ids, decoder_inputs_embeds or labels")
            decoder_inputs_embeds = self.shared(decoder_input_ids)
        hidden = self.decoder(
            decoder_inputs_embeds,
            decoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            cache=cache,
        )
        if self.config.scale_decoder_outputs:
            hidden = hidden * (self.config.d_model**-0.5)
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        decoder_inputs_embeds: Tensor | None = None,
    ) -> Seq2SeqLMOutput:
        encoder_hidden, encoder_mask = self.encode(input_ids, attention_mask, inputs_embeds)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.shift_right(labels)
        logits = self.decode(
            decoder_input_ids,
            encoder_hidden,
            encoder_mask,
            decoder_attention_mask=decoder_attention_mask,
            decoder_inputs_embeds=decoder_inputs_embeds,
        )
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return Seq2SeqLMOutput(
            logits=logits,
            loss=loss,
            encoder_last_hidden_state=encoder_hidden,
            encoder_attention_mask=encoder_mask,
        )

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 20,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Greedy decoding with a key/value cache.

        Returns ``[B, 1 + n]`` token ids starting with the decoder start token, like ``transformers``;
        a sequence that emitted EOS is padded afterwards, and decoding stops once all have.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        encoder_hidden, encoder_mask = self.encode(input_ids, attention_mask, inputs_embeds)
        batch = encoder_hidden.shape[0]
        cache = KVCache.empty(len(self.decoder.block))
        start = self.config.decoder_start_token_id
        tokens = torch.full((batch, 1), start, dtype=torch.long, device=encoder_hidden.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=encoder_hidden.device)
        for _ in range(max_new_tokens):
            logits = self.decode(tokens[:, -1:], encoder_hidden, encoder_mask, cache=cache)
            next_token = logits[:, -1].argmax(dim=-1)
            next_token = next_token.masked_fill(finished, self.config.pad_token_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished |= next_token == self.config.eos_token_id
            if bool(finished.all()):
                break
        return tokens

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        *,
        downloader: Downloader | None = None,
    ) -> T5ForConditionalGeneration:
        """Load a Hugging Face T5 checkpoint from a folder or a Hub id, checking every tensor.

        A sharded checkpoint is read one shard at a time, each shard's tensors converted to ``dtype`` and moved to
        ``device`` before the next is read: host memory holds the model (if ``device`` is the CPU) plus one shard."""
        config, stream = stream_checkpoint(name_or_path, downloader)
        with torch.device("meta"):
            model = cls(config)
        check_names(model, stream.names, stream.source)
        for source, part in stream.parts():
            check_part(model, part, source)
            model.load_state_dict(
                {k: v.to(device=device, dtype=dtype) for k, v in part.items()}, strict=False, assign=True
            )
            del part
        if config.tie_word_embeddings:
            model.lm_head.weight = model.shared.weight
        return model.to(device).eval()

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        exclude: Collection[str] = (),
        *,
        max_shard_bytes: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Write ``config.json`` + ``model.safetensors``; ``exclude`` names parameters a method added (not T5's).

        ``max_shard_bytes`` writes sharded safetensors instead, ``dtype`` converts the weights (see
        :func:`~t5peft.model.checkpoint.write_checkpoint`).
        """
        state = {name: p for name, p in self.named_parameters() if name not in exclude}  # tied weight listed once
        with torch.device("meta"):
            expected = {name for name, _ in type(self)(self.config).named_parameters()}
        extra = sorted(set(state) - expected)
        if extra:
            raise CheckpointError(
                f"the model carries parameters a plain T5 checkpoint cannot hold ({', '.join(extra[:5])}...); "
                "merge or remove the PEFT method first, or save the adapter with save_adapter"
            )
        write_checkpoint(self.config, state, directory, max_shard_bytes=max_shard_bytes, dtype=dtype)


def load_pretrained(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    downloader: Downloader | None = None,
) -> T5ForConditionalGeneration:
    """Load a Hugging Face T5 checkpoint (see :meth:`T5ForConditionalGeneration.from_pretrained`)."""
    return T5ForConditionalGeneration.from_pretrained(name_or_path, dtype, device, downloader=downloader)


def save_pretrained(model: T5ForConditionalGeneration, directory: str | os.PathLike) -> None:
    model.save_pretrained(directory)
