"""``python -m t5peft``: the same command line as ``t5peft``."""

from .cli import main

raise SystemExit(main())
