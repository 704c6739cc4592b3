"""P-tuning (Liu et al., 2021, "GPT Understands, Too"; v1): virtual tokens produced by a trained prompt encoder.

``num_virtual_tokens * num_transformer_submodules`` embeddings (``nn.Embedding``, standard normal at the start) go
through a prompt encoder, and the first ``num_virtual_tokens`` outputs are prepended to the encoder input, with
ones prepended to the attention mask: the soft-prompt extension point ``encoder.input_prefix`` of prompt tuning
(:func:`t5peft.methods.prompt.prepend_prompt`). The decoder input is untouched. Hugging Face PEFT's encoders
(``encoder_reparameterization_type``), with ``h = encoder_hidden_size`` (default ``d_model``):

* ``MLP``: ``Linear(d, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, d)`` (``encoder_num_layers`` is ignored,
  as PEFT ignores it for the MLP);
* ``LSTM``: a bidirectional LSTM of ``encoder_num_layers`` layers (hidden size ``h``, dropout ``encoder_dropout``
  between layers), then ``Linear(2h, 2h) -> ReLU -> Linear(2h, d)``. It runs over all ``num_virtual_tokens *
  num_transformer_submodules`` embeddings, so with 2 submodules the unused second half still shapes the first.
  The LSTM is written out here with ``torch.nn.LSTM``'s parameters, gate order and initialisation (the prompt is
  a short sequence shared by the batch; ``torch.compile`` does not trace ``nn.LSTM`` in one graph).

``num_transformer_submodules`` (PEFT's default for sequence-to-sequence models is 2) only adds embeddings that
PEFT's seq2seq forward never prepends (see :mod:`t5peft.methods.prompt`); t5peft defaults to 1 and reads either.

Trainable parameters (``T = num_virtual_tokens * num_transformer_submodules``, ``d = d_model``):

* MLP: ``T d + (d h + h) + (h h + h) + (h d + d)``; t5-small with the defaults (T = 20, d = h = 512):
  10,240 + 262,656 + 262,656 + 262,656 = 798,208;
* LSTM with ``k = encoder_num_layers``: ``T d + 8h (d + h + 2) + (k - 1) 8h (3h + 2) + (2h 2h + 2h) + (2h d + d)``
  (each direction of layer 1 has ``4h (d + h + 2)``, of later layers ``4h (2h + h + 2)``).

File (Hugging Face PEFT's ``P_TUNING``): one tensor ``prompt_embeddings`` ``[T, d_model]``, the encoder's output
(PEFT saves the encoder applied, never the encoder). Loading such a file gives a plain prompt table: the method
built to load a file (``Method.from_file``) builds prompt tuning's :class:`SoftPrompt` in place of the encoder (PEFT's
inference mode does the same), with identical logits, and trains that table if trained further.

Like a prompt, it is extra input positions, not a change of weights: it cannot be merged. Options and file format:
:mod:`.declarations.ptuning`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .base import Method, MethodConfigError
from .declarations.prompt import PROMPT_MODEL_KEY
from .declarations.ptuning import DECLARATION, PTuningConfig
from .prompt import PROMPT_CANNOT_MERGE, SoftPrompt, fill_model_fields, prepend_prompt

if TYPE_CHECKING:
    from ..model.config import T5Config


class BiLSTM(nn.Module):
    """A bidirectional multi-layer LSTM over one unbatched sequence ``[T, in]`` -> ``[T, 2h]``.

    Parameters are named, shaped, ordered (gates i, f, g, o) and initialised as ``torch.nn.LSTM``'s, so its state
    dict loads into ``nn.LSTM(in, h, num_layers, bidirectional=True)`` and back.
    """

    def __init__(self, input_size: int, hidden: int, num_layers: int, dropout: float, device, dtype) -> None:
        super().__init__()
        self.hidden, self.num_layers = hidden, num_layers
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        bound = 1.0 / math.sqrt(hidden)
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else 2 * hidden
            for suffix in ("", "_reverse"):
                for name, shape in (
                    ("weight_ih", (4 * hidden, fan_in)),
                    ("weight_hh", (4 * hidden, hidden)),
                    ("bias_ih", (4 * hidden,)),
                    ("bias_hh", (4 * hidden,)),
                ):
                    param = nn.Parameter(torch.empty(shape, device=device, dtype=dtype).uniform_(-bound, bound))
                    self.register_parameter(f"{name}_l{layer}{suffix}", param)

    def _direction(self, x: Tensor, layer: int, suffix: str, reverse: bool) -> Tensor:
        w_hh = getattr(self, f"weight_hh_l{layer}{suffix}")
        inputs = torch.nn.functional.linear(
            x, getattr(self, f"weight_ih_l{layer}{suffix}"), getattr(self, f"bias_ih_l{layer}{suffix}")
        )
        bias_hh = getattr(self, f"bias_hh_l{layer}{suffix}")
        h = c = x.new_zeros(self.hidden)
        outputs: list[Tensor] = [x.new_zeros(0)] * x.shape[0]
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        for t in steps:
            i, f, g, o = (inputs[t] + torch.nn.functional.linear(h, w_hh, bias_hh)).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs[t] = h
        return torch.stack(outputs)

    def forward(self, x: Tensor) -> Tensor:
        for layer in range(self.num_layers):
            if layer > 0:
                x = self.dropout(x)
            x = torch.cat([self._direction(x, layer, "", False), self._direction(x, layer, "_reverse", True)], dim=-1)
        return x


class PromptEncoder(nn.Module):
    """Embeddings + P-tuning's encoder; as ``encoder.input_prefix`` it prepends the first ``n`` encoded rows."""

    def __init__(self, config: PTuningConfig, d_model: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_virtual_tokens = config.num_virtual_tokens
        h = config.encoder_hidden_size or d_model
        self.encoder_type = config.encoder_reparameterization_type
        self.embedding = nn.Embedding(config.total_virtual_tokens, d_model, device=device, dtype=dtype)
        if self.encoder_type == "LSTM":
            layers, dropout = config.encoder_num_layers, config.encoder_dropout
            self.lstm_head = BiLSTM(d_model, h, layers, dropout, device, dtype)
        self.mlp_head = _mlp_head(self.encoder_type, d_model, h, device, dtype)

    def encode(self) -> Tensor:
        """All ``num_virtual_tokens * num_transformer_submodules`` encoded prompt vectors ``[T, d_model]``."""
        embeds = self.embedding.weight
        if self.encoder_type == "LSTM":
            embeds = self.lstm_head(embeds)
        return self.mlp_head(embeds)

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        return prepend_prompt(self.encode()[: self.num_virtual_tokens], inputs_embeds, attention_mask)


def _mlp_head(encoder_type: str, d_model: int, h: int, device, dtype) -> nn.Sequential:
    """PEFT's MLP head: three linear layers (after an LSTM: two, from its ``2h`` outputs) with ReLU between."""
    lstm = encoder_type == "LSTM"
    sizes = [(2 * h, 2 * h), (2 * h, d_model)] if lstm else [(d_model, h), (h, h), (h, d_model)]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(sizes):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b, device=device, dtype=dtype))
    return nn.Sequential(*layers)


def encoder_parameters(config: PTuningConfig, d: int) -> int:
    """Parameters of the prompt encoder (MLP or LSTM + MLP) for ``d_model = d``."""
    h = config.encoder_hidden_size or d
    if config.encoder_reparameterization_type == "MLP":
        return (d * h + h) + (h * h + h) + (h * d + d)
    k = config.encoder_num_layers
    lstm = 8 * h * (d + h + 2) + (k - 1) * 8 * h * (3 * h + 2)
    return lstm + (2 * h * 2 * h + 2 * h) + (2 * h * d + d)


class PTuning(Method):
    declaration = DECLARATION
    identity_at_init = False
    cannot_merge = PROMPT_CANNOT_MERGE

    def inject(self, model) -> None:
        if model.encoder.input_prefix is not None:
            raise MethodConfigError("the encoder already has an input prefix")
        config: PTuningConfig = self.config
        fill_model_fields(config, model.config)
        d_model, weight = model.config.d_model, model.shared.weight
        if self.from_file:  # the file holds the encoder's output: a plain table
            prompt: nn.Module = SoftPrompt(
                config.num_virtual_tokens, config.total_virtual_tokens, d_model, weight.device, weight.dtype
            )
        else:
            config.encoder_hidden_size = config.encoder_hidden_size or d_model  # recorded as used
            prompt = PromptEncoder(config, d_model, weight.device, weight.dtype)
        model.encoder.input_prefix = prompt

    def closed_form_trainable(self, config: T5Config) -> int:
        table = self.config.total_virtual_tokens * config.d_model
        return table if self.from_file else table + encoder_parameters(self.config, config.d_model)

    def export_state(self, model, names: list[str]) -> dict[str, Tensor]:
        """The encoded prompt table (PEFT's ``prompt_embeddings``), whichever module produces it."""
        prompt = model.encoder.input_prefix
        was_training = prompt.training
        prompt.eval()  # the table the model uses at inference: no LSTM dropout, so every save writes the same file
        with torch.no_grad():
            table = prompt.prompt_embeddings if isinstance(prompt, SoftPrompt) else prompt.encode()
        prompt.train(was_training)
        return {PROMPT_MODEL_KEY: table.detach().contiguous()}
