"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021): small residual MLPs inside every block.

An adapter maps a sub-layer's output ``y`` (after the sub-layer's dropout, before T5's residual add) to
``y + up(dropout(act(down(y))))``, with ``down: d_model -> b`` and ``up: b -> d_model`` both linear with bias and
``b = d_model // reduction_factor``. It is attached through the ``.adapter`` extension points of
``T5LayerSelfAttention`` / ``T5LayerCrossAttention`` / ``T5LayerFF``.

Options (``placement`` is what AdapterHub calls the adapter "config"):

* ``placement="pfeiffer"`` (default): one adapter after the FFN sub-layer of every encoder and decoder block;
* ``placement="houlsby"``: also one after self-attention, and in the decoder one after cross-attention;
* ``reduction_factor`` (16), ``non_linearity`` (``relu`` | ``gelu`` | ``silu`` | ``tanh``), ``adapter_dropout`` (0.0);
* ``init_scale`` (0.0): the up-projection weight starts as ``N(0, init_scale^2)``; its bias starts at zero. The
  default 0 makes an untrained adapter exactly the identity, so the model starts exactly as the base model
  (Houlsby's "near-identity" init uses a small positive scale instead). The down-projection weight gets
  ``nn.Linear``'s default (Kaiming-uniform) init and its bias zero, so the bottleneck is active from step one.

Parameter count: one adapter has ``2 * d_model * b + b + d_model`` parameters, and there are
``L_enc + L_dec`` adapters (pfeiffer) or ``2 * L_enc + 3 * L_dec`` (houlsby). For t5-small (``d_model=512``,
``b=32``, 6 + 6 layers) one adapter is 33,312 parameters: pfeiffer 12 adapters = 399,744, houlsby 30 adapters =
999,360.

File format: no Hugging Face PEFT equivalent; the same two-file layout with ``peft_type`` ``T5PEFT_BOTTLENECK``,
keys ``base_model.model.<sub-layer path>.adapter.{down,up}.{weight,bias}``, e.g.
``base_model.model.encoder.block.0.layer.1.adapter.down.weight`` ``[b, d_model]``. Options and file format:
:mod:`.declarations.adapter`. An adapter is a non-linear module between the layers: it cannot be merged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..model.t5 import T5LayerCrossAttention, T5LayerFF, T5LayerSelfAttention
from .base import Method, MethodConfigError
from .declarations import adapter as declared
from .declarations.adapter import DECLARATION, AdapterConfig

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration

PLACEMENTS = {
    "pfeiffer": (T5LayerFF,),
    "houlsby": (T5LayerSelfAttention, T5LayerCrossAttention, T5LayerFF),
}
NON_LINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
if tuple(PLACEMENTS) != declared.PLACEMENTS or tuple(NON_LINEARITIES) != declared.NON_LINEARITIES:
    raise RuntimeError("adapter: the declared choices and the implemented ones differ")  # a programming error


class BottleneckAdapter(nn.Module):
    """``y + up(dropout(act(down(y))))``."""

    def __init__(
        self,
        d_model: int,
        bottleneck: int,
        non_linearity: str,
        dropout: float,
        init_scale: float,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck, device=device, dtype=dtype)
        self.act = NON_LINEARITIES[non_linearity]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(bottleneck, d_model, device=device, dtype=dtype)
        self.reset_parameters(init_scale)

    @torch.no_grad()
    def reset_parameters(self, init_scale: float) -> None:
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)
        if init_scale > 0:
            nn.init.normal_(self.up.weight, std=init_scale)
        else:
            nn.init.zeros_(self.up.weight)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return hidden_states + self.up(self.dropout(self.act(self.down(hidden_states))))


def adapter_sites(model: nn.Module, placement: str) -> list[nn.Module]:
    """The sub-layers that receive an adapter, in module order."""
    kinds = PLACEMENTS[placement]
    return [m for m in model.modules() if isinstance(m, kinds)]


def inject_adapters(model: T5ForConditionalGeneration, config: AdapterConfig) -> None:
    d_model = model.config.d_model
    bottleneck = d_model // config.reduction_factor
    if bottleneck < 1:
        raise MethodConfigError(f"reduction_factor {config.reduction_factor} leaves no bottleneck at d_model={d_model}")
    reference = model.shared.weight
    for site in adapter_sites(model, config.placement):
        if site.adapter is not None:
            raise MethodConfigError(f"{type(site).__name__} already has an adapter")
        site.adapter = BottleneckAdapter(
            d_model,
            bottleneck,
            config.non_linearity,
            config.adapter_dropout,
            config.init_scale,
            device=reference.device,
            dtype=reference.dtype,
        )


class BottleneckAdapters(Method):
    declaration = DECLARATION
    identity_at_init = True  # with the default init_scale 0: the up-projection starts at zero
    cannot_merge = "a bottleneck adapter is a non-linear module between the layers, not a change of their weights"

    def inject(self, model) -> None:
        inject_adapters(model, self.config)

    def closed_form_trainable(self, config: T5Config) -> int:
        d, b = config.d_model, config.d_model // self.config.reduction_factor
        per_adapter = 2 * d * b + b + d
        if self.config.placement == "houlsby":
            return per_adapter * (2 * config.num_layers + 3 * config.num_decoder_layers)
        return per_adapter * (config.num_layers + config.num_decoder_layers)
