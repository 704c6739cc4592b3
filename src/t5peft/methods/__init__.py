"""Fine-tuning methods: a declaration and an implementation per method, one registration list, and generic apply /
merge / count / save / load.

The declarations and the registry need no torch and are imported eagerly; the rest loads on first use (PEP 562), so
``import t5peft.methods.registry`` (``t5peft methods``, ``--help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
from .declaration import AdapterFormat, MethodConfig, MethodConfigError, MethodDeclaration
from .registry import METHODS, get_declaration, get_method_class, method_names

if TYPE_CHECKING:
    from .apply import AppliedMethod, apply_method, count_parameters, merge_method
    from .base import Method
    from .files import load_adapter, load_trained, save_adapter, save_base, save_trained

_LAZY = {
    "AppliedMethod": "apply",
    "apply_method": "apply",
    "count_parameters": "apply",
    "merge_method": "apply",
    "Method": "base",
    "load_adapter": "files",
    "load_trained": "files",
    "save_adapter": "files",
    "save_base": "files",
    "save_trained": "files",
}

__all__ = [
    "METHODS",
    "AdapterFormat",
    "AppliedMethod",
    "Method",
    "MethodConfig",
    "MethodConfigError",
    "MethodDeclaration",
    "apply_method",
    "count_parameters",
    "get_declaration",
    "get_method_class",
    "load_adapter",
    "load_trained",
    "merge_method",
    "method_names",
    "save_adapter",
    "save_base",
    "save_trained",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
