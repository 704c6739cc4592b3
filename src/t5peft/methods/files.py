"""Saving and loading what a method trained: an adapter in Hugging Face PEFT's layout, or a whole model.

:func:`save_trained` / :func:`load_trained` serve every method. Whether the result is an adapter or a whole
checkpoint is decided once, by :attr:`AppliedMethod.trains_base` (a method that trains base weights, as full
fine-tuning does, saves the whole model); the callers never ask which method it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..model.checkpoint import SAFETENSORS
from ..model.t5 import load_pretrained
from .apply import attach_method
from .base import Method, MethodConfigError
from .registry import method_for_file

if TYPE_CHECKING:
    from ..model.t5 import T5ForConditionalGeneration

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_STORAGE = "base_quantization.json"  # how the base it was trained on was stored (bf16 / NF4 / int8), if not fp32
MODEL_CONFIG = "config.json"


def _applied(model: T5ForConditionalGeneration):
    if model.peft is None:
        raise MethodConfigError("the model has no method applied; use save_pretrained for a plain model")
    return model.peft


# --------------------------------------------------------------------------------------------------
# Either kind


def save_trained(model: T5ForConditionalGeneration, directory: str | os.PathLike) -> Path:
    """Write what the applied method trained; returns the weights file (an adapter's, or the whole model's)."""
    applied = _applied(model)
    directory = Path(directory)
    if applied.trains_base:
        model.save_pretrained(directory, exclude=applied.added)
        return directory / SAFETENSORS
    save_adapter(model, directory)
    return directory / ADAPTER_WEIGHTS


def save_base(model: T5ForConditionalGeneration, directory: str | os.PathLike) -> Path:
    """Write the base model's weights only (what the applied method did not add) as a plain checkpoint."""
    model.save_pretrained(directory, exclude=_applied(model).added)
    return Path(directory)


def load_trained(
    directory: str | os.PathLike, base: str | os.PathLike | T5ForConditionalGeneration | None = None
) -> T5ForConditionalGeneration:
    """Read what :func:`save_trained` wrote: an adapter onto ``base`` (a checkpoint or a model), or a whole model."""
    directory = Path(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        if base is None:
            raise MethodConfigError(f"{directory} holds an adapter: give the base model it belongs to")
        model = base if isinstance(base, torch.nn.Module) else load_pretrained(base)
        return load_adapter(model, directory)
    if (directory / MODEL_CONFIG).is_file():
        return load_pretrained(directory)
    raise MethodConfigError(f"{directory}: neither {ADAPTER_CONFIG} nor {MODEL_CONFIG} found")


# --------------------------------------------------------------------------------------------------
# Adapters


def save_adapter(model: T5ForConditionalGeneration, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` in Hugging Face PEFT's layout."""
    applied = _applied(model)
    method = applied.method
    if applied.trains_base:
        raise MethodConfigError(
            f"method {method.name!r} trains the base model's weights, which an adapter file cannot hold: "
            "use save_pretrained (or save_trained, which writes whichever the method needs)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    file_format = method.declaration.file_format
    state = method.export_state(model, applied.trainable)
    tensors = {file_format.file_key(k): v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    config = {
        **file_format.file_fields(method.saved_options()),
        "peft_type": file_format.peft_type,
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": model.config.name_or_path or None,
        "inference_mode": True,
        "revision": None,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    storage = getattr(model, "base_storage", None)
    if storage is not None:  # a separate file: PEFT's LoraConfig has no field for it and warns about unknown ones
        (directory / BASE_STORAGE).write_text(json.dumps(storage, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # our version goes in the tensor file's metadata: PEFT warns about config fields it does not know
    save_file(tensors, directory / ADAPTER_WEIGHTS, metadata={"format": "pt", "t5peft_version": __version__})
    return directory


def read_adapter_config(directory: Path) -> dict[str, Any]:
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise MethodConfigError(f"{directory}: {ADAPTER_CONFIG} not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MethodConfigError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(values, dict) or "peft_type" not in values:
        raise MethodConfigError(f"{path}: expected a JSON object with a peft_type")
    return values


def load_adapter(model: T5ForConditionalGeneration, directory: str | os.PathLike) -> T5ForConditionalGeneration:
    """Apply the method saved in ``directory`` (by t5peft or Hugging Face PEFT) and load its weights."""
    directory = Path(directory)
    values = read_adapter_config(directory)
    source = str(directory / ADAPTER_CONFIG)
    declaration = method_for_file(values, source)
    config = declaration.config_from_file(values, source)
    attach_method(model, declaration.method_class()(config, from_file=True))
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise MethodConfigError(f"{directory}: {ADAPTER_WEIGHTS} not found")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise MethodConfigError(f"{weights}: not a readable safetensors file ({err})") from None
    method = model.peft.method
    expected = method.export_state(model, model.peft.trainable)
    file_format = method.declaration.file_format
    state = {}
    for file_key, tensor in tensors.items():
        try:
            state[file_format.model_key(file_key)] = tensor
        except KeyError:
            raise MethodConfigError(f"{weights}: unexpected tensor {file_key}") from None
    _check_adapter_state(expected, state, str(weights), method)
    method.import_state(model, state, str(weights))
    return model


def _check_adapter_state(expected: dict, state: dict, source: str, method: Method) -> None:
    file_key = method.declaration.file_format.file_key
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(file_key(k) for k in missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(file_key(k) for k in unexpected))
    for key in sorted(set(expected) & set(state)):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            problems.append(f"{file_key(key)}: file {tuple(state[key].shape)}, model {tuple(expected[key].shape)}")
    if problems:
        raise MethodConfigError(f"{source}: " + " | ".join(problems))
    for key, tensor in state.items():
        if not torch.is_floating_point(tensor):
            raise MethodConfigError(f"{source}: {file_key(key)} is not a floating-point tensor")
