"""What every fine-tuning method declares, and the generic code driven by it.

A method is a :class:`Method` subclass with a :class:`MethodConfig` dataclass, listed once in
``registry.METHODS``. Method modules import this module (and, where one builds on another, that one) and
nothing above it. Applying a method inserts its modules into the model in place; the parameters it adds
are found by comparing parameter names before and after, so freezing, counting, optimizer groups and
saving need no per-method code. A method overrides only what differs: how adapter tensors are named in
the file (``file_key`` / ``model_key``), what happens before saving (``export_state``), an extra loss
term, and an update after each optimizer step. Every method also declares two facts the contract suite
(``tests/test_method_contract.py``) holds it to: ``identity_at_init`` and ``closed_form_trainable``.

Options are checked by the validators below (``check_*``), so every method reports a bad value the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import T5PeftError

if TYPE_CHECKING:
    from ..model.config import T5Config
    from ..model.t5 import T5ForConditionalGeneration

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
# Fields Hugging Face PEFT writes to every adapter_config.json that carry no information for us.
COMMON_FILE_FIELDS = frozenset(
    {
        "peft_type",
        "task_type",
        "base_model_name_or_path",
        "inference_mode",
        "revision",
        "auto_mapping",
        "peft_version",
        "t5peft_version",
    }
)


class MethodConfigError(T5PeftError, ValueError):
    """An option that does not exist or a value a method cannot use."""


@dataclass
class MethodConfig:
    """Base class of the method configs: dataclass fields are the options, with PEFT's names."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MethodConfigError` for invalid values (subclasses extend)."""

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: dict[str, Any], method: str = "") -> MethodConfig:
        """Build from user options; a name that is not an option is an error listing the valid ones."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown and not cls.option_names():
            raise MethodConfigError(f"method {method!r} has no options (got {', '.join(map(repr, unknown))})")
        if unknown:
            raise MethodConfigError(
                f"method {method!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(cls.option_names())}"
            )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise MethodConfigError(message)


# --------------------------------------------------------------------------------------------------
# Option validators: each raises MethodConfigError naming the option and the value


def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` in Python, never a rank)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> None:
    """An integer in ``[minimum, maximum]``."""
    upper = "" if maximum is None else f" and <= {maximum}"
    ok = is_int(value) and value >= minimum and (maximum is None or value <= maximum)
    require(ok, f"{name} must be an integer >= {minimum}{upper}, got {value!r}")


def check_optional_int(name: str, value: Any, minimum: int = 1) -> None:
    if value is not None:
        check_int(name, value, minimum)


def check_bool(name: str, value: Any) -> None:
    require(isinstance(value, bool), f"{name} must be true or false, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    require(is_number(value) and value > 0, f"{name} must be a number > 0, got {value!r}")


def check_non_negative(name: str, value: Any) -> None:
    require(is_number(value) and value >= 0, f"{name} must be a number >= 0, got {value!r}")


def check_fraction(name: str, value: Any, *, open_low: bool = False) -> None:
    """A number in ``[0, 1)`` (``(0, 1)`` with ``open_low``), e.g. a dropout rate or a decay."""
    low_ok = value > 0 if open_low else value >= 0
    interval = "(0, 1)" if open_low else "[0, 1)"
    require(is_number(value) and low_ok and value < 1, f"{name} must be in {interval}, got {value!r}")


def check_choice(name: str, value: Any, choices: Any) -> None:
    require(value in choices, f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def module_list(name: str, value: Any) -> list[str]:
    """A non-empty list of module names (one name may be given as a string), sorted and without repeats."""
    names = [value] if isinstance(value, str) else value
    require(
        isinstance(names, list) and bool(names) and all(isinstance(n, str) and n for n in names),
        f"{name} must name at least one module, got {value!r}",
    )
    return sorted(set(names))


# --------------------------------------------------------------------------------------------------
# PEFT's neutral adapter_config.json fields


@dataclass(frozen=True)
class Neutral:
    """A field of a PEFT config that carries no information for t5peft at its neutral values.

    ``values[0]`` is what t5peft writes (when ``written``); any of ``values`` is accepted when reading, and
    ``accept_int`` accepts any integer too (sizes of features that are off).
    """

    values: tuple[Any, ...]
    written: bool = False
    accept_int: bool = False

    def accepts(self, value: Any) -> bool:
        return value in self.values or (self.accept_int and is_int(value))


def neutral_values(table: dict[str, Neutral]) -> dict[str, Any]:
    """The neutral fields to write, with their written values."""
    return {name: field.values[0] for name, field in table.items() if field.written}


class Method:
    """One fine-tuning method. Subclasses set the class attributes and implement :meth:`inject`."""

    name: ClassVar[str]
    peft_type: ClassVar[str]  # the adapter_config.json "peft_type"
    config_class: ClassVar[type[MethodConfig]]
    default_lr: ClassVar[float]
    # True where the file format is Hugging Face PEFT's own (PEFT can load it)
    peft_compatible: ClassVar[bool] = False
    # adapter_config.json fields PEFT writes that we read but do not use (a PEFT file asking for another
    # value, e.g. use_dora=true, is refused rather than ignored); ``file_config`` writes those marked so
    neutral_file_fields: ClassVar[dict[str, Neutral]] = {}
    # True where an untrained method (initialisation options at their defaults) leaves the model's function
    # exactly unchanged; declared by every method, checked by tests/test_method_contract.py
    identity_at_init: ClassVar[bool]
    # adapter_config.json values by which a file of ``peft_type`` belongs to this method rather than to another
    # method of the same type (DoRA claims LORA files with use_dora=true); see registry.method_for_file
    file_claims: ClassVar[dict[str, Any]] = {}
    # tensors whose file key is not PEFT_PREFIX + model key: model key -> file key (a prompt table, VeRA's projections)
    special_file_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    def closed_form_trainable(self, config: T5Config) -> int:
        """The number of parameters this method trains on a T5 of ``config``, by the formula its docstring
        states (computed from the configs alone; the contract suite checks it against the applied method)."""
        raise NotImplementedError(f"method {self.name!r} states no closed-form parameter count")

    # --- structure ------------------------------------------------------------------------------
    def inject(self, model: T5ForConditionalGeneration) -> None:
        """Insert this method's modules into ``model`` (in place)."""
        raise NotImplementedError

    def trainable_names(self, model: T5ForConditionalGeneration, added: list[str]) -> list[str]:
        """Parameters to train; by default exactly those the method added."""
        return added

    # --- training -------------------------------------------------------------------------------
    def param_groups(self, model: T5ForConditionalGeneration, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups; one group by default."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def on_train_begin(self, model: T5ForConditionalGeneration, total_steps: int) -> None:
        """Called once before training with the number of optimizer steps planned (e.g. AdaLoRA's schedule)."""

    def extra_loss(self, model: T5ForConditionalGeneration) -> Tensor | None:
        """A term added to the training loss (e.g. AdaLoRA's orthogonality penalty)."""
        return None

    def after_optimizer_step(self, model: T5ForConditionalGeneration, step: int, total_steps: int) -> None:
        """Called after each optimizer step (e.g. AdaLoRA's rank allocation)."""

    def training_state(self) -> dict[str, Tensor]:
        """Tensors the method keeps outside parameters (e.g. importance averages), for exact resume."""
        return {}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`training_state` returned."""

    def report(self, model: T5ForConditionalGeneration) -> dict[str, Any]:
        """Extra facts for results files (e.g. final ranks)."""
        return {}

    # --- files ----------------------------------------------------------------------------------
    def export_state(self, model: T5ForConditionalGeneration, names: list[str]) -> dict[str, Tensor]:
        """The tensors to save, by model key (subclasses fold reparameterisations here)."""
        params = dict(model.named_parameters())
        return {name: params[name].detach() for name in names}

    def file_key(self, model_key: str) -> str:
        return self.special_file_keys.get(model_key) or PEFT_PREFIX + model_key

    def model_key(self, file_key: str) -> str:
        for model_key, special in self.special_file_keys.items():
            if file_key == special:
                return model_key
        if not file_key.startswith(PEFT_PREFIX):
            raise KeyError(file_key)
        return file_key[len(PEFT_PREFIX) :]

    def import_state(self, model: T5ForConditionalGeneration, state: dict[str, Tensor], source: str) -> None:
        """Copy saved tensors (by model key) into the injected modules; shapes checked by the caller."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, tensor in state.items():
                params[key].copy_(tensor)

    def file_config(self) -> dict[str, Any]:
        """The method's fields of adapter_config.json: its options, then PEFT's neutral fields it writes."""
        return {**self.config.to_dict(), **neutral_values(self.neutral_file_fields)}

    @classmethod
    def config_from_file(cls, values: dict[str, Any], source: str) -> MethodConfig:
        """Inverse of :meth:`file_config`, tolerant of PEFT's extra fields at their neutral values."""
        options = {}
        for key, value in values.items():
            if key in COMMON_FILE_FIELDS:
                continue
            if key in cls.config_class.option_names():
                options[key] = value
            elif key in cls.neutral_file_fields:
                if not cls.neutral_file_fields[key].accepts(value):
                    raise MethodConfigError(f"{source}: {key}={value!r} is not supported by t5peft's {cls.name}")
            else:
                log.warning("%s: ignoring unknown adapter_config field %r", source, key)
        try:
            return cls.config_class(**options)
        except MethodConfigError as err:
            raise MethodConfigError(f"{source}: {err}") from None


# --------------------------------------------------------------------------------------------------
# Helpers shared by methods that wrap linear layers


def find_linear_targets(model: nn.Module, targets: list[str], exclude: list[str] | None = None) -> list[str]:
    """Names of ``nn.Linear`` modules whose last name component is in ``targets`` (PEFT's matching)."""
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in targets and isinstance(module, nn.Linear) and not any(e in name for e in exclude or []):
            found.append(name)
    if not found:
        raise MethodConfigError(f"no linear layer matches target_modules={targets}")
    missing = sorted(set(targets) - {n.rsplit(".", 1)[-1] for n in found})
    if missing:
        raise MethodConfigError(f"target_modules {missing} match no linear layer of this model")
    return found


def t5_linear_shapes(config: T5Config) -> dict[str, tuple[int, int, int]]:
    """Every linear layer of a T5 by leaf name: ``(how many, in_features, out_features)``, from the config alone
    (closed-form parameter counts of methods that wrap linear layers)."""
    attentions = config.num_layers + 2 * config.num_decoder_layers  # encoder self, decoder self and cross
    ffns = config.num_layers + config.num_decoder_layers
    d, inner = config.d_model, config.inner_dim
    shapes = {
        "q": (attentions, d, inner),
        "k": (attentions, d, inner),
        "v": (attentions, d, inner),
        "o": (attentions, inner, d),
        "wo": (ffns, config.d_ff, d),
        "lm_head": (1, d, config.vocab_size),
    }
    if config.is_gated_act:
        shapes.update(wi_0=(ffns, d, config.d_ff), wi_1=(ffns, d, config.d_ff))
    else:
        shapes["wi"] = (ffns, d, config.d_ff)
    return shapes


def linear_targets(config: T5Config, targets: list[str]) -> list[tuple[int, int, int]]:
    """``(how many, in, out)`` of each target leaf name, as :func:`find_linear_targets` would match them."""
    shapes = t5_linear_shapes(config)
    missing = sorted(set(targets) - set(shapes))
    if missing:
        raise MethodConfigError(f"target_modules {missing} match no linear layer of this model")
    return [shapes[name] for name in targets]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


class AdditiveLinear(nn.Module):
    """A wrapped linear layer whose method adds ``delta_weight()`` to the base weight: merging folds that update into
    ``weight`` and unmerging takes it out again (LoRA, VeRA). Subclasses set ``merged`` and define ``delta_weight``."""

    merged: bool

    def delta_weight(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False


def merge_wrapped_linears(model: nn.Module, wrapper: type[nn.Module]) -> nn.Module:
    """Fold every ``wrapper`` layer (one with ``merge()``, ``weight``, ``in/out_features``) into its base weight,
    put plain ``nn.Linear`` layers back and detach the method: the result is a plain T5 that ``save_pretrained``
    writes as a normal checkpoint."""
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, wrapper)]
    if not wrapped:
        raise MethodConfigError(
            f"nothing to merge: the model has no {wrapper.__name__} layers ({describe_method(model)})"
        )
    for name, module in wrapped:
        module.merge()
        plain = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        plain.weight = module.weight
        replace_module(model, name, plain)
    return detach_method(model)


def describe_method(model: nn.Module) -> str:
    applied = getattr(model, "peft", None)
    return "no method applied" if applied is None else f"its method is {applied.name!r}"


def detach_method(model: nn.Module) -> nn.Module:
    """After a merge: no method any more, every weight a plain trainable parameter of a plain T5."""
    model.peft = None
    for param in model.parameters():
        param.requires_grad_(True)
    return model
