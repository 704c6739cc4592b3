"""One run of a comparison, in its own process: ``python -m t5peft.experiments.worker request.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..train.loop import TrainConfig, train


def main(argv: list[str]) -> int:
    request = Path(argv[0])
    cfg = TrainConfig.from_dict(json.loads(request.read_text()), str(request))
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
