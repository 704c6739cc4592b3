"""Bottleneck adapters (implementation: :mod:`t5peft.methods.adapter`); no PEFT equivalent (``T5PEFT_BOTTLENECK``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..declaration import (
    AdapterFormat,
    MethodConfig,
    MethodDeclaration,
    check_choice,
    check_fraction,
    check_int,
    check_non_negative,
)

PLACEMENTS = ("pfeiffer", "houlsby")  # AdapterHub's names of its adapter "configs"
NON_LINEARITIES = ("relu", "gelu", "silu", "tanh")


@dataclass
class AdapterConfig(MethodConfig):
    placement: str = "pfeiffer"
    reduction_factor: int = 16
    non_linearity: str = "relu"
    adapter_dropout: float = 0.0
    init_scale: float = 0.0

    def validate(self) -> None:
        check_choice("placement", self.placement, PLACEMENTS)
        check_int("reduction_factor", self.reduction_factor)
        check_choice("non_linearity", self.non_linearity, NON_LINEARITIES)
        check_fraction("adapter_dropout", self.adapter_dropout)
        check_non_negative("init_scale", self.init_scale)


DECLARATION = MethodDeclaration(
    name="adapter",
    default_lr=1e-3,
    config_class=AdapterConfig,
    file_format=AdapterFormat(peft_type="T5PEFT_BOTTLENECK"),
    implementation="adapter.BottleneckAdapters",
)
