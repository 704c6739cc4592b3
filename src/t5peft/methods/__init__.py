"""Fine-tuning methods: one module per method, one registration list, and generic apply / count / save / load."""

from .apply import AppliedMethod, apply_method, count_parameters
from .base import Method, MethodConfig, MethodConfigError
from .files import load_adapter, load_trained, save_adapter, save_base, save_trained
from .registry import METHODS, get_method_class, method_names

__all__ = [
    "METHODS",
    "AppliedMethod",
    "Method",
    "MethodConfig",
    "MethodConfigError",
    "apply_method",
    "count_parameters",
    "get_method_class",
    "load_adapter",
    "load_trained",
    "method_names",
    "save_adapter",
    "save_base",
    "save_trained",
]
