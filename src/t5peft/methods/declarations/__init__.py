"""The methods' declarations, one module per method: name, default learning rate, options and file format.

Plain data, importable without torch (``tests/test_method_contract.py::test_declarations_need_no_torch`` checks
it in a fresh interpreter). Each method's implementation, with what it computes and its trainable-parameter
formula in its docstring, is the module of the same name one level up (``t5peft.methods.lora`` for
``declarations/lora.py``).
"""
