"""Method registry and the generic apply / freeze / count / save / load code."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .base import Method, MethodConfigError

if TYPE_CHECKING:
    from ..model.t5 import T5ForConditionalGeneration

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _load_builtin_methods()
    return list(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise MethodConfigError(f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _method_for_peft_type(peft_type: str, source: str) -> type[Method]:
    _load_builtin_methods()
    for cls in _REGISTRY.values():
        if cls.peft_type == peft_type:
            return cls
    known = sorted({c.peft_type for c in _REGISTRY.values()})
    raise MethodConfigError(f"{source}: peft_type {peft_type!r} is not supported (supported: {', '.join(known)})")


def _load_builtin_methods() -> None:
    from . import builtin  # noqa: F401  (importing registers the methods)


@dataclass
class AppliedMethod:
    """What ``apply_method`` attached to a model, kept on ``model.peft``."""

    method: Method
    trainable: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.method.name


# --------------------------------------------------------------------------------------------------
# Applying and counting


def apply_method(model: T5ForConditionalGeneration, name: str, **options: Any) -> T5ForConditionalGeneration:
    """Insert method ``name`` into ``model`` (in place, also returned) and freeze everything else."""
    if getattr(model, "peft", None) is not None:
        raise MethodConfigError(f"the model already has method {model.peft.name!r} applied")
    cls = get_method_class(name)
    method = cls(cls.config_class.from_options(options, name))
    before = {n for n, _ in model.named_parameters()}
    method.inject(model)
    added = [n for n, _ in model.named_parameters() if n not in before]
    trainable = method.trainable_names(model, added)
    model.peft = AppliedMethod(method, trainable)
    set_trainable(model)
    return model


def set_trainable(model: T5ForConditionalGeneration) -> None:
    trainable = set(model.peft.trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)


def count_parameters(model: T5ForConditionalGeneration) -> dict[str, Any]:
    """Trainable parameters, the base model's size, and the share (trainable / base)."""
    added = set(_added_names(model))
    base = sum(p.numel() for n, p in model.named_parameters() if n not in added)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable": trainable,
        "base": base,
        "total": base + sum(p.numel() for n, p in model.named_parameters() if n in added),
        "trainable_percent": 100.0 * trainable / base,
    }


def _added_names(model: T5ForConditionalGeneration) -> list[str]:
    peft = getattr(model, "peft", None)
    if peft is None or peft.name == "full":
        return []
    return peft.trainable


# --------------------------------------------------------------------------------------------------
# Files


def save_adapter(model: T5ForConditionalGeneration, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` in Hugging Face PEFT's layout."""
    applied = getattr(model, "peft", None)
    if applied is None:
        raise MethodConfigError("the model has no method applied; use save_pretrained for a plain model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    method = applied.method
    if not method.saves_adapter:
        raise MethodConfigError(f"method {method.name!r} trains the whole model: use save_pretrained instead")
    state = method.export_state(model, applied.trainable)
    tensors = {method.file_key(k): v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    from .. import __version__

    config = {
        **method.file_config(),
        "peft_type": method.peft_type,
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": model.config.name_or_path or None,
        "inference_mode": True,
        "revision": None,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
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
    cls = _method_for_peft_type(values["peft_type"], source)
    config = cls.config_from_file(values, source)
    apply_method(model, cls.name, **config.to_dict())
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise MethodConfigError(f"{directory}: {ADAPTER_WEIGHTS} not found")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise MethodConfigError(f"{weights}: not a readable safetensors file ({err})") from None
    method = model.peft.method
    expected = method.export_state(model, model.peft.trainable)
    state = {}
    for file_key, tensor in tensors.items():
        try:
            state[method.model_key(file_key)] = tensor
        except KeyError:
            raise MethodConfigError(f"{weights}: unexpected tensor {file_key}") from None
    _check_adapter_state(expected, state, str(weights), method)
    method.import_state(model, state, str(weights))
    return model


def _check_adapter_state(expected: dict, state: dict, source: str, method: Method) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(method.file_key(k) for k in missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(method.file_key(k) for k in unexpected))
    for key in sorted(set(expected) & set(state)):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            problems.append(
                f"{method.file_key(key)}: file {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
            )
    if problems:
        raise MethodConfigError(f"{source}: " + " | ".join(problems))
    for key, tensor in state.items():
        if not torch.is_floating_point(tensor):
            raise MethodConfigError(f"{source}: {method.file_key(key)} is not a floating-point tensor")
