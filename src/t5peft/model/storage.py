"""How the frozen weights of a T5 are stored: in float32 (the default), in bf16, or quantized (NF4 or int8 through
torchao), and the two functions every layer computes with whatever the storage (:func:`linear`, :func:`dense`).

One home for "how the frozen base is stored" (issues 17 item 3 and 21): the model and the methods never ask whether
a weight is quantized; they call :func:`linear` (``F.linear`` that dequantizes a stored weight on the fly) or
:func:`dense` (the weight as a plain tensor, for a method that needs the matrix itself, DoRA's norm). The engine
calls :func:`store_frozen` once, after the method is applied and the model is on its device
(``engine.precision.store_base``).

What is stored how (``store_frozen``):

* ``base_dtype="bf16"``: every frozen ``nn.Linear`` weight (a method's wrapped layers included) and the token
  embedding table ``shared`` are kept in bf16; layer norms and the relative position bias (a few thousand numbers)
  stay float32, and so does everything a method trains (and AdamW's state, which follows the trained parameters).
  Computation stays in float32 on the CPU: a stored weight is upcast per call, and the backward pass keeps the bf16
  weight, not an upcast copy (:class:`_StoredLinear`). Under CUDA autocast the bf16 weight goes to the matmul as is.
* ``quantize="nf4"``: the frozen weights of attention ``q, k, v, o`` and the feed-forward input ``wi`` (``wi_0``,
  ``wi_1``) become torchao ``NF4Tensor`` (4-bit NormalFloat, blocks of 64 weights, the block scales themselves
  quantized to int8 in groups of 256: QLoRA's double quantization). ``quantize="int8"``: torchao ``Int8Tensor``
  (symmetric, one float scale per output row). ``wo``, the embeddings and ``lm_head`` stay unquantized, as in
  transformers (``_keep_in_fp32_modules = ["wo"]``) and PEFT's 4-bit T5 tests; ``store_frozen(...,
  quantize_wo=True)`` quantizes ``wo`` too (Python API only). The quantized weights are dequantized per call, to
  the input's dtype (or autocast's), in the forward and again in the backward.

A quantized base is never written: checkpoints hold only the trained tensors, and resuming re-creates the quantized
base from the full-precision weights it was made from, cast to the base dtype first and quantized the same way
(bit-identical on the same machine and thread count).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QUANTIZE_SCHEMES = ("none", "nf4", "int8")
QUANTIZED_LEAVES = ("q", "k", "v", "o", "wi", "wi_0", "wi_1")  # transformers keeps ``wo`` out (and in float32)
LOW_PRECISION_LEAVES = (*QUANTIZED_LEAVES, "wo", "lm_head", "shared")  # what a bf16 base stores in bf16
NF4_BLOCK = 64  # weights per NF4 scale (QLoRA's and torchao's default)
NF4_SCALER_BLOCK = 256  # NF4 scales per int8-quantized group (double quantization)


class StorageError(ValueError):
    """A base that cannot be stored as asked (a weight NF4 cannot block, an unknown scheme)."""


# --------------------------------------------------------------------------------------------------
# Computing with a stored weight


# torchao's tensor types, filled in when torchao is first imported (by :func:`quantize_weight`); plain globals, so
# that a compiled forward reads them without importing anything
_NF4_TYPES: tuple[type, ...] = ()
_INT8_TYPES: tuple[type, ...] = ()


def _torchao() -> Any:
    """torchao's quantization API. Its import warns about CUDA kernels it cannot load (mxfp8, cutlass) and torch about
    an enum it registers: t5peft uses neither, so those two loggers are quieted while it loads."""
    global _NF4_TYPES, _INT8_TYPES
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        import torchao.quantization as quantization
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)

    _NF4_TYPES, _INT8_TYPES = (quantization.NF4Tensor,), (quantization.Int8Tensor,)
    return quantization


def is_quantized(weight: Tensor) -> bool:
    return isinstance(weight, _NF4_TYPES + _INT8_TYPES)


def dense(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight`` as a plain tensor of ``dtype`` (dequantized if it is stored quantized)."""
    if isinstance(weight, _INT8_TYPES):  # Int8Tensor.to(dtype) would stay an Int8Tensor
        return weight.dequantize().to(dtype)
    return weight.to(dtype)  # NF4Tensor.to(dtype) dequantizes; a plain tensor of that dtype is returned as is


def compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _StoredLinear(torch.autograd.Function):
    """``F.linear(x, W)`` for a frozen ``W`` stored in another form: dequantized for the forward and again for the
    backward, so autograd keeps the stored weight, not a full-precision copy (as torchao's ``LinearNF4``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.weight, ctx.x_dtype = weight, x.dtype
        return F.linear(x, dense(weight, compute_dtype(x)))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return (grad @ dense(ctx.weight, grad.dtype)).to(ctx.x_dtype), None


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x, weight)`` whatever ``weight``'s storage: a weight of ``x``'s dtype (or any plain weight under
    autocast) goes to ``F.linear`` unchanged; a quantized one, or a bf16 one under float32 computation, is
    dequantized on the fly (it must be frozen)."""
    if not is_quantized(weight) and (weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type)):
        return F.linear(x, weight)
    if weight.requires_grad:  # _StoredLinear gives the weight no gradient: never for one that is trained
        raise RuntimeError(f"a trained {weight.dtype} weight met a {x.dtype} input (only frozen weights are stored)")
    return _StoredLinear.apply(x, weight)


class Linear(nn.Linear):
    """``nn.Linear`` (bias-free in T5) that computes through :func:`linear`; same parameters, same state dict."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight) if self.bias is None else linear(x, self.weight) + self.bias


class Embedding(nn.Embedding):
    """``nn.Embedding`` whose table may be stored in bf16 while the model computes in float32: the rows looked up
    are returned in ``compute_dtype`` (set by :func:`store_frozen`; None: the table's own dtype)."""

    compute_dtype: torch.dtype | None = None

    def forward(self, ids: Tensor) -> Tensor:
        out = super().forward(ids)
        return out if self.compute_dtype is None else out.to(self.compute_dtype)


# --------------------------------------------------------------------------------------------------
# Storing the frozen base


def _frozen_weights(model: nn.Module) -> Iterator[tuple[str, str, nn.Parameter]]:
    """``(name, leaf, parameter)`` of every frozen ``weight`` parameter whose module's leaf name is a T5 layer's."""
    for name, param in model.named_parameters():  # a tied weight (lm_head = shared) is listed once
        module_name, _, attr = name.rpartition(".")
        leaf = module_name.rpartition(".")[2]
        if attr == "weight" and leaf in LOW_PRECISION_LEAVES and not param.requires_grad:
            yield name, leaf, param


def _replace(model: nn.Module, replaced: dict[int, nn.Parameter]) -> None:
    """Put every new parameter wherever the old one is held (tied weights, a method's wrapper and its base)."""
    for module in model.modules():
        for key, param in module._parameters.items():
            if param is not None and id(param) in replaced:
                module._parameters[key] = replaced[id(param)]


def quantize_weight(weight: Tensor, scheme: str, name: str = "weight") -> Tensor:
    """``weight`` quantized with torchao (``nf4`` or ``int8``); a :class:`StorageError` names a weight NF4 cannot
    block. Quantize what the base dtype holds (cast first), so that re-creating the base gives the same bits."""
    if scheme not in QUANTIZE_SCHEMES[1:]:
        raise StorageError(f"quantize must be one of {', '.join(QUANTIZE_SCHEMES[1:])}, got {scheme!r}")
    try:
        quantization = _torchao()
    except ImportError as err:
        raise StorageError(f"--quantize {scheme} needs torchao: pip install 't5peft[quant]' ({err})") from None
    if scheme == "nf4":
        group = NF4_BLOCK * NF4_SCALER_BLOCK
        if weight.numel() % group:
            raise StorageError(
                f"--quantize nf4: {name} has {weight.numel()} weights, not a multiple of {group} "
                f"(NF4 blocks of {NF4_BLOCK} weights, their scales quantized in groups of {NF4_SCALER_BLOCK})"
            )
        return quantization.to_nf4(weight.detach(), NF4_BLOCK, NF4_SCALER_BLOCK)
    return quantization.Int8Tensor.from_hp(weight.detach(), granularity=quantization.PerRow())


def _check_choices(base_dtype: str, quantize: str) -> None:
    if base_dtype not in BASE_DTYPES:
        raise StorageError(f"base_dtype must be one of {', '.join(BASE_DTYPES)}, got {base_dtype!r}")
    if quantize not in QUANTIZE_SCHEMES:
        raise StorageError(f"quantize must be one of {', '.join(QUANTIZE_SCHEMES)}, got {quantize!r}")


def _plan(
    model: nn.Module, base_dtype: str, quantize: str, quantize_wo: bool
) -> Iterator[tuple[str, str, nn.Parameter, str]]:
    """``(name, leaf, parameter, what)`` for every frozen T5 weight: ``what`` is "quantize", "cast" or "keep"; the one
    rule both :func:`store_frozen` and :func:`planned_bytes` follow."""
    _check_choices(base_dtype, quantize)
    leaves = set(QUANTIZED_LEAVES) | ({"wo"} if quantize_wo else set())
    for name, leaf, param in list(_frozen_weights(model)):
        if quantize != "none" and leaf in leaves:
            yield name, leaf, param, "quantize"
        elif param.dtype != BASE_DTYPES[base_dtype]:
            yield name, leaf, param, "cast"
        else:
            yield name, leaf, param, "keep"


@torch.no_grad()
def store_frozen(
    model: nn.Module, base_dtype: str = "fp32", quantize: str = "none", *, quantize_wo: bool = False
) -> dict[str, int]:
    """Store ``model``'s frozen base as asked (module docstring), in place; returns how many weights went where.

    Call it once the method is applied (so that its trained parameters are known and stay float32) and the model is
    on its device. ``fp32`` + ``none`` leaves the model untouched."""
    dtype = BASE_DTYPES.get(base_dtype)
    counts = {"quantized": 0, "cast": 0}
    quantized_leaves: set[str] = set()
    replaced: dict[int, nn.Parameter] = {}
    for name, leaf, param, what in _plan(model, base_dtype, quantize, quantize_wo):
        if what == "keep":
            continue
        stored = param.to(dtype)  # quantize what the base dtype holds: the same bits when the base is re-created
        if what == "quantize":
            stored = quantize_weight(stored, quantize, name)
            quantized_leaves.add(leaf)
        counts["quantized" if what == "quantize" else "cast"] += param.numel()
        replaced[id(param)] = nn.Parameter(stored, requires_grad=False)
    _replace(model, replaced)
    if base_dtype != "fp32" or quantize != "none":
        model.base_storage = storage_record(base_dtype, quantize, sorted(quantized_leaves))
    if dtype != torch.float32:
        for module in model.modules():
            if isinstance(module, Embedding) and module.weight.dtype == dtype:
                module.compute_dtype = torch.float32
    return counts


def quantized_bytes(shape: torch.Size, scheme: str, dtype: torch.dtype) -> int:
    """Bytes torchao stores for a weight of ``shape`` quantized from ``dtype`` (checked against the tensors it makes:
    tests/test_quantized_base.py). NF4: 4 bits per weight, an int8 scale per block of 64, a ``dtype`` factor per
    group of 256 blocks, the scales' mean and the 16 code values; int8: a byte per weight, a float32 scale and an
    int8 zero point per row."""
    n, size = shape.numel(), torch.empty((), dtype=dtype).element_size()
    if scheme == "nf4":
        return n // 2 + n // NF4_BLOCK + size * (n // (NF4_BLOCK * NF4_SCALER_BLOCK)) + size + 16 * size
    return n + shape[0] * (4 + 1)  # torchao keeps int8 scales in float32 whatever the weight's dtype


def planned_bytes(
    model: nn.Module, base_dtype: str = "fp32", quantize: str = "none", *, quantize_wo: bool = False
) -> int:
    """Bytes the frozen base of ``model`` takes once stored so (:func:`store_frozen`), counted from shapes alone:
    ``model`` may live on the meta device (a t5-11b costs nothing to count). Trained parameters count as float32."""
    dtype = BASE_DTYPES.get(base_dtype)
    total = 0
    for _, _, param, what in _plan(model, base_dtype, quantize, quantize_wo):
        if what == "quantize":
            total += quantized_bytes(param.shape, quantize, dtype)
        elif what == "cast":
            total += param.numel() * torch.empty((), dtype=dtype).element_size()
        else:
            total += param.numel() * param.element_size()
    seen = {id(p) for _, _, p, _ in _plan(model, base_dtype, quantize, quantize_wo)}
    rest = [p for p in model.parameters() if id(p) not in seen and not p.requires_grad]
    return total + sum(p.numel() * p.element_size() for p in rest)


NF4_DEQUANTIZE_COPIES = 4  # float32-sized tensors torchao's NF4 dequantization holds at once (measured: about 3.6)


def dense_copy_bytes(model: nn.Module, base_dtype: str = "fp32", quantize: str = "none") -> dict[str, int]:
    """For every frozen weight that :func:`linear` computes with from another form (quantized, or bf16 under
    float32), the bytes its dense float32 copy takes while it computes (NF4: its dequantization's intermediates
    too), by parameter name; counted from shapes alone, as :func:`planned_bytes`."""
    copies = {"quantize": NF4_DEQUANTIZE_COPIES if quantize == "nf4" else 1, "cast": 1}
    return {
        name: copies[what] * param.numel() * 4
        for name, _, param, what in _plan(model, base_dtype, quantize, False)
        if what != "keep"
    }


def storage_record(base_dtype: str, quantize: str, modules: list[str]) -> dict[str, Any]:
    """What an adapter trained on this base records about it (``base_quantization.json``): t5peft's settings, and
    the base's ``quantization_config`` in the form a transformers user would recreate it with (bitsandbytes' keys
    for NF4 / int8; the weights were made with torchao, whose NF4 values differ slightly: README, "Quantized base")."""
    config: dict[str, Any] | None = None
    skipped = sorted({"wo", "lm_head", "shared"} - set(modules))  # kept unquantized (transformers' module names)
    if quantize == "nf4":
        config = {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": "float32",
            "llm_int8_skip_modules": skipped,
        }
    elif quantize == "int8":
        config = {
            "quant_method": "bitsandbytes",
            "load_in_8bit": True,
            "llm_int8_skip_modules": skipped,
        }
    return {
        "base_dtype": base_dtype,
        "quantize": quantize,
        "quantized_modules": modules,
        "library": "torchao" if quantize != "none" else None,
        "nf4_block_size": NF4_BLOCK if quantize == "nf4" else None,
        "nf4_scaler_block_size": NF4_SCALER_BLOCK if quantize == "nf4" else None,
        "quantization_config": config,
    }


def has_quantized_weights(model: nn.Module) -> bool:
    return any(is_quantized(p) for p in model.parameters())


def tensor_bytes(tensor: Tensor) -> int:
    """Bytes a tensor holds: a quantized one's inner tensors (codes, scales, tables) summed."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or not is_quantized(tensor):
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(tensor_bytes(getattr(tensor, name)) for name in names)


def base_bytes(model: nn.Module) -> int:
    """Bytes of the model's frozen parameters as stored (a tied weight once)."""
    return sum(tensor_bytes(p) for p in model.parameters() if not p.requires_grad)
