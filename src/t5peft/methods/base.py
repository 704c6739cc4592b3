"""What every fine-tuning method declares, and the generic code driven by it.

A method is a :class:`Method` subclass with a :class:`MethodConfig` dataclass, registered by name with
:func:`register`. Applying a method inserts its modules into the model in place; the parameters it adds
are found by comparing parameter names before and after, so freezing, counting, optimizer groups and
saving need no per-method code. A method overrides only what differs: how adapter tensors are named in
the file (``file_key`` / ``model_key``), what happens before saving (``export_state``), extra loss terms,
and per-step updates.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
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


class MethodConfigError(ValueError):
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


class Method:
    """One fine-tuning method. Subclasses set the class attributes and implement :meth:`inject`."""

    name: ClassVar[str]
    peft_type: ClassVar[str]  # the adapter_config.json "peft_type"
    config_class: ClassVar[type[MethodConfig]]
    default_lr: ClassVar[float]
    # True where the file format is Hugging Face PEFT's own (PEFT can load it)
    peft_compatible: ClassVar[bool] = False
    # False for full fine-tuning, whose "adapter" is the whole model (save_pretrained writes it)
    saves_adapter: ClassVar[bool] = True
    # adapter_config.json fields PEFT writes that we read but do not use, with the values we accept
    # (a PEFT file asking for anything else, e.g. use_dora=true, is refused rather than ignored)
    ignored_file_fields: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

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

    def after_backward(self, model: T5ForConditionalGeneration, step: int) -> None:
        """Called after each backward pass, before the optimizer step (e.g. importance statistics)."""

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
        return PEFT_PREFIX + model_key

    def model_key(self, file_key: str) -> str:
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
        """The method's fields of adapter_config.json."""
        return self.config.to_dict()

    @classmethod
    def config_from_file(cls, values: dict[str, Any], source: str) -> MethodConfig:
        """Inverse of :meth:`file_config`, tolerant of PEFT's extra fields at their neutral values."""
        options = {}
        for key, value in values.items():
            if key in COMMON_FILE_FIELDS:
                continue
            if key in cls.config_class.option_names():
                options[key] = value
            elif key in cls.ignored_file_fields:
                if value not in cls.ignored_file_fields[key]:
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


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def merge_wrapped_linears(model: nn.Module, wrapper: type[nn.Module]) -> nn.Module:
    """Fold every ``wrapper`` layer (one with ``merge()``, ``weight``, ``in/out_features``) into its base weight,
    put plain ``nn.Linear`` layers back and detach the method: the result is a plain T5 that ``save_pretrained``
    writes as a normal checkpoint."""
    for name, module in list(model.named_modules()):
        if isinstance(module, wrapper):
            module.merge()
            plain = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
            plain.weight = module.weight
            replace_module(model, name, plain)
    model.peft = None
    for param in model.parameters():
        param.requires_grad_(True)
    return model
