"""What a method declares without torch: its name, default learning rate, options and adapter file format.

A :class:`MethodDeclaration` is plain data, importable without torch, so listing the methods, checking a user's
options and telling which method an ``adapter_config.json`` belongs to cost no torch import (``t5peft methods``,
``--help``, experiment files). The implementation (a :class:`~t5peft.methods.base.Method` subclass, which needs
torch) is named by ``implementation`` and imported only when the method is applied.

* Options are the fields of a :class:`MethodConfig` dataclass, checked by the validators at the end of this
  module (``check_*``), so every method reports a bad value the same way.
* The file format is an :class:`AdapterFormat`: an adapter folder is Hugging Face PEFT's two files,
  ``adapter_config.json`` (the method's options, PEFT's common fields, and fields of PEFT's config that t5peft
  reads but does not use, at their neutral values) and ``adapter_model.safetensors`` (the trained tensors, each
  under ``base_model.model.`` + its name in the model unless the format names another key). ``methods/files.py``
  writes and reads them; what differs between methods is declared in the format, as data.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import T5PeftError

log = logging.getLogger(__name__)


class MethodConfigError(T5PeftError, ValueError):
    """An option that does not exist or a value a method cannot use."""


@dataclass
class MethodConfig:
    """Base class of the method configs: dataclass fields are the options, with PEFT's names."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MethodConfigError` for invalid values (subclasses extend)."""

    def validate_initialisation(self) -> None:
        """Raise :class:`MethodConfigError` for options that only matter when the method initialises its weights
        (a TEXT prompt without its text): checked for a user's options, not for a file whose weights are loaded."""

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
        config = cls(**options)
        config.validate_initialisation()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# The adapter file format

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


@dataclass(frozen=True)
class AdapterFormat:
    """One method's adapter files: its ``peft_type`` and every way its files differ from the plain layout."""

    # the adapter_config.json "peft_type"
    peft_type: str
    # True where the format is Hugging Face PEFT's own (PEFT loads it, and t5peft loads PEFT's)
    peft_compatible: bool = False
    # fields of PEFT's config that t5peft reads but does not use: a file asking for another value (use_dora=true in
    # a LoRA file) is refused rather than ignored; those marked ``written`` are written at their neutral value
    neutral_fields: Mapping[str, Neutral] = field(default_factory=dict)
    # values by which a file of ``peft_type`` belongs to this method rather than to another of the same type (DoRA
    # claims LORA files with use_dora=true; the method claiming the most wins, see registry.method_for_file)
    claims: Mapping[str, Any] = field(default_factory=dict)
    # tensors saved under a key other than PEFT_PREFIX + model key: model key -> file key (a prompt table)
    special_keys: Mapping[str, str] = field(default_factory=dict)
    # options written only when set (not PEFT fields, so a PEFT-format file carries them only when they are used)
    written_when_set: tuple[str, ...] = ()
    # fields read and ignored without a warning (AdaLoRA's files carry LoraConfig's ``r``, which it does not use)
    ignored_fields: frozenset[str] = frozenset()
    # options a loaded adapter takes whatever its file says: the file holds the evaluated form (a folded prefix
    # projection), which only these values can take
    loaded_options: Mapping[str, Any] = field(default_factory=dict)

    # --- tensor keys ------------------------------------------------------------------------------
    def file_key(self, model_key: str) -> str:
        return self.special_keys.get(model_key) or PEFT_PREFIX + model_key

    def model_key(self, file_key: str) -> str:
        """The model key a file key stands for; ``KeyError`` for a key this format does not write."""
        for model_key, special in self.special_keys.items():
            if file_key == special:
                return model_key
        if not file_key.startswith(PEFT_PREFIX):
            raise KeyError(file_key)
        return file_key[len(PEFT_PREFIX) :]

    # --- adapter_config.json ----------------------------------------------------------------------
    def neutral_values(self) -> dict[str, Any]:
        """The neutral fields to write, with their written values."""
        return {name: neutral.values[0] for name, neutral in self.neutral_fields.items() if neutral.written}

    def file_fields(self, options: dict[str, Any]) -> dict[str, Any]:
        """The method's fields of adapter_config.json: its options (as saved), then the neutral fields written."""
        values = {k: v for k, v in options.items() if not (k in self.written_when_set and v is None)}
        return {**values, **self.neutral_values()}

    def read_options(self, values: dict[str, Any], option_names: list[str], source: str, method: str) -> dict[str, Any]:
        """The options of an adapter_config.json, tolerant of PEFT's extra fields at their neutral values."""
        options = {}
        for key, value in values.items():
            if key in COMMON_FILE_FIELDS or key in self.ignored_fields:
                continue
            if key in option_names:
                options[key] = value
            elif key in self.neutral_fields:
                if not self.neutral_fields[key].accepts(value):
                    raise MethodConfigError(f"{source}: {key}={value!r} is not supported by t5peft's {method}")
            else:
                log.warning("%s: ignoring unknown adapter_config field %r", source, key)
        return {**options, **self.loaded_options}


# --------------------------------------------------------------------------------------------------
# The declaration


@dataclass(frozen=True)
class MethodDeclaration:
    """One method as the registry lists it: everything but the torch implementation.

    ``implementation`` is ``"<module>.<class>"`` under ``t5peft.methods`` (e.g. ``"lora.Lora"``), imported by
    :meth:`method_class` when the method is applied; that class names this declaration as its ``declaration``.
    """

    name: str
    default_lr: float
    config_class: type[MethodConfig]
    file_format: AdapterFormat
    implementation: str

    def method_class(self) -> type[Any]:
        """The :class:`~t5peft.methods.base.Method` subclass (imports it, and torch; not named in the annotation,
        since base imports this module)."""
        module, _, class_name = self.implementation.rpartition(".")
        cls = getattr(importlib.import_module(f"{__package__}.{module}"), class_name)
        if cls.declaration is not self:  # a programming error: the registry and the class disagree
            raise RuntimeError(f"{self.implementation} does not implement the declaration of method {self.name!r}")
        return cls

    def config_from_file(self, values: dict[str, Any], source: str) -> MethodConfig:
        """The config an ``adapter_config.json`` with these ``values`` stands for (see :class:`AdapterFormat`)."""
        options = self.file_format.read_options(values, self.config_class.option_names(), source, self.name)
        try:
            return self.config_class(**options)
        except MethodConfigError as err:
            raise MethodConfigError(f"{source}: {err}") from None


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
