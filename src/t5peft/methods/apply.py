"""Applying a method to a model, freezing everything else, merging it back, and counting parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model.storage import has_quantized_weights
from .base import Method, MethodConfig, MethodConfigError
from .registry import get_declaration

if TYPE_CHECKING:
    from ..model.t5 import T5ForConditionalGeneration


@dataclass
class AppliedMethod:
    """What ``apply_method`` attached to a model, kept on ``model.peft``.

    ``added`` are the parameters the method inserted, ``trainable`` those it trains. Everything that
    differs between adapters and full fine-tuning follows from these two lists (see ``trains_base``).
    """

    method: Method
    added: list[str] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def trains_base(self) -> bool:
        """True when the method trains weights of the base model: then the whole model is its result."""
        return not set(self.trainable) <= set(self.added)


def apply_method(
    model: T5ForConditionalGeneration, name: str, *, config: MethodConfig | None = None, **options: Any
) -> T5ForConditionalGeneration:
    """Insert method ``name`` into ``model`` (in place, also returned) and freeze everything else.

    Its options are a user's ``options``, or ``config`` when they were parsed already (``config_class.from_options``).
    """
    if config is not None and options:
        raise TypeError("apply_method takes options or a parsed config, not both")
    declaration = get_declaration(name)
    config = config if config is not None else declaration.config_class.from_options(options, name)
    return attach_method(model, declaration.method_class()(config))


def attach_method(model: T5ForConditionalGeneration, method: Method) -> T5ForConditionalGeneration:
    """Insert ``method`` (a built :class:`Method`) into ``model`` and freeze everything it does not train."""
    if model.peft is not None:
        raise MethodConfigError(f"the model already has method {model.peft.name!r} applied")
    before = {n for n, _ in model.named_parameters()}
    method.inject(model)
    added = [n for n, _ in model.named_parameters() if n not in before]
    model.peft = AppliedMethod(method, added, method.trainable_names(model, added))
    set_trainable(model)
    return model


def merge_method(model: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
    """Fold the applied method into the base weights (in place, also returned): a plain T5 with the same function,
    which ``save_pretrained`` writes as a normal checkpoint. A method that cannot be merged (a prompt, an adapter
    module) is refused with its reason."""
    if model.peft is None:
        raise MethodConfigError("the model has no method applied: there is nothing to merge")
    if has_quantized_weights(model):
        raise MethodConfigError(
            "the base is quantized: merging into it would round the update away; load the base unquantized "
            "(load_pretrained), load the adapter onto it (load_adapter) and merge that"
        )
    return model.peft.method.merge(model)


def set_trainable(model: T5ForConditionalGeneration) -> None:
    trainable = set(model.peft.trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)


def count_parameters(model: T5ForConditionalGeneration) -> dict[str, Any]:
    """Trainable parameters, the base model's size, and the share (trainable / base)."""
    added = set(model.peft.added) if model.peft is not None else set()
    base = sum(p.numel() for n, p in model.named_parameters() if n not in added)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable": trainable,
        "base": base,
        "total": sum(p.numel() for p in model.parameters()),
        "trainable_percent": 100.0 * trainable / base,
    }
