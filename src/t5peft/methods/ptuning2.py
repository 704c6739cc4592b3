"""P-Tuning v2 / deep prompts: trainable key/value prefixes in every layer's attention.

Three sites, each switchable: encoder self-attention (``encoder_self``), decoder self-attention
(``decoder_self``) and decoder cross-attention (``decoder_cross``), all on by default. Each enabled site is
a module on the model's extension points (``encoder.self_prefix``, ``decoder.self_prefix``,
``decoder.cross_prefix``) returning ``[num_layers, 2, num_heads, num_virtual_tokens, d_kv]`` key (index 0)
and value (index 1) prefixes; the stack prepends them in every layer with zero position bias, visible to
every query (also under the causal mask), and they are not part of the decoder's key/value cache, so
cached generation works unchanged.

Parameterisations:

* direct (default): one parameter ``prefixes`` per site, initialised from a normal distribution with
  standard deviation ``init_std`` (0.02);
* ``prefix_projection=True`` (the reparameterisation of Li & Liang / P-Tuning v2, with PEFT's option
  names): per site an embedding ``[num_virtual_tokens, d_model]`` (standard normal, like ``nn.Embedding``)
  fed through ``Linear(d_model, encoder_hidden_size) -> tanh -> Linear(encoder_hidden_size,
  num_layers * 2 * num_heads * d_kv)`` (``nn.Linear``'s default initialisation, with biases);
  ``encoder_hidden_size`` defaults to ``d_model``. The MLP's output is laid out ``[n, layer, key/value,
  head, d_kv]`` as in PEFT's prefix encoder.

Even untrained, deep prompts change the logits: the prefix keys take a share of every softmax (a key of
zeros still scores 0 against any query), so no initialisation is neutral.

Trainable parameters, summed over the enabled sites (``L`` = the site's stack depth, ``inner`` =
``num_heads * d_kv``, ``n = num_virtual_tokens``, ``h = encoder_hidden_size``):

* direct: ``L * 2 * n * inner``;
* projected: ``n * d_model + (d_model * h + h) + (h * L * 2 * inner + L * 2 * inner)``.

For t5-small (L = 6, inner = 512, d_model = 512) with the defaults (n = 20): 122,880 per site, 368,640 for
the three; with ``prefix_projection`` (h = 512) 3,424,768 per site, 10,274,304 for the three.

File: ``peft_type`` ``T5PEFT_DEEP_PROMPT`` (Hugging Face PEFT has no equivalent and refuses it), in PEFT's
two-file layout. The tensors are always the final prefixes, ``base_model.model.encoder.self_prefix.prefixes``,
``base_model.model.decoder.self_prefix.prefixes`` and ``base_model.model.decoder.cross_prefix.prefixes``
(those enabled), each ``[num_layers, 2, num_heads, num_virtual_tokens, d_kv]``: the MLP is evaluated when
saving and not stored. ``adapter_config.json`` keeps the options the adapter was trained with
(``prefix_projection`` included), but loading always builds direct prefixes, which give identical logits.

Relation to PEFT's ``PREFIX_TUNING``: on T5, PEFT's prefixes reach only decoder self-attention (its
cross-attention cache is rebuilt from the encoder output, and the encoder never sees ``past_key_values``),
and ``transformers``' T5 treats them as ``n`` earlier decoder positions, so they receive relative position
bias (and shift the real tokens' cache positions), where t5peft gives them zero bias. With only
``decoder_self`` enabled the two therefore agree only when the decoder's relative position bias is zero.
The ``prefix`` method (:mod:`t5peft.methods.prefix`) is PEFT's prefix tuning exactly, position bias included.

Deep prompts are attention keys and values, not a change of weights: they cannot be merged. Options and file format:
:mod:`.declarations.ptuning2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .base import Method, MethodConfigError
from .declarations.ptuning2 import DECLARATION, SITES, DeepPromptConfig

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration


@dataclass(frozen=True)
class PrefixShape:
    num_layers: int
    num_heads: int
    prefix_len: int
    d_kv: int

    @property
    def dims(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, 2, self.num_heads, self.prefix_len, self.d_kv)

    @property
    def numel(self) -> int:
        return self.num_layers * 2 * self.num_heads * self.prefix_len * self.d_kv


class DeepPrefix(nn.Module):
    """Direct per-layer key/value prefixes, one parameter ``[L, 2, H, n, d_kv]``."""

    occupies_positions = False  # model.t5.KeyValuePrefix: the prefix keys have no position (zero bias)

    def __init__(self, shape: PrefixShape, init_std: float, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.prefix_len = shape.prefix_len
        self.prefixes = nn.Parameter(torch.empty(shape.dims, device=device, dtype=dtype))
        nn.init.normal_(self.prefixes, std=init_std)

    def forward(self) -> Tensor:
        return self.prefixes


class ProjectedDeepPrefix(nn.Module):
    """Prefixes computed by an MLP from ``n`` embeddings (the training-time reparameterisation)."""

    occupies_positions = False  # as DeepPrefix

    def __init__(self, shape: PrefixShape, d_model: int, hidden: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.shape = shape
        self.prefix_len = shape.prefix_len
        self.embedding = nn.Embedding(shape.prefix_len, d_model, device=device, dtype=dtype)
        self.transform = nn.Sequential(
            nn.Linear(d_model, hidden, device=device, dtype=dtype),
            nn.Tanh(),
            nn.Linear(hidden, shape.numel // shape.prefix_len, device=device, dtype=dtype),
        )

    def forward(self) -> Tensor:
        s = self.shape
        out = self.transform(self.embedding.weight)  # [n, L * 2 * H * d_kv]
        return out.view(s.prefix_len, s.num_layers, 2, s.num_heads, s.d_kv).permute(1, 2, 3, 0, 4)


def _site_shape(model: T5ForConditionalGeneration, site: str, n: int) -> PrefixShape:
    stack = getattr(model, SITES[site][0])
    return PrefixShape(len(stack.block), model.config.num_heads, n, model.config.d_kv)


def inject_deep_prompts(model: T5ForConditionalGeneration, config: DeepPromptConfig) -> None:
    weight = model.shared.weight
    for site in config.sites():
        stack_name, attr = SITES[site]
        stack = getattr(model, stack_name)
        if getattr(stack, attr) is not None:
            raise MethodConfigError(f"{stack_name}.{attr} is already set")
        shape = _site_shape(model, site, config.num_virtual_tokens)
        if config.prefix_projection:
            config.encoder_hidden_size = config.encoder_hidden_size or model.config.d_model  # recorded as used
            hidden = config.encoder_hidden_size
            module = ProjectedDeepPrefix(shape, model.config.d_model, hidden, weight.device, weight.dtype)
        else:
            module = DeepPrefix(shape, config.init_std, weight.device, weight.dtype)
        setattr(stack, attr, module)


def site_key(site: str) -> str:
    """The model key (and, prefixed, the file key) of a site's final prefixes."""
    stack_name, attr = SITES[site]
    return f"{stack_name}.{attr}.prefixes"


class DeepPrompt(Method):
    declaration = DECLARATION
    identity_at_init = False
    cannot_merge = "deep prompts are extra attention keys and values, not a change of weights"

    def inject(self, model) -> None:
        inject_deep_prompts(model, self.config)

    def closed_form_trainable(self, config: T5Config) -> int:
        c = self.config
        n, d, h = c.num_virtual_tokens, config.d_model, c.encoder_hidden_size or config.d_model
        total = 0
        for site in c.sites():
            layers = config.num_layers if SITES[site][0] == "encoder" else config.num_decoder_layers
            row = layers * 2 * config.inner_dim  # one virtual token's keys and values in every layer: L * 2 * inner
            if c.prefix_projection:
                total += n * d + (d * h + h) + (h * row + row)
            else:
                total += n * row
        return total

    def export_state(self, model, names: list[str]) -> dict[str, Tensor]:
        """The final prefixes of every enabled site (the reparameterisation MLP evaluated, not saved)."""
        state = {}
        with torch.no_grad():
            for site in self.config.sites():
                stack_name, attr = SITES[site]
                module = getattr(getattr(model, stack_name), attr)
                state[site_key(site)] = module().detach().contiguous()
        return state
