"""How a run stores its frozen base: the one function the training loop calls (:func:`store_base`), its checks,
and what results record about it. The storage itself (bf16, NF4, int8 through torchao) is
:mod:`t5peft.model.storage`; the settings' choices and their torch-free checks are in :mod:`.settings`
(``check_storage``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import T5PeftError
from ..model.storage import StorageError, base_bytes, store_frozen

QUANTIZE_DEVICES = ("cpu", "cuda")  # where torchao's NF4Tensor and Int8Tensor dequantize


def store_base(
    model: torch.nn.Module, base_dtype: str, quantize: str, device: torch.device, error: type[T5PeftError]
) -> dict[str, Any]:
    """Store the frozen base of ``model`` (method applied, on ``device``) as asked; returns the record results keep.

    ``fp32`` + ``none`` changes nothing (the record still counts the base's bytes)."""
    peft = getattr(model, "peft", None)
    trains_base = peft is not None and peft.trains_base
    if trains_base and (base_dtype != "fp32" or quantize != "none"):
        raise error(f"method {peft.name!r} trains base weights: the base must stay float32 (--base-dtype fp32)")
    if quantize != "none" and device.type not in QUANTIZE_DEVICES:
        where = "/".join(QUANTIZE_DEVICES)
        raise error(f"--quantize {quantize}: torchao's quantized weights run on {where}, not on {device}")
    try:
        counts = store_frozen(model, base_dtype, quantize)
    except StorageError as err:
        raise error(str(err)) from None
    return {
        "base_dtype": base_dtype,
        "quantize": quantize,
        "quantized_weights": counts["quantized"],
        "bf16_weights": counts["cast"] if base_dtype == "bf16" else 0,
        "frozen_bytes": base_bytes(model),
    }
