"""The built-in methods: importing this module registers them (the registry's list of modules)."""

from . import adalora, adapter, full, hybrid, ia3, lora, prompt, ptuning2  # noqa: F401
