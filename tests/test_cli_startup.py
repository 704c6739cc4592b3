"""The command line answers ``--help`` and ``--version`` without importing torch (issue 16, item 11).

``import torch`` takes about 3 s, which every command paid before it could even print its usage. Each
check runs the command line in a fresh interpreter in which the heavy libraries cannot be imported
(``sys.modules[name] = None`` makes ``import name`` fail at once), so a top-level import of one of them in
``t5peft/__init__.py``, ``cli.py`` or anything they import fails here with the traceback that names it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from t5peft import __version__

HEAVY = (
    "torch",
    "numpy",
    "pyarrow",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "matplotlib",
    "tqdm",
    "tensorboard",
)

# In a fresh interpreter: block the heavy libraries, run the command line, report how it ended.
RUN_BLOCKED = textwrap.dedent(
    """
    import sys
    for name in {heavy!r}:
        sys.modules[name] = None
    from t5peft.cli import main
    try:
        code = main({argv!r})
    except SystemExit as stop:
        code = stop.code
    print("exit", code)
    """
)

LIGHT = [
    ["--version"],
    ["--help"],
    [],  # no command: the one-line usage error
    ["evaluate", "--help"],
    ["predict", "--help"],
    ["compare", "--help"],
    ["report", "--help"],
    ["methods", "--help"],
    ["methods"],
    ["train", "--help"],
    ["pretrain", "--help"],
    ["push", "--help"],
    ["plan-memory", "--help"],
]


def run_without_heavy_libraries(argv: list[str]) -> subprocess.CompletedProcess:
    script = RUN_BLOCKED.format(heavy=HEAVY, argv=argv)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", LIGHT, ids=lambda argv: " ".join(argv) or "(none)")
def test_command_answers_without_heavy_imports(argv: list[str]) -> None:
    result = run_without_heavy_libraries(argv)
    expected_exit = 2 if argv == [] else 0
    assert result.stdout.splitlines()[-1:] == [f"exit {expected_exit}"], result.stderr[-3000:]
    if argv == ["--version"]:
        assert result.stdout.splitlines()[0] == f"t5peft {__version__}"
    elif "--help" in argv:
        assert "usage: t5peft" in result.stdout
    elif argv == ["methods"]:
        assert any(line.startswith("lora ") for line in result.stdout.splitlines())


def test_python_m_t5peft_version_imports_no_torch() -> None:
    """The real entry point (``python -m t5peft``, nothing blocked): ``-X importtime`` lists every module."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "t5peft", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == f"t5peft {__version__}"
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "t5peft.cli" in imported  # the listing is what it should be
    assert not {name for name in imported if name.split(".")[0] in HEAVY}


def test_package_attributes_are_imported_on_first_use() -> None:
    """``import t5peft`` is light, yet ``t5peft.T5Config`` and friends still work (PEP 562 ``__getattr__``)."""
    import t5peft

    for name in t5peft.__all__:
        assert getattr(t5peft, name) is not None, name
    assert set(t5peft.__all__) <= set(dir(t5peft))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = t5peft.no_such_name
