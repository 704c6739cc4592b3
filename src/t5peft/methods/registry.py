"""The registered methods: one declaration each, listed once in ``METHODS``, in the order ``t5peft methods`` shows them.

A method is two modules: its declaration, ``declarations/<method>.py`` (name, default learning rate, options
dataclass with its validation, adapter file format: plain data, no torch), and its implementation,
``<method>.py`` (the :class:`~t5peft.methods.base.Method` subclass and its modules: torch). Registering a method
is one line here, its declaration; the implementation is imported by ``MethodDeclaration.method_class`` when the
method is applied. So listing the methods (``t5peft methods``, ``--help``), checking a user's options (``train``,
experiment files) and telling which method an ``adapter_config.json`` belongs to never import torch, which alone
takes seconds to import.

Why one declaration module per method rather than a package per method (PEFT's ``tuners/<method>/config.py``
beside its layers): most methods are one module of 100-250 lines, which a package would split into three files;
the implementation module keeps its place and its name (``t5peft.methods.lora``, what users and tests import),
and the declarations, being one small subpackage, are checked as one for staying free of torch
(``test_method_contract.py::test_declarations_need_no_torch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .declaration import MethodConfigError, MethodDeclaration
from .declarations import (
    adalora,
    adapter,
    dora,
    full,
    hybrid,
    ia3,
    ln_tuning,
    lora,
    prefix,
    prompt,
    ptuning,
    ptuning2,
    vera,
)

if TYPE_CHECKING:
    from .base import Method

METHODS: tuple[MethodDeclaration, ...] = (
    full.DECLARATION,
    lora.DECLARATION,
    adalora.DECLARATION,
    adapter.DECLARATION,
    prompt.DECLARATION,
    ptuning2.DECLARATION,
    hybrid.DECLARATION,
    ia3.DECLARATION,
    dora.DECLARATION,
    vera.DECLARATION,
    ptuning.DECLARATION,
    prefix.DECLARATION,
    ln_tuning.DECLARATION,
)

_BY_NAME: dict[str, MethodDeclaration] = {declaration.name: declaration for declaration in METHODS}
if len(_BY_NAME) != len(METHODS):
    raise RuntimeError("two registered methods share a name")  # a programming error, caught on import


def method_names() -> list[str]:
    return list(_BY_NAME)


def get_declaration(name: str) -> MethodDeclaration:
    """The declaration of method ``name`` (no torch import); an unknown name is an error listing the known ones."""
    if name not in _BY_NAME:
        raise MethodConfigError(f"unknown method {name!r}; known methods: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def get_method_class(name: str) -> type[Method]:
    """The implementation of method ``name`` (imports it, and torch)."""
    return get_declaration(name).method_class()


def method_for_file(values: dict[str, Any], source: str) -> MethodDeclaration:
    """The method that reads an adapter_config.json with these ``values``.

    Candidates are the methods of its ``peft_type`` whose format's ``claims`` all hold in the file; the one claiming
    the most wins (a LORA file with ``use_dora: true`` is DoRA's, any other LORA file LoRA's)."""
    peft_type = values.get("peft_type")
    same_type = [d for d in METHODS if d.file_format.peft_type == peft_type]
    if not same_type:
        known = sorted({d.file_format.peft_type for d in METHODS})
        raise MethodConfigError(f"{source}: peft_type {peft_type!r} is not supported (supported: {', '.join(known)})")
    claiming = [d for d in same_type if all(values.get(k) == v for k, v in d.file_format.claims.items())]
    if not claiming:
        raise MethodConfigError(f"{source}: no {peft_type} method accepts this adapter_config.json")
    claiming.sort(key=lambda d: len(d.file_format.claims), reverse=True)
    if len(claiming) > 1 and len(claiming[0].file_format.claims) == len(claiming[1].file_format.claims):
        raise RuntimeError(f"methods {claiming[0].name!r} and {claiming[1].name!r} claim the same files")
    return claiming[0]
