"""Prompt tuning (Lester et al., 2021): ``n`` trainable vectors prepended to the encoder input embeddings.

The vectors sit in a :class:`SoftPrompt` set as ``model.encoder.input_prefix``; it prepends them to the
token embeddings and extends the attention mask with ones (a mask of ones is created when none is given),
and ``T5ForConditionalGeneration.encode`` hands the extended mask on to the decoder's cross-attention.
The decoder input is untouched. A prompt is never neutral: even an untrained one changes the logits.

Trainable parameters: ``num_virtual_tokens * num_transformer_submodules * d_model``; for t5-small with the
defaults (20 tokens, 1 submodule) 20 * 512 = 10,240.

File (Hugging Face PEFT's ``PROMPT_TUNING`` layout): one tensor ``prompt_embeddings``
``[num_virtual_tokens * num_transformer_submodules, d_model]``, with no ``base_model.model.`` prefix.
PEFT defaults ``num_transformer_submodules`` to 2 for sequence-to-sequence models and then stores 2n rows,
but its seq2seq forward prepends only the first n to the encoder input and never puts prompt vectors in
the decoder input; the other n rows are trained by nothing and used by nothing. t5peft writes 1 (no unused
rows) and reads either: with 2 it keeps all 2n rows (so counts and files match PEFT's) and uses the first n,
exactly as PEFT does. ``token_dim``, ``num_attention_heads`` and ``num_layers`` are filled in from the model
and written to the file as PEFT does; a file whose values differ from the model's is refused.

Initialisation (``prompt_tuning_init``):

* ``SAMPLE_VOCAB`` (default): copies of embedding rows of random token ids in ``[0, min(vocab, 32000))``,
  i.e. real sentencepiece pieces; T5's ids 32000..32099 are sentinel tokens and the rows above 32099 are
  padding never seen in pre-training. (PEFT samples the whole embedding matrix.)
* ``TEXT``: the embeddings of the ids of ``prompt_tuning_init_text`` tokenized with the tokenizer at
  ``tokenizer_name_or_path`` (``</s>`` included, as PEFT's tokenizer call does), or of
  ``prompt_tuning_init_ids`` when given (which then take precedence); like PEFT, the ids are repeated and
  cut to exactly ``num_virtual_tokens * num_transformer_submodules`` rows.
* ``RANDOM``: standard normal entries, like a fresh ``nn.Embedding`` (PEFT's default). Pre-trained T5
  embeddings are far from unit scale, so such prompts start off the embedding manifold.

``SAMPLE_VOCAB`` and ``RANDOM`` draw from torch's global random generator (set the seed to reproduce a
run); ``TEXT`` does not depend on the seed at all. A prompt built to load a file (``Method.from_file``) is not
initialised (its table comes from the file), so a ``TEXT`` prompt loads without its tokenizer.

The optimizer group of the prompt has weight decay 0: with a learning rate of 0.3, AdamW's decoupled decay
would shrink the prompt by ``lr * weight_decay`` of its size at every step.

A prompt is extra input positions, not a change of weights: it cannot be merged. Options and file format:
:mod:`.declarations.prompt`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .base import Method, MethodConfigError
from .declarations.prompt import DECLARATION, PromptTuningConfig

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration

SAMPLE_VOCAB_LIMIT = 32000  # sentencepiece pieces of T5's vocabulary; sentinels and padding rows follow
# why a soft prompt (and a prompt encoder's output) cannot be folded into weights
PROMPT_CANNOT_MERGE = "a soft prompt is extra input positions, not a change of weights"


def prepend_prompt(prompt: Tensor, inputs_embeds: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Prepend ``prompt`` ``[n, d]`` to every row of ``inputs_embeds`` and ``n`` ones to the attention mask (a mask
    of ones is made when none is given): the ``encoder.input_prefix`` contract."""
    batch, length = inputs_embeds.shape[:2]
    n = prompt.shape[0]
    prompt = prompt.to(inputs_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
    ones = attention_mask.new_ones(batch, n)
    return torch.cat([prompt, inputs_embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


class SoftPrompt(nn.Module):
    """Prepends the first ``num_virtual_tokens`` rows of ``prompt_embeddings`` to the encoder input."""

    def __init__(self, num_virtual_tokens: int, rows: int, d_model: int, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        self.prompt_embeddings = nn.Parameter(torch.zeros(rows, d_model, device=device, dtype=dtype))

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        return prepend_prompt(self.prompt_embeddings[: self.num_virtual_tokens], inputs_embeds, attention_mask)

    def extra_repr(self) -> str:
        rows, d_model = self.prompt_embeddings.shape
        return f"num_virtual_tokens={self.num_virtual_tokens}, rows={rows}, d_model={d_model}"


def fill_model_fields(config: Any, model_config: T5Config) -> None:
    """Record the model's dimensions in a prompt-learning config (its ``token_dim``, ``num_attention_heads`` and
    ``num_layers``, as PEFT records them), refusing values that belong to another model."""
    actual = {"token_dim": model_config.d_model, "num_attention_heads": model_config.num_heads}
    actual["num_layers"] = model_config.num_layers
    for name, value in actual.items():
        given = getattr(config, name)
        if given is not None and given != value:
            raise MethodConfigError(f"prompt {name}={given} does not match the model's {value}")
        setattr(config, name, value)


def _text_ids(config: PromptTuningConfig) -> list[int]:
    if config.prompt_tuning_init_ids is not None:
        return list(config.prompt_tuning_init_ids)
    from ..tokenizer import load_tokenizer

    return load_tokenizer(config.tokenizer_name_or_path).encode(config.prompt_tuning_init_text)[0]


def repeat_to_length(ids: list[int], length: int) -> list[int]:
    """Repeat ``ids`` as often as needed and cut to ``length`` (PEFT's TEXT initialisation)."""
    return (ids * math.ceil(length / len(ids)))[:length]


def init_ids(config: PromptTuningConfig, vocab_size: int) -> Tensor:
    """Token ids whose embeddings initialise the prompt (``SAMPLE_VOCAB`` / ``TEXT``)."""
    rows = config.total_virtual_tokens
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        return torch.randint(0, min(vocab_size, SAMPLE_VOCAB_LIMIT), (rows,))
    ids = repeat_to_length(_text_ids(config), rows)
    bad = sorted({i for i in ids if i >= vocab_size})
    if bad:
        raise MethodConfigError(f"prompt init token ids {bad} are outside the vocabulary (size {vocab_size})")
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def initialise_prompt(prompt: SoftPrompt, embedding: nn.Embedding, config: PromptTuningConfig) -> None:
    weight = prompt.prompt_embeddings
    if config.prompt_tuning_init == "RANDOM":
        nn.init.normal_(weight)
        return
    ids = init_ids(config, embedding.num_embeddings).to(embedding.weight.device)
    weight.copy_(embedding.weight[ids].to(weight.dtype))


def inject_prompt(model: T5ForConditionalGeneration, config: PromptTuningConfig, initialise: bool = True) -> SoftPrompt:
    """Set a soft prompt as ``model.encoder.input_prefix``, initialised unless its table is to be loaded."""
    if model.encoder.input_prefix is not None:
        raise MethodConfigError("the encoder already has an input prefix")
    fill_model_fields(config, model.config)
    weight = model.shared.weight
    prompt = SoftPrompt(
        config.num_virtual_tokens, config.total_virtual_tokens, model.config.d_model, weight.device, weight.dtype
    )
    if initialise:
        initialise_prompt(prompt, model.shared, config)
    model.encoder.input_prefix = prompt
    return prompt


def prompt_trainable(config: PromptTuningConfig, model_config: T5Config) -> int:
    """``num_virtual_tokens * num_transformer_submodules * d_model``."""
    return config.total_virtual_tokens * model_config.d_model


class PromptTuning(Method):
    declaration = DECLARATION
    identity_at_init = False
    cannot_merge = PROMPT_CANNOT_MERGE

    def inject(self, model) -> None:
        inject_prompt(model, self.config, initialise=not self.from_file)

    def closed_form_trainable(self, config: T5Config) -> int:
        return prompt_trainable(self.config, config)

    def param_groups(self, model, lr: float, weight_decay: float) -> list[dict]:
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": 0.0}]
