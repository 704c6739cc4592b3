"""The run skeleton: what a fine-tuning run (``train.loop.Run``) and a pretraining run (``pretrain.loop.Pretraining``)
do alike, written once; each is a subclass that fills in what only it does.

Why a base class of named steps. The two runs share everything around their data and their log points: the
output-folder check, device and precision, seeding, the metrics log, resuming, the training clock, the warm-up
before it, the progress bar, checkpoints and Ctrl-C. They differ in a few places that are whole methods, not
flags: how they set up (tokenizer, data, model, optimizer), which batches they train on, when they pause and what a
pause does, and what they leave at the end. nanoT5's single loop function would need an ``if`` per difference,
and the differences are most of a recipe; torchtune's recipe protocol leaves the loop itself to every recipe, so
the loop would again be written twice. Here the loop (:meth:`RunSkeleton.fit`) exists once and calls the
subclass's steps by name, in the spirit of torchtune's ``_setup_*`` steps.

Setting up, in order (``__init__``; :meth:`RunSkeleton.start` removes the folders it created if that fails):

1. ``check_settings``: the subclass's checks that need more than the settings (a method's options), before anything
   is loaded;
2. ``check_output_folder``: a folder holding a run is refused unless ``--resume``, and resumed only with the same
   settings (``layout.changed_settings``);
3. ``runtime``: device, precision, compiled or eager (:class:`~.runtime.Runtime`);
4. ``seed_everything``, and the run folder is created;
5. ``setup``: the subclass's own ``_setup_*`` steps, which set ``model``, ``optimizer``, ``scheduler`` and ``step``
   (the :class:`~.step.TrainStep`) and ``total_steps``.

Running (:meth:`RunSkeleton.run`): ``resume_if_asked`` -> ``write_settings`` -> ``fit`` -> ``finish``; a Ctrl-C
becomes :class:`~.settings.TrainInterrupted`, which says where the run stopped and which checkpoint ``--resume``
continues from (the command line prints the command and exits 130).

The loop (``fit``): for each batch of ``batches()``, the step (compiled and captured before the clock starts),
``before_step`` / ``pause_after`` asked of the subclass; a :class:`Pause` stops the clock and then, in this order,
writes a log point (``log_point``, which calls ``log_metrics``), a snapshot (``write_snapshot``) and a checkpoint
(``save_checkpoint``), and may end the run.

Many processes (torchrun): ``Runtime.dist`` (:class:`~.distributed.Distribution`) joins the process group when the
runtime is resolved; the run's training forward goes through ``Runtime.wrap`` (DDP / FSDP), and the writing rank
(``dist.is_writer``) is asked in the few methods that write: ``write_settings``, the metrics log (only the writer has
sinks), ``save_checkpoint`` (every rank takes part in a sharded checkpoint), the progress bar (``_progress_bar``) and
the subclass's ``finish``. How the frozen base is stored (bf16 / quantized): ``engine.precision.store_base``, which
the fine-tuning run calls once its model is placed. TensorBoard (:mod:`.tensorboard`) is one more entry in ``sinks``
(``open_sinks``): every log point goes to each sink, and once the run is finished its settings (``hparams``) and
final metrics (``final_metrics``).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from tqdm import tqdm

from ..data.text2text import Batch
from ..errors import T5PeftError
from .clock import TrainingClock
from .distributed import Distribution, writer_process
from .layout import NOT_RESULTS, changed_settings
from .lock import FolderLock
from .runtime import Runtime, seed_everything
from .settings import RunSettings, TrainInterrupted, comparable
from .state import MetricsLog, Position, read_position, resume, save_checkpoint
from .step import TrainStep
from .tensorboard import TensorBoardSink
from .tensorboard import check_available as check_tensorboard

log = logging.getLogger(__name__)

R = TypeVar("R", bound="RunSkeleton")
# a second SIGINT this soon after the first is the same Ctrl-C (torchrun passes it on to its ranks: see CtrlC)
SAME_PRESS_SECONDS = 1.0


class Folder(Protocol):
    """The files of a run folder the skeleton uses (``layout.RunFolder``, ``layout.PretrainFolder``)."""

    @property
    def root(self) -> Path: ...

    @property
    def run_config(self) -> Path: ...

    @property
    def metrics(self) -> Path: ...

    @property
    def checkpoint(self) -> Path: ...


class MetricsSink(Protocol):
    """Receives every log point's record (``metrics.jsonl`` is one, TensorBoard another), then, once trained, the
    run's settings and final metrics (``finish``); ``close`` ends it either way."""

    def write(self, record: dict[str, Any]) -> None: ...

    def finish(self, hparams: dict[str, Any], metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Pause:
    """What the loop does after a step, in this order: a log point, a snapshot, a checkpoint; then it stops if
    ``stop`` says why (``stopped_by``)."""

    log: bool = False
    snapshot: bool = False
    checkpoint: bool = False
    stop: str | None = None


class RunSkeleton:
    """A run: its settings, folder, runtime and training state, and the one training loop (module docstring)."""

    folder_type: ClassVar[type]  # RunFolder or PretrainFolder
    kind: ClassVar[str]  # "a run", "a pretraining run": what an occupied folder holds
    command: ClassVar[str]  # "t5peft train": the command named to another one that finds the folder locked
    lock: FolderLock | None = None  # the output folder's, held from start() to the end of run()
    checkpoint_schedule: str  # when checkpoints are written ("one is written at the end of each epoch"), for Ctrl-C
    progress_label: str  # the progress bar's label
    distributable: ClassVar[bool] = False  # whether the kind of run may run on many ranks (torchrun)

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep
    total_steps: int | None

    def __init__(self, cfg: RunSettings) -> None:
        self.cfg = cfg
        self.error: type[T5PeftError] = cfg.error  # the kind of run's own error (TrainError, PretrainError)
        self.folder: Folder = self.folder_type(Path(cfg.output))
        self.check_settings()
        self.check_output_folder()
        strategy = getattr(cfg, "strategy", "auto")
        self.runtime = Runtime.resolve(cfg.device, cfg.precision, cfg.compile, self.error, strategy)
        self.check_distribution()
        seed_everything(cfg.seed)
        if cfg.tensorboard:
            check_tensorboard()  # a missing package fails before anything is loaded
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self.position = Position()
        self.metrics = MetricsLog(self.folder.metrics)
        self.sinks: list[MetricsSink] = [self.metrics] if self.dist.is_writer else []
        self.bar: tqdm | None = None
        self.compile_seconds = 0.0
        self.stopped_by: str | None = None
        self.ctrl_c_pressed = False  # whether Ctrl-C reached this rank during fit (a lost rank is then the same Ctrl-C)
        self.setup()

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def bf16(self) -> bool:
        return self.runtime.bf16

    @property
    def compiled(self) -> bool:
        return self.runtime.compiled

    @property
    def dist(self) -> Distribution:
        return self.runtime.dist

    # ----------------------------------------------------------------------------------------------
    # Setting up

    def check_settings(self) -> None:
        """Checks of the settings that need more than the settings themselves (default: none)."""

    def check_distribution(self) -> None:
        """A run on many ranks: the kind of run allows it, and the global batch divides over the ranks."""
        dist = self.dist
        if not dist.distributed:
            return
        if not self.distributable:
            dist.close()
            raise self.error(f"{self.kind} runs in one process; start it without torchrun")
        try:
            dist.check_batch_size(self.cfg.batch_size, self.error)
        except T5PeftError:
            dist.close()
            raise

    def check_output_folder(self) -> None:
        path = self.folder.run_config
        if path.exists() and not self.cfg.resume:
            raise self.error(
                f"{self.folder.root} already holds {self.kind}; pass --resume to continue it or choose another --output"
            )
        if not (self.cfg.resume and path.exists()):
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self.error(f"{path}: the run's settings cannot be read ({err})") from err
        changed = changed_settings(comparable(type(self.cfg), saved), self.cfg.to_dict())
        if changed:
            raise self.error(f"{path}: --resume with different settings ({', '.join(changed)})")

    def setup(self) -> None:
        """The subclass's ``_setup_*`` steps: model, data, optimizer, scheduler, ``step``, ``total_steps``."""
        raise NotImplementedError

    @classmethod
    def start(cls: type[R], cfg: RunSettings, *args: Any, **kwargs: Any) -> R:
        """Lock the output folder and set the run up; if that fails (or is interrupted), unlock and remove the
        folders this call created."""
        created = _first_missing(Path(cfg.output))
        # under torchrun the writer rank holds the lock for the run's ranks (the others write no file of the folder)
        lock = FolderLock(Path(cfg.output), cls.command) if writer_process() else None
        try:
            if lock is not None:
                lock.acquire()
            run = cls(cfg, *args, **kwargs)
            run.lock = lock
            return run
        except BaseException as err:
            if lock is not None:
                lock.release()
            if created is not None and created.exists():
                shutil.rmtree(created)
            if isinstance(err, KeyboardInterrupt):
                resumable = cls.folder_type(Path(cfg.output)).run_config.is_file()
                where = "interrupted while setting up, before any training step"
                raise TrainInterrupted(
                    where + ("" if resumable else "; nothing saved"), Path(cfg.output), resumable
                ) from None
            raise

    # ----------------------------------------------------------------------------------------------
    # Running

    def run(self) -> dict[str, Any]:
        """Resume if asked, train, and ``finish``; Ctrl-C: :class:`TrainInterrupted` saying where it stopped.
        The folder's lock is released, the sinks closed and the process group left at the end, however the run
        ends."""
        try:
            self.resume_if_asked()
            self.write_settings()
            self.open_sinks()
            try:
                self.runtime.reset_peak_memory()
                self.fit()
                results = self.finish()
                for sink in self.sinks:
                    sink.finish(self.hparams(results), self.final_metrics(results))
                return results
            except KeyboardInterrupt:
                raise self.interruption() from None
            except RuntimeError as err:
                lost = self.dist.lost_contact(err)
                if lost is None:
                    raise
                if lost.interrupted or self.ctrl_c_pressed:  # Ctrl-C reached another rank a moment before this one
                    raise self.interruption() from None
                raise self.error(f"rank {self.dist.rank} stopped: {lost.line}; {self.resume_hint()}") from err
        except BaseException as err:
            self.dist.leaving(err)  # for the line of the ranks that stay, before this one closes its connections
            raise
        finally:
            for sink in self.sinks:
                sink.close()
            self.dist.close()
            if self.lock is not None:
                self.lock.release()

    def open_sinks(self) -> None:
        """The sinks beside ``metrics.jsonl``: TensorBoard when asked, its events from the resumed step on purged
        (the metrics log is cut back to the same point)."""
        if self.cfg.tensorboard and self.dist.is_writer:  # one writer under torchrun
            resumed = self.position.global_step
            self.sinks.append(
                TensorBoardSink(self.cfg.tensorboard, self.measures, purge_step=resumed + 1 if resumed else None)
            )

    def measures(self) -> dict[str, float | None]:
        """Throughput and memory so far, for the sinks that take them (TensorBoard): machine facts, which
        ``metrics.jsonl`` leaves out so a resumed run's log equals the log of a run that went through."""
        pos = self.position
        seconds = pos.train_seconds
        return {
            "throughput/examples_per_s": pos.train_examples / seconds if seconds else None,
            "throughput/tokens_per_s": pos.train_tokens / seconds if seconds else None,
            **{f"memory/{key}": value for key, value in self.runtime.memory_report().items()},
        }

    def hparams(self, results: dict[str, Any]) -> dict[str, Any]:
        """The settings that make the run what it is (not where it writes), for the HParams table; ``results``:
        what ``finish`` returned (default: unused)."""
        unrecorded = NOT_RESULTS | {"output"}
        return {key: value for key, value in self.cfg.to_dict().items() if key not in unrecorded}

    def final_metrics(self, results: dict[str, Any]) -> dict[str, Any]:
        """The numbers of the finished run (``finish``'s ``results``) for the HParams table (default: none)."""
        return {}

    def resume_if_asked(self) -> None:
        checkpoint = self.folder.checkpoint
        if not (self.cfg.resume and checkpoint.exists()):
            self._restart_metrics(0)
            return
        self.position, method_state = resume(checkpoint, self.model, self.optimizer, self.scheduler, self.dist)
        if self.step.method is not None:
            self.step.method.load_training_state(method_state)
        self.step.step = self.position.global_step
        self.step.reset_loss(self.position.running_loss_sum, self.position.running_loss_steps)
        self._restart_metrics(self.position.metric_lines)
        log.info("resumed %s at step %d", self.folder.root, self.position.global_step)

    def _restart_metrics(self, lines: int) -> None:
        if self.dist.is_writer:
            self.metrics.restart(lines)

    def write_settings(self) -> None:
        if self.dist.is_writer:
            self.folder.run_config.write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    def finish(self) -> dict[str, Any]:
        """What the run leaves once trained (test results, an exported checkpoint); returned by :meth:`run`."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    # The loop

    def batches(self) -> Iterator[Batch]:
        """The training batches from the current position on, on the device."""
        raise NotImplementedError

    def budget_spent(self) -> str | None:
        """Why a run has nothing left to train before it starts (a resumed run that had finished); default: None."""
        return None

    def before_training(self) -> None:
        """Called once the progress bar is up, before the first batch (default: nothing)."""

    def before_step(self, train_seconds: float) -> None:
        """Called before every step with the training time so far (default: nothing)."""

    def pause_after(self, step: int, train_seconds: float) -> Pause | None:
        """What to do after step ``step`` (1-based), with the training time so far; None: go on."""
        raise NotImplementedError

    def log_point(self, step: int) -> None:
        """Validate and write a record through :meth:`log_metrics`."""
        raise NotImplementedError

    def write_snapshot(self, step: int) -> None:
        """Write a copy of the model as it is at ``step`` (only asked by a subclass's own pauses)."""
        raise NotImplementedError

    def fit(self) -> None:
        """Train from the current position until the batches end or a pause stops the run."""
        pos = self.position
        self.stopped_by = self.budget_spent()
        if self.stopped_by:
            return
        self.bar = self._progress_bar()
        clock = TrainingClock(self.runtime)
        batches = self.batches()
        ctrl_c = CtrlC(self.dist)
        try:
            self.before_training()
            for batch in batches:
                ctrl_c.check()
                if not clock.running:
                    self.prepare_step(batch)
                    clock.start()
                self.before_step(pos.train_seconds + clock.elapsed())
                self.step(batch)
                pos.global_step += 1
                rows, tokens = batch.counted
                pos.train_examples += rows
                pos.train_tokens += tokens
                self.bar.update(1)
                clock.tick(pos.global_step)
                pause = self.pause_after(pos.global_step, pos.train_seconds + clock.elapsed())
                if pause is not None:
                    pos.train_seconds += clock.stop()
                    self._pause(pos.global_step, pause)
                    if pause.stop:
                        self.stopped_by = pause.stop
                        break
            ctrl_c.check()
        finally:
            self.ctrl_c_pressed = ctrl_c.pressed
            ctrl_c.restore()
            _close(batches)  # a pretraining loader stops its workers
            self.bar.close()

    def _pause(self, step: int, pause: Pause) -> None:
        if pause.log:
            self.log_point(step)
        if pause.snapshot:
            self.write_snapshot(step)
        if pause.checkpoint:
            self.save_checkpoint()

    def _progress_bar(self) -> tqdm:
        return tqdm(
            total=self.total_steps,
            initial=self.position.global_step,
            disable=not (self.cfg.progress and self.dist.is_writer),
            desc=self.progress_label,
            unit="step",
            dynamic_ncols=True,
        )

    def prepare_step(self, batch: Batch) -> None:
        """Compile (and capture) the step before the clock starts; the time is reported on its own."""
        if not self.compiled or self.step.prepared:
            return
        start = time.perf_counter()
        self.step.prepare(batch)
        self.runtime.sync()
        self.compile_seconds += time.perf_counter() - start

    def take_train_loss(self) -> float | None:
        """The mean training loss since the previous log point (None without a step since), and start anew."""
        loss_sum, steps = self.step.read_loss()
        self.step.reset_loss()
        return loss_sum / steps if steps else None

    def log_metrics(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)
        self.position.metric_lines += 1

    def save_checkpoint(self) -> None:
        self.dist.check_replicas(self.model, self.error)
        pos = self.position
        pos.running_loss_sum, pos.running_loss_steps = self.step.read_loss()
        method_state = self.step.method.training_state() if self.step.method is not None else {}
        save_checkpoint(
            self.folder.checkpoint, self.model, self.optimizer, self.scheduler, method_state, pos, self.dist
        )

    # ----------------------------------------------------------------------------------------------
    # Interruption

    def where(self) -> str:
        """Where the training stood, for the Ctrl-C message ("after step 5 of 9")."""
        raise NotImplementedError

    def describe_checkpoint(self, position: Position) -> str:
        """Which point a checkpoint holds ("step 6")."""
        return f"step {position.global_step}"

    def interruption(self) -> TrainInterrupted:
        """Ctrl-C's end of the run: where it stopped. Under torchrun every rank gets Ctrl-C; the writer says it."""
        return TrainInterrupted(self.where_stopped(), self.folder.root, resumable=True, quiet=not self.dist.is_writer)

    def where_stopped(self) -> str:
        """Where an interrupted run stopped and which checkpoint it can resume from."""
        return f"interrupted {self.where()}; {self.resume_hint()}"

    def resume_hint(self) -> str:
        """Which checkpoint ``--resume`` continues from."""
        saved = read_position(self.folder.checkpoint)
        if saved is None:
            return f"no checkpoint yet ({self.checkpoint_schedule}); --resume starts it over"
        return (
            f"checkpoint: {self.folder.checkpoint} ({self.describe_checkpoint(saved)}); --resume continues from there"
        )


class CtrlC:
    """Ctrl-C during the loop, taken between steps: the first SIGINT is noted and raised as ``KeyboardInterrupt``
    at the next :meth:`check` (after the step, or the log point, under way); a second one raises at once, unless it
    comes within :data:`SAME_PRESS_SECONDS` of the first: torchrun's agent passes the terminal's SIGINT on to its
    ranks, so each rank of a run under torchrun gets one Ctrl-C twice in a moment, and raising at the second would
    leave the other ranks inside a collective.

    Why not Python's own handler: it raises wherever the interpreter is, and a ``KeyboardInterrupt`` raised
    inside a finalizer (``__del__``, a weakref callback) is printed as "Exception ignored" and lost, so now and
    then a Ctrl-C did nothing and the run went on to the end. Outside the main thread (where signals cannot be
    handled) nothing changes."""

    def __init__(self, dist: Distribution | None = None) -> None:
        self.dist = dist if dist is not None else Distribution.single()
        self.pressed_at: float | None = None  # when the first SIGINT came
        self.installed = threading.current_thread() is threading.main_thread()
        self.previous = signal.signal(signal.SIGINT, self._note) if self.installed else None

    @property
    def pressed(self) -> bool:
        return self.pressed_at is not None

    def _note(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.pressed_at is None:
            self.pressed_at = now
        elif now - self.pressed_at > SAME_PRESS_SECONDS:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed; on many ranks, if it reached any of them, on all of
        them at the same step (so none goes on into a step the others have left)."""
        if self.dist.any(self.pressed):
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.installed:  # the handler before (None: one not set from Python, which the default stands for)
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)
            self.installed = False


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating ``path`` would create)."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _close(batches: Iterator[Batch]) -> None:
    close = getattr(batches, "close", None)
    if close is not None:
        close()
