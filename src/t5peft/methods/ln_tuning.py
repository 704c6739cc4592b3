"""LayerNorm tuning: train the scales of T5's RMS norms and nothing else (Hugging Face PEFT's ``LN_TUNING``).

T5's linear layers have no biases, so this is the BitFit-like baseline for T5: the only per-feature offsets a
T5 has are the norm scales. As in PEFT, each targeted norm is wrapped: its original weight stays frozen under
its original key (``...layer_norm.weight``), and a trainable copy of the whole norm layer, ``ln_tuning_layers``,
computes the output in its place. The copies are what the method adds, so what it saves is an adapter (the
base model stays untouched), and an untrained adapter leaves the model exactly unchanged.

Targets (``target_modules``, PEFT's names and matching by the last name component): ``layer_norm`` (the pre-norm
of every sub-layer: 2 per encoder block, 3 per decoder block) and ``final_layer_norm`` (one per stack); only
scale-only norm layers (a single 1-D ``weight``) can be targets.

Trainable parameters: ``d_model`` per targeted norm; with both targets ``(2 L_enc + 3 L_dec + 2) * d_model``,
for t5-small (6 + 6 layers, d_model 512): 32 * 512 = 16,384.

File format: Hugging Face PEFT's ``LN_TUNING``: ``base_model.model.<norm path>.ln_tuning_layers.weight`` per
target. :meth:`LnTuning.merge` puts the trained copies in place of the norms and returns a plain T5. Options and file
format: :mod:`.declarations.ln_tuning`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from torch import Tensor, nn

from .base import Method, MethodConfigError, detach_method, replace_module
from .declarations.ln_tuning import DECLARATION

if TYPE_CHECKING:
    from ..model.config import T5Config


class LnTuningNorm(nn.Module):
    """A norm layer whose output comes from a trainable copy; the original weight stays (frozen) as ``weight``."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.weight = base.weight
        self.ln_tuning_layers = copy.deepcopy(base)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.ln_tuning_layers(hidden_states)


def is_scale_only_norm(module: nn.Module) -> bool:
    """A leaf layer whose only parameter is a 1-D ``weight`` (T5's RMS norm)."""
    params = list(module.named_parameters(recurse=False))
    return not list(module.children()) and len(params) == 1 and params[0][0] == "weight" and params[0][1].dim() == 1


def find_norm_targets(model: nn.Module, targets: list[str]) -> list[str]:
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            if not is_scale_only_norm(module):
                raise MethodConfigError(f"ln_tuning targets norm layers only; {name} is a {type(module).__name__}")
            found.append(name)
    missing = sorted(set(targets) - {n.rsplit(".", 1)[-1] for n in found})
    if missing:
        raise MethodConfigError(f"target_modules {missing} match no norm layer of this model")
    return found


def norm_counts(config: T5Config) -> dict[str, int]:
    """How many norm layers of each name a T5 has."""
    return {"layer_norm": 2 * config.num_layers + 3 * config.num_decoder_layers, "final_layer_norm": 2}


class LnTuning(Method):
    declaration = DECLARATION
    identity_at_init = True
    cannot_merge = None

    def inject(self, model) -> None:
        for name in find_norm_targets(model, self.config.target_modules):
            replace_module(model, name, LnTuningNorm(model.get_submodule(name)))

    def closed_form_trainable(self, config: T5Config) -> int:
        """``d_model`` per targeted norm."""
        counts = norm_counts(config)
        return sum(counts[target] for target in self.config.target_modules) * config.d_model

    def merge(self, model):
        """Put every trained norm copy in place of its norm and detach the method: a plain T5."""
        for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, LnTuningNorm)]:
            replace_module(model, name, module.ln_tuning_layers)
        return detach_method(model)
