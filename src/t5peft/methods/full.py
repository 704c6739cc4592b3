"""Full fine-tuning: every weight of the model is trained (the baseline of the comparison).

It adds nothing and trains base weights, so what it saves is the whole model (``methods.files.save_trained``
decides that from what an applied method added and trains, not from its name). It adds nothing, so an untrained
one is the base model, and merging it is the identity: its weights are the base weights (the method is detached).

Trainable parameters: the whole T5. With ``inner = num_heads * d_kv``, an attention has ``4 * d_model * inner``
weights (q, k, v, o), an FFN ``2 * d_model * d_ff`` (``3 *`` gated), an RMS norm ``d_model``; an encoder layer is one
attention, one FFN and two norms, a decoder layer two attentions, one FFN and three norms; plus the embedding
``vocab_size * d_model`` (twice when the LM head is untied), one relative position bias ``buckets * num_heads`` per
stack and one final norm per stack. t5-small: 16,449,536 + 6 * 3,146,752 + 6 * 4,195,840 + 512 + 1,024 = 60,506,624.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, detach_method
from .declarations.full import DECLARATION

if TYPE_CHECKING:
    from ..model.config import T5Config


def t5_parameters(config: T5Config) -> int:
    """The number of parameters of a T5 of ``config`` (tied embeddings counted once)."""
    d = config.d_model
    attention = 4 * d * config.inner_dim
    ffn = (3 if config.is_gated_act else 2) * d * config.d_ff
    encoder_layer = attention + ffn + 2 * d
    decoder_layer = 2 * attention + ffn + 3 * d
    embeddings = config.vocab_size * d * (1 if config.tie_word_embeddings else 2)
    per_stack = config.relative_attention_num_buckets * config.num_heads + d  # position bias, final norm
    return embeddings + config.num_layers * encoder_layer + config.num_decoder_layers * decoder_layer + 2 * per_stack


class FullFineTuning(Method):
    declaration = DECLARATION
    identity_at_init = True
    cannot_merge = None

    def inject(self, model) -> None:
        pass

    def trainable_names(self, model, added):
        return [name for name, _ in model.named_parameters()]

    def closed_form_trainable(self, config: T5Config) -> int:
        return t5_parameters(config)

    def merge(self, model):
        """Nothing to fold: the trained weights are the model's own (a plain T5 once the method is detached)."""
        return detach_method(model)
