"""A training run that stops after the checkpoint of its first epoch, as a run killed there would (the tests of
resuming with another world size start it under torchrun or in one process, then continue it with ``--resume``).

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_worker.py SETTINGS.json
    python tests/dist_worker.py SETTINGS.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from t5peft.engine.skeleton import Pause
from t5peft.train.loop import Run
from t5peft.train.settings import TrainConfig

STOPPED = "stopped after the first epoch's checkpoint (test)"


class StopAfterFirstEpoch(Run):
    def pause_after(self, step: int, train_seconds: float) -> Pause | None:
        pause = super().pause_after(step, train_seconds)
        if pause is not None and pause.checkpoint and step == self.steps_per_epoch:
            return dataclasses.replace(pause, stop=STOPPED)
        return pause


def main(settings: Path) -> None:
    cfg = TrainConfig.from_dict(json.loads(settings.read_text(encoding="utf-8")), str(settings))
    run = StopAfterFirstEpoch.start(cfg)
    try:
        run.resume_if_asked()
        run.write_settings()
        run.fit()
        assert run.stopped_by == STOPPED, run.stopped_by
    finally:
        run.dist.close()
        if run.lock is not None:
            run.lock.release()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
