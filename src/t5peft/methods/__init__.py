"""Fine-tuning methods: one module per method, a registry, and generic freeze / count / save / load."""

from .base import Method, MethodConfig, MethodConfigError
from .registry import (
    apply_method,
    count_parameters,
    get_method_class,
    load_adapter,
    method_names,
    register,
    save_adapter,
)

__all__ = [
    "Method",
    "MethodConfig",
    "MethodConfigError",
    "apply_method",
    "count_parameters",
    "get_method_class",
    "load_adapter",
    "method_names",
    "register",
    "save_adapter",
]
