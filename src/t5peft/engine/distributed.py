"""One run on many processes: the process group, the strategy, and everything the run does differently because of
them, in one place (:class:`Distribution`). The run skeleton and the loop call it; no other module asks for a rank.

Started by ``torchrun`` (``torchrun --nproc-per-node N -m t5peft train ...``): its environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``) says that a process group is wanted, and
:meth:`Distribution.start` joins it: NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on the CPU. Without that
environment a run is one process with no group, exactly as before (:meth:`Distribution.single`).

What depends on the distribution, and where it is decided:

* the strategy (``--strategy auto|ddp|fsdp``; auto: DDP when the world has more than one rank, nothing otherwise):
  :meth:`Distribution.wrap` returns the module the training forward goes through (``DistributedDataParallel`` over
  the trainable parameters, or the model itself after FSDP2's ``fully_shard`` per T5 block and on the root);
* the batch: ``--batch-size`` is the global batch; each rank takes a contiguous part of every global batch
  (:meth:`Distribution.shard`), so the batches of a run depend on seed and step only, and the part a rank trains
  on is weighted by its share of the batch's target tokens (:meth:`Distribution.loss_weight`): the ranks' losses
  add up to the one-process loss of the whole batch, and their averaged gradients to its gradient;
* evaluation: the batches of a split are dealt out to the ranks in turn (:meth:`Distribution.eval_rounds`) and the
  per-batch results summed over ranks (:meth:`Distribution.sum`); each batch is the one a single process would
  score, so the numbers are the single-process numbers;
* writing: only the writer (rank 0) writes files and shows a progress bar (:attr:`Distribution.is_writer`);
* the final weights: :meth:`Distribution.full_weights` puts the whole parameters in place (FSDP) while the writer
  saves them in the usual layout;
* a rank that stops (killed, crashed, Ctrl-C): the others' next collective fails, and
  :meth:`Distribution.lost_contact` names the rank that left (:class:`Liveness`).

Which rank left. A collective's failure says only that a connection closed (gloo gives an address, NCCL less), so
each rank of a run on many ranks keeps a liveness record in the process group's own key-value store (the store that
torchrun's agent hosts, or rank 0 under a plain ``MASTER_ADDR``/``MASTER_PORT`` start): a daemon thread adds 1 to
``t5peft/alive/<rank>`` every :data:`BEAT_SECONDS`, and a rank that leaves through Python (an error, Ctrl-C)
writes why to ``t5peft/left/<rank>`` before it closes its connections. When a collective fails, the survivor reads
the records, and the counters twice :data:`STILL_SECONDS` apart: a rank that wrote why it left is named with its
reason, one whose counter stood still is named as killed or crashed. Only the store is asked, so it holds across
machines (no process ids); a beat is one small request every quarter second, nothing beside a training step. If
the store itself no longer answers, the line names the rank that hosted it (a plain start) or says what it says
without the liveness record (torchrun's report then names the rank).

Why waiting is safe under torchrun: its agent sends SIGTERM to the surviving ranks within a tenth of a second of a
rank's death, before a survivor could tell a stopped counter from a slow one. So a run on many ranks catches
SIGTERM (:class:`Termination`): the process still ends, :data:`TERM_GRACE_SECONDS` after the signal at the latest
(exit status 143), which leaves the survivor the time to say which rank left and where the run can resume.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from ..errors import T5PeftError
from ..model.checkpoint import CheckpointStream, check_names, check_part, stream_checkpoint
from ..model.t5 import T5ForConditionalGeneration
from .settings import STRATEGIES, TrainInterrupted

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_VARIABLE = "T5PEFT_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks (default 600)
# what gloo and NCCL say when the rank at the other end of a collective is gone
LOST_RANK_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator")
ALIVE_KEY = "t5peft/alive/{rank}"  # in the process group's store: a counter each rank's heartbeat adds 1 to
LEFT_KEY = "t5peft/left/{rank}"  # why a rank left through Python ("interrupted", "failed: ...")
BEAT_SECONDS = 0.25  # how often a rank adds to its counter
STILL_SECONDS = 1.5  # a counter that has not moved for this long (six beats) belongs to a rank that stopped
TERM_GRACE_SECONDS = 5.0  # after SIGTERM the process ends by itself or is ended (exit 143) this much later
KILLED = "killed or crashed"  # why a rank left, when its counter stood still
INTERRUPTED = "interrupted"  # why a rank left, when Ctrl-C ended it


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything setting the same environment)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def _env_int(name: str, error: type[T5PeftError]) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise error(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def writer_process() -> bool:
    """Whether this process is the one that writes the run folder: every process but torchrun's ranks other than 0
    (known from the environment, before any process group exists)."""
    return not launched() or os.environ["RANK"] == "0"


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; anything else is kept."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


class Termination:
    """SIGTERM for a run on many ranks: noted rather than fatal at once, and the process ended
    :data:`TERM_GRACE_SECONDS` after it unless it has ended by itself (see the module docstring: the survivor of a
    lost rank gets to say which rank left).

    The handler only notes the time. :meth:`check`, called on every heartbeat from another thread, ends the process
    (``os._exit(143)``, as a shell reports a SIGTERM) once the grace is over; a wakeup socket (``signal.set_wakeup_fd``)
    lets it see the signal while the main thread waits inside a collective, where Python runs no handler. Installed
    from the main thread only (elsewhere signals cannot be handled), and the wakeup socket only where no other one is
    set (an event loop's stays)."""

    def __init__(self) -> None:
        self.received_at: float | None = None
        self.installed = threading.current_thread() is threading.main_thread()
        self.previous: Callable[..., object] | int | None = None
        self.reader: socket.socket | None = None
        self.writer: socket.socket | None = None
        if self.installed:
            self.previous = signal.signal(signal.SIGTERM, self._note)
            self._set_wakeup()

    def _set_wakeup(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's: theirs stays, and SIGTERM is seen when the main thread runs Python
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            return
        self.reader, self.writer = reader, writer

    def _note(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()

    def _woken(self) -> bool:
        if self.reader is None:
            return False
        try:
            return int(signal.SIGTERM) in self.reader.recv(256)
        except OSError:  # nothing there (BlockingIOError), or the socket already closed
            return False

    def check(self) -> None:
        """Note a SIGTERM the main thread has not run its handler for yet; end the process once the grace is over."""
        if self._woken():
            self._note()
        if self.received_at is not None and time.monotonic() - self.received_at >= TERM_GRACE_SECONDS:
            os._exit(128 + signal.SIGTERM)

    def restore(self) -> None:
        """The handler before; a SIGTERM already received still ends the process at the end of its grace."""
        if not self.installed:
            return
        self.installed = False
        signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
        if self.reader is not None and self.writer is not None:
            signal.set_wakeup_fd(-1)
            self.reader.close()
            self.writer.close()
            self.reader = self.writer = None
        if self.received_at is not None:
            left = max(0.0, self.received_at + TERM_GRACE_SECONDS - time.monotonic())
            timer = threading.Timer(left, os._exit, args=(128 + signal.SIGTERM,))
            timer.daemon = True
            timer.start()


class Liveness:
    """This rank's liveness record in the process group's store, and what the records of the others say when a
    collective fails (see the module docstring). A daemon thread adds to this rank's counter every
    :data:`BEAT_SECONDS` (and keeps :class:`Termination`'s time); :meth:`stop` ends it with the run."""

    def __init__(self, store: tdist.Store, rank: int, world_size: int, host: int | None) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.host = host  # the rank whose process serves the store; None: torchrun's agent (or no process)
        self.termination = Termination()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"t5peft-liveness-{rank}", daemon=True)

    @classmethod
    def start(cls, rank: int, world_size: int) -> Liveness | None:
        """The record of this rank of a run on many ranks, its heartbeat started (None: no store to keep it in)."""
        store = _default_store()
        if store is None:
            return None
        liveness = cls(store, rank, world_size, _store_host(store))
        liveness.thread.start()
        return liveness

    def _beat(self) -> None:
        beating = True
        while True:
            if beating:
                try:
                    self.store.add(ALIVE_KEY.format(rank=self.rank), 1)
                except (RuntimeError, OSError):  # the store is gone (the run is ending): no more beats
                    beating = False
            self.termination.check()
            if self.stopped.wait(BEAT_SECONDS):
                return

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=2 * BEAT_SECONDS + 5)
        self.termination.restore()

    def record(self, why: str) -> None:
        """Write why this rank leaves, for the others to say; never fails (the store may be gone already)."""
        with contextlib.suppress(RuntimeError, OSError):
            self.store.set(LEFT_KEY.format(rank=self.rank), why)

    # ----------------------------------------------------------------------------------------------
    def _counts(self, ranks: Sequence[int]) -> dict[int, int]:
        return {rank: self.store.add(ALIVE_KEY.format(rank=rank), 0) for rank in ranks}  # adding 0 reads it

    def _reasons(self, ranks: Sequence[int]) -> dict[int, str]:
        keys = {rank: LEFT_KEY.format(rank=rank) for rank in ranks}
        found = {rank: key for rank, key in keys.items() if self.store.check([key])}
        return {rank: self.store.get(key).decode("utf-8", "replace") for rank, key in found.items()}

    def survey(self) -> dict[int, str]:
        """The other ranks that left, with why: the reason a rank wrote, or :data:`KILLED` for one whose counter
        stood still for :data:`STILL_SECONDS`. Ends early once every other rank has moved or written why."""
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        first = self._counts(others)
        deadline = time.monotonic() + STILL_SECONDS
        moved: set[int] = set()
        while True:
            reasons = self._reasons(others)
            if set(others) <= moved | reasons.keys() or time.monotonic() >= deadline:
                break
            time.sleep(BEAT_SECONDS / 2)
            moved |= {rank for rank, count in self._counts(others).items() if count != first[rank]}
        return {rank: reasons.get(rank, KILLED) for rank in others if rank in reasons or rank not in moved}

    def departed(self) -> dict[int, str] | None:
        """:meth:`survey`, bounded in time (a store that no longer answers must not hold the report up): None when
        the store could not be asked."""
        found: list[dict[int, str]] = []

        def ask() -> None:
            with contextlib.suppress(RuntimeError, OSError):
                found.append(self.survey())

        asking = threading.Thread(target=ask, name="t5peft-liveness-survey", daemon=True)
        asking.start()
        asking.join(timeout=STILL_SECONDS + 3.0)
        return found[0] if found else None


def _default_store() -> tdist.Store | None:
    """The default process group's key-value store (None if this torch does not say which it is)."""
    from torch.distributed import distributed_c10d

    try:
        return distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def _store_host(store: tdist.Store) -> int | None:
    """Which rank serves a store: rank 0 for a TCP store of a plain start (``init_process_group`` makes rank 0 its
    server), none under torchrun (its agent serves it) or for a file store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    while isinstance(store, tdist.PrefixStore):
        store = store.underlying_store
    return 0 if isinstance(store, tdist.TCPStore) else None


def departure(err: BaseException) -> str:
    """Why a rank leaves, in a few words, for the others' line: "interrupted" (Ctrl-C), or "failed: TYPE: FIRST
    LINE"."""
    if isinstance(err, (KeyboardInterrupt, TrainInterrupted)):
        return INTERRUPTED
    lines = str(err).strip().splitlines()
    return f"failed: {type(err).__name__}" + (f": {lines[0][:150]}" if lines else "")


def _name_ranks(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(str(rank) for rank in ranks)


@dataclass(frozen=True)
class LostContact:
    """What a survivor knows of the ranks that left: its one line, and whether every rank named left by Ctrl-C
    (then the run was interrupted, not broken: see ``RunSkeleton.run``)."""

    line: str
    interrupted: bool = False


def describe_departures(gone: dict[int, str] | None, words: str, me: int, host: int | None) -> LostContact:
    """What a survivor says about the ranks that left (``gone``: rank -> why, None: the store no longer answered),
    beside the backend's ``words``: the ranks named with why, or (nothing known) that another rank left."""
    if gone is None and host is not None and host != me:
        return LostContact(f"rank {host} left the run (it served the run's store, which no longer answers; {words})")
    if not gone:
        return LostContact(f"another rank left the run ({words}); torchrun's report names it")
    by_reason: dict[str, list[int]] = {}
    for rank, why in sorted(gone.items()):
        by_reason.setdefault(why, []).append(rank)
    interrupted = set(by_reason) == {INTERRUPTED}
    if len(by_reason) == 1:
        ((why, ranks),) = by_reason.items()
        return LostContact(f"{_name_ranks(ranks)} left the run ({why}; {words})", interrupted)
    named = " and ".join(f"{_name_ranks(ranks)} ({why})" for why, ranks in by_reason.items())
    return LostContact(f"{named} left the run ({words})", interrupted)


def backend_words(err: BaseException) -> str | None:
    """A collective's failure in the backend's words, one line, when it says another rank is gone; None for any
    other error."""
    if not isinstance(err, RuntimeError):
        return None
    text = str(err)
    if isinstance(err, tdist.DistError) or any(sign in text for sign in LOST_RANK_SIGNS):
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return first.split("] ", 1)[-1].split(". ", 1)[0][:200]  # gloo prefixes the source file and line
    return None


@dataclass(frozen=True)
class Distribution:
    """The ranks of a run and its strategy (``"none"``, ``"ddp"``, ``"fsdp"``); see the module docstring."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    strategy: str = "none"
    backend: str | None = None  # "gloo" or "nccl" when this run joined a process group
    # the group of the run's small host-side agreements (Ctrl-C): gloo, so that under NCCL they never wait for the
    # GPU; None: the default group (gloo already)
    control: object | None = field(default=None, compare=False, repr=False)
    # this rank's liveness record, which names the rank that left when a collective fails; None for one process
    liveness: Liveness | None = field(default=None, compare=False, repr=False)

    @classmethod
    def single(cls) -> Distribution:
        return cls()

    @classmethod
    def start(cls, strategy: str, device: torch.device, error: type[T5PeftError]) -> Distribution:
        """Join the process group torchrun asks for (none without its environment) and choose the strategy."""
        if strategy not in STRATEGIES:
            raise error(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if not launched():
            if strategy != "auto":
                raise error(
                    f"--strategy {strategy} needs a process group: start the run with torchrun "
                    "(torchrun --nproc-per-node N -m t5peft train ...)"
                )
            return cls.single()
        world, rank = _env_int("WORLD_SIZE", error), _env_int("RANK", error)
        local = _env_int("LOCAL_RANK", error)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not tdist.is_initialized():
            timeout = dt.timedelta(seconds=float(os.environ.get(TIMEOUT_VARIABLE, "600")))
            tdist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
        resolved = strategy if strategy != "auto" else ("ddp" if world > 1 else "none")
        control = tdist.new_group(backend="gloo") if backend == "nccl" else None
        liveness = Liveness.start(rank, world) if world > 1 else None
        return cls(world, rank, local, resolved, backend, control, liveness)

    # ----------------------------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        """Whether this run is in a process group (and so talks to other ranks)."""
        return self.backend is not None

    @property
    def is_writer(self) -> bool:
        """The rank that writes the run's files and shows its progress (and holds the folder's lock)."""
        return self.rank == 0

    def describe(self) -> dict[str, object]:
        """What ``results.json`` records."""
        return {"world_size": self.world_size, "strategy": self.strategy, "backend": self.backend}

    def close(self) -> None:
        """Leave the process group this run joined and end the heartbeat (nothing for one process)."""
        if self.distributed and tdist.is_initialized():
            tdist.destroy_process_group()
        if self.liveness is not None:
            self.liveness.stop()

    def leaving(self, err: BaseException) -> None:
        """Record why this rank leaves the run (``err``: what ends it), for the line of the ranks that stay."""
        if self.liveness is not None:
            self.liveness.record(departure(err))

    # ----------------------------------------------------------------------------------------------
    # Batches

    def check_batch_size(self, batch_size: int, error: type[T5PeftError]) -> None:
        if batch_size % self.world_size:
            raise error(
                f"--batch-size {batch_size} (the global batch) does not divide evenly over {self.world_size} ranks; "
                f"use a multiple of {self.world_size}"
            )

    def local_batch_size(self, batch_size: int) -> int:
        return batch_size // self.world_size

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's contiguous part of a global batch (parts differ by at most one row; a rank whose part would
        be empty, in a last batch smaller than the world, gets the batch's first row, to be weighted 0)."""
        if self.world_size == 1:
            return list(indices)
        base, extra = divmod(len(indices), self.world_size)
        first = self.rank * base + min(self.rank, extra)
        part = list(indices[first : first + base + (self.rank < extra)])
        return part or list(indices[:1])

    def loss_weight(self, indices: Sequence[int], part: Sequence[int], target_tokens: Sequence[int]) -> float:
        """The share of the global batch's target tokens in this rank's part (0 for a stand-in row); the ranks'
        mean losses times their weights add up to the mean loss of the whole batch."""
        if self.world_size == 1:
            return 1.0
        whole = sum(target_tokens[i] for i in indices)
        if self.shard_is_empty(indices):
            return 0.0
        return sum(target_tokens[i] for i in part) / whole

    def shard_is_empty(self, indices: Sequence[int]) -> bool:
        return self.rank >= len(indices)

    @property
    def gradient_scale(self) -> float:
        """DDP and FSDP average the ranks' gradients: the weighted loss is multiplied back by the world size."""
        return float(self.world_size)

    def eval_rounds(self, batches: int) -> Iterator[tuple[int, bool]]:
        """``(batch index, counted)`` for this rank: batches dealt out in turn; every rank runs the same number of
        forwards (FSDP gathers weights in each), a rank without a batch left scores batch 0 and drops it."""
        rounds = -(-batches // self.world_size)
        for round_ in range(rounds):
            index = round_ * self.world_size + self.rank
            yield (index, True) if index < batches else (0, False)

    # ----------------------------------------------------------------------------------------------
    # Collectives

    def collective_device(self, device: torch.device) -> torch.device:
        return device if self.backend == "nccl" else torch.device("cpu")

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place where it can be; the result is returned)."""
        if not self.distributed:
            return tensor
        where = self.collective_device(tensor.device)
        moved = tensor.to(where)
        tdist.all_reduce(moved, op=tdist.ReduceOp.SUM)
        if moved is tensor:
            return tensor
        return tensor.copy_(moved)

    def gather_ints(self, values: Sequence[int], device: torch.device) -> list[list[int]]:
        """Every rank's ``values`` (the same length on every rank), in rank order."""
        if not self.distributed:
            return [list(values)]
        where = self.collective_device(device)
        mine = torch.tensor(list(values), dtype=torch.int64, device=where)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        tdist.all_gather(parts, mine)
        return [part.tolist() for part in parts]

    def check_replicas(self, model: nn.Module, error: type[T5PeftError]) -> None:
        """Raise ``error`` unless every rank holds the same replicated state, bit for bit: the trainable weights
        under DDP and the buffers (AdaLoRA's rank masks) under any strategy. Ranks that drifted apart would
        otherwise go on quietly, each training its own model."""
        if not self.distributed:
            return
        named = [(f"buffer {name}", b) for name, b in model.named_buffers()]
        if self.strategy == "ddp":
            named += [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            return
        device = self.collective_device(next(t for _, t in named).device)
        sums = torch.stack([t.detach().to(device, torch.float64).sum() for _, t in named])
        parts = [torch.empty_like(sums) for _ in range(self.world_size)]
        tdist.all_gather(parts, sums)
        for rank, part in enumerate(parts):
            differ = (part != parts[0]).nonzero().flatten().tolist()
            if differ:
                raise error(
                    f"rank {rank} holds other values than rank 0 for {named[differ[0]][0]} (and {len(differ) - 1} "
                    "more): the ranks no longer train one model"
                )

    def lost_contact(self, err: BaseException) -> LostContact | None:
        """What a collective's failure says when another rank stopped (killed, crashed, Ctrl-C) rather than this
        one failing: which rank left and why, as its liveness record says (:class:`Liveness`; this waits up to
        :data:`STILL_SECONDS` for a rank that stopped without a word), with the backend's words, in one line; None
        for any other error (which is then reported as itself)."""
        words = backend_words(err) if self.distributed else None
        if words is None:
            return None
        if self.liveness is None:
            return describe_departures(None, words, self.rank, None)
        return describe_departures(self.liveness.departed(), words, self.rank, self.liveness.host)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a collective on many ranks: every rank asks at the same point)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX, group=self.control)  # on the CPU: no wait for the GPU
        return bool(value.item())

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()

    # ----------------------------------------------------------------------------------------------
    # The model

    def wrap(
        self, model: nn.Module, device: torch.device, bf16: bool = False, deferred: DeferredBase | None = None
    ) -> nn.Module:
        """The module the training forward goes through: DDP over the trainable parameters, the FSDP2-sharded
        model, or the model itself. The optimizer is built after this (FSDP replaces the parameters). ``deferred``
        (FSDP only): the model's base is read now, each rank its shards (:class:`DeferredBase`)."""
        if deferred is not None and self.strategy != "fsdp":
            raise ValueError(f"a deferred base is read into FSDP shards, not under strategy {self.strategy!r}")
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        if self.strategy == "fsdp":
            shard_model(model, device, bf16)
            if deferred is not None:
                deferred.fill(model, device)
            return model
        return model

    def loads_shards(self, init: str, method: str, base_dtype: str = "fp32", quantize: str = "none") -> bool:
        """Whether this run's model is built with a deferred base (:func:`loads_shards`)."""
        return loads_shards(self.strategy, init, method, base_dtype, quantize)

    @contextlib.contextmanager
    def full_weights(self, model: nn.Module) -> Iterator[None]:
        """Within: ``model``'s parameters are whole float32 tensors on every rank, for saving them in the usual
        layout. Under FSDP each sharded parameter is gathered (``DTensor.full_tensor``: in its stored dtype, not
        FSDP's compute dtype) and put in place, a parameter shared by several modules once, and the shards are put
        back on the way out; other strategies hold whole parameters already."""
        if self.strategy != "fsdp":
            yield
            return
        from torch.distributed.tensor import DTensor

        swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        whole: dict[int, nn.Parameter] = {}
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if isinstance(param, DTensor):
                    if id(param) not in whole:
                        whole[id(param)] = nn.Parameter(param.full_tensor(), requires_grad=param.requires_grad)
                    swapped.append((module, name, param))
                    module._parameters[name] = whole[id(param)]
        try:
            yield
        finally:
            for module, name, param in swapped:
                module._parameters[name] = param


def shard_model(model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
    """FSDP2: each T5 block its own unit, the rest (shared embedding, head) on the root; on CUDA with bf16, FSDP's
    own mixed precision (bf16 compute, float32 gradients reduced).

    The first block of each stack holds the stack's relative position bias table, which the stack reads before it
    calls any block; so the first block is sharded with its stack (and the stack's final norm), as one unit that
    the stack's forward gathers, and every later block is its own unit.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    options = {"mp_policy": policy} if policy is not None else {}
    for stack in (model.encoder, model.decoder):
        for block in list(stack.block)[1:]:
            fully_shard(block, **options)
        fully_shard(stack, **options)
    fully_shard(model, **options)
    return model


# --------------------------------------------------------------------------------------------------
# Loading under FSDP: each rank reads only its part of the pretrained weights

# The methods whose initialisation reads the base's shapes and the run's seed but no base weight's values: under FSDP
# they are applied to a model whose base is not read yet (:class:`DeferredBase`), and each rank then reads only its
# shards of the checkpoint. The others load the whole model on every rank first, then shard it: dora (its magnitude
# is the norm of the base weight), prompt and lora+prompt (the prompt starts as rows of the vocabulary embedding),
# ln_tuning (trainable copies of the base's norms). tests/test_fsdp_loading.py checks, for every method in this set,
# that its initial values on a stand-in base equal those on the loaded one.
SHARDED_LOAD_METHODS = frozenset({"lora", "full", "ia3", "adalora", "vera", "adapter", "prefix", "ptuning", "ptuning2"})


def loads_shards(strategy: str, init: str, method: str, base_dtype: str = "fp32", quantize: str = "none") -> bool:
    """Whether a run reads each rank's shards of the pretrained weights only (:class:`DeferredBase`): FSDP, a
    pretrained start, a method in :data:`SHARDED_LOAD_METHODS`, and a float32 base (a bf16 or quantized base is
    stored from the whole float32 weights, as in one process). ``--init random`` draws the whole model on every rank,
    so that its values are those of one process."""
    stored_as_loaded = base_dtype == "fp32" and quantize == "none"
    return strategy == "fsdp" and init == "pretrained" and method in SHARDED_LOAD_METHODS and stored_as_loaded


def _stand_in(param: nn.Parameter) -> nn.Parameter:
    """A CPU parameter of ``param``'s shape and dtype that takes no memory: one zero seen everywhere (stride 0)."""
    zero = torch.zeros((), dtype=param.dtype)
    return nn.Parameter(zero.expand(param.shape), requires_grad=param.requires_grad)


def _on_meta(param: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)


def _swap_parameters(model: nn.Module, make: Callable[[nn.Parameter], nn.Parameter]) -> dict[int, nn.Parameter]:
    """Replace every parameter of ``model`` by ``make(parameter)``, a parameter several modules share by one shared
    replacement (tied weights stay tied); returns the replacements by the id of what they replaced."""
    made: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}  # the replaced parameter is held: its id stays unique
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                made[id(param)] = (param, make(param))
            module._parameters[name] = made[id(param)][1]
    return {key: new for key, (_, new) in made.items()}


@dataclass
class DeferredBase:
    """A model for FSDP whose pretrained base is read only once the model is sharded, each rank reading its part.

    :meth:`build` makes the model with every base parameter a stand-in that holds no memory (a zero of stride 0, on
    the CPU, where one process builds its model), so that the method is applied as in one process: its parameters
    are drawn on the CPU from the run's seed, in the same order, and come out the same (only methods whose
    initialisation reads no base value: :data:`SHARDED_LOAD_METHODS`). :meth:`release` keeps the method's
    parameters and every buffer and puts all the parameters on the meta device; the model is then sharded
    (``fully_shard``) and given uninitialised local shards (``to_empty``), and :meth:`fill` copies into each rank's
    shards their part of every checkpoint tensor, one weight file at a time, and of the kept parameters.

    Peak host memory of a rank while loading: its shards of the model plus one weight file (measured in
    tests/test_fsdp_loading.py)."""

    stream: CheckpointStream
    stand_ins: set[int]  # ids of the stand-in parameters (the base)
    kept: dict[str, Tensor] = field(default_factory=dict)  # the method's parameters, by name, whole
    buffers: list[tuple[nn.Module, str, Tensor]] = field(default_factory=list)

    @classmethod
    def build(cls, name_or_path: str) -> tuple[T5ForConditionalGeneration, DeferredBase]:
        """The model of checkpoint ``name_or_path`` with a stand-in base, in eval mode as ``load_pretrained``
        returns it; the checkpoint's names are checked here, before any tensor is read."""
        config, stream = stream_checkpoint(name_or_path)
        with torch.device("meta"):
            model = T5ForConditionalGeneration(config)
        check_names(model, stream.names, stream.source)
        stand_ins = _swap_parameters(model, _stand_in)
        return model.eval(), cls(stream, {id(p) for p in stand_ins.values()})

    def release(self, model: nn.Module, device: torch.device) -> None:
        """Keep the method's parameters (whole, as drawn) and the buffers (moved to ``device``), then put every
        parameter on the meta device, ready for ``fully_shard``."""
        self.kept = {
            name: param.detach() for name, param in model.named_parameters() if id(param) not in self.stand_ins
        }
        seen: dict[int, Tensor] = {}
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    moved = seen.setdefault(id(buffer), buffer.to(device))
                    self.buffers.append((module, name, moved))
        _swap_parameters(model, _on_meta)

    def fill(self, model: nn.Module, device: torch.device) -> None:
        """Give the sharded model its local shards on ``device`` and fill them: the checkpoint's tensors one weight
        file at a time, then the kept parameters; the buffers are put back. Every parameter is filled or this
        raises."""
        model.to_empty(device=device)
        for module, name, buffer in self.buffers:
            module._buffers[name] = buffer
        params = dict(model.named_parameters())
        filled: set[str] = set()
        for source, part in self.stream.parts():
            check_part(model, part, source)
            for name in list(part):
                _fill_local(params[name], part.pop(name))
                filled.add(name)
            del part
        for name, whole in self.kept.items():
            _fill_local(params[name], whole)
            filled.add(name)
        self.kept.clear()
        missing = sorted(set(params) - filled)
        if missing:
            raise RuntimeError(f"{self.stream.source}: parameters left unfilled after loading: {', '.join(missing)}")


@torch.no_grad()
def _fill_local(param: nn.Parameter, whole: Tensor) -> None:
    """Copy into ``param`` its part of ``whole``: this rank's chunk of a sharded (DTensor) parameter, as DTensor
    lays it out (``compute_local_shape_and_global_offset``), or all of a plain one."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(param, DTensor):
        param.copy_(whole)
        return
    shape, offset = compute_local_shape_and_global_offset(whole.shape, param.device_mesh, param.placements)
    local = whole
    for dim, (start, length) in enumerate(zip(offset, shape, strict=True)):
        local = local.narrow(dim, start, length)
    param.to_local().copy_(local)
