"""DoRA (Liu et al., 2024): LoRA whose updated weight is split into a learned magnitude and a direction.

For a target ``y = W x`` with LoRA factors ``A [r, in]``, ``B [out, r]`` and scaling ``s`` (``alpha / r``, or
``alpha / sqrt(r)`` with ``use_rslora``), the adapted weight is ``W' = m / ||W + s B A|| * (W + s B A)``: the norm
is taken per output feature (each row of the ``[out, in]`` weight, PEFT's ``torch.linalg.norm(..., dim=1)``;
the paper's "column-wise" on its ``[in, out]`` layout), and ``m [out]`` is a trained magnitude. As in the paper
(section 4.3) and PEFT, the norm is treated as a constant: it is recomputed from the current ``B A`` at every
forward but carries no gradient. With LoRA dropout ``d`` the output is PEFT's
``W x + (m / n - 1) W d(x) + (m / n) s B A d(x)``, which is ``(m / n)(W x + s B A x)`` without dropout.

``m`` starts at ``||W||`` (``B`` is zero), so ``m / n`` is exactly one and an untrained adapter leaves the model
unchanged. ``A`` is Kaiming-uniform and ``B`` zero, as for LoRA.

Trainable parameters: LoRA's ``r * (in + out)`` plus ``out`` per target; for t5-small with the defaults (q and
v of all 18 attentions, inner = d_model = 512, r = 8): ``36 * (8 * 1024 + 512)`` = 313,344.

File format: Hugging Face PEFT's ``LORA`` with ``use_dora: true``; per target the LoRA keys plus
``base_model.model.<module path>.lora_magnitude_vector`` ``[out]``. A LORA folder with ``use_dora: true`` is
read as DoRA (its format's ``claims``), never as plain LoRA.

:meth:`DoraLinear.merge` folds the update into the weight, ``W <- (m / n) (W + s B A)`` with ``n`` from the
unmerged weight (kept for :meth:`DoraLinear.unmerge`, which inverts it); :meth:`Dora.merge` returns a plain T5.
Options and file format: :mod:`.declarations.dora`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..model.storage import dense, linear
from .base import Method, linear_targets, merge_wrapped_linears
from .declarations.dora import DECLARATION
from .lora import LoraLinear, inject_lora

if TYPE_CHECKING:
    from ..model.config import T5Config


class DoraLinear(LoraLinear):
    """A LoRA layer with DoRA's magnitude vector ``lora_magnitude_vector`` ``[out]``."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, use_rslora: bool) -> None:
        super().__init__(base, r, alpha, dropout, use_rslora)
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm().detach().clone())
        self.merged_norm: Tensor | None = None  # the norm used by merge(), for unmerge()

    def weight_norm(self) -> Tensor:
        """``||W + s B A||`` per output feature (row of the weight), without gradient."""
        with torch.no_grad():
            return torch.linalg.norm(dense(self.weight, self.lora_A.weight.dtype) + self.delta_weight(), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        out = linear(x, self.weight)
        if self.merged:
            return out
        scale = (self.lora_magnitude_vector / self.weight_norm()).to(out.dtype)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            dropped, base = x, out
        else:
            dropped = self.lora_dropout(x)
            base = linear(dropped, self.weight)
        update = self.lora_B(self.lora_A(dropped)) * self.scaling
        return out + (scale - 1) * base + scale * update

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            norm = self.weight_norm()
            factor = (self.lora_magnitude_vector / norm)[:, None]
            self.weight.copy_((factor * (self.weight + self.delta_weight())).to(self.weight.dtype))
            self.merged_norm = norm
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged and self.merged_norm is not None:
            factor = (self.lora_magnitude_vector / self.merged_norm)[:, None]
            self.weight.copy_((self.weight / factor - self.delta_weight()).to(self.weight.dtype))
            self.merged_norm = None
            self.merged = False


class Dora(Method):
    declaration = DECLARATION
    identity_at_init = True
    cannot_merge = None

    def inject(self, model) -> None:
        inject_lora(model, self.config, DoraLinear)

    def closed_form_trainable(self, config: T5Config) -> int:
        """``sum over targets of r * (in + out) + out``."""
        r = self.config.r
        targets = linear_targets(config, self.config.target_modules)
        return sum(n * (r * (fan_in + fan_out) + fan_out) for n, fan_in, fan_out in targets.values())

    def merge(self, model):
        """Fold every DoRA update into its base weight and restore plain ``nn.Linear`` layers (a plain T5)."""
        return merge_wrapped_linears(model, DoraLinear)
