"""One writer per folder: a ``train``, ``pretrain`` or ``compare`` holds its output folder's lock while it runs.

Two processes writing one run folder interleave ``metrics.jsonl`` and overwrite each other's checkpoints, and both
exit 0. The lock is ``fcntl.flock`` on ``<folder>/.t5peft.lock``: the operating system releases it when its holder
ends, however it ends, so a killed run leaves no stale lock on a local disk. The file holds a line naming the holder
(pid, host, command, since when) for the error the next process prints; it is emptied on release.
Where ``fcntl`` does not exist (Windows) folders are not locked and a warning says so once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import IO

from ..errors import T5PeftError

LOCK_FILE = ".t5peft.lock"

log = logging.getLogger(__name__)


class FolderBusyError(T5PeftError):
    """Another process holds the folder's lock."""


class NotAFolderError(T5PeftError):
    """The output path exists and is not a folder."""


def _holder_record(command: str) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"pid {os.getpid()} on {socket.gethostname()}, {command}, since {since}"


class FolderLock:
    """The lock of one folder, held from :meth:`acquire` to :meth:`release` (or the end of the process)."""

    def __init__(self, folder: Path, command: str) -> None:
        self.folder = folder
        self.command = command
        self.path = folder / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> FolderLock:
        """Create the folder if needed and take its lock; :class:`FolderBusyError` naming the holder if taken."""
        if self.folder.exists() and not self.folder.is_dir():
            raise NotAFolderError(f"{self.folder}: is a file; the output must be a folder (or a path not used yet)")
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            log.warning("folders cannot be locked on this system: never run two commands into %s", self.folder)
            return self
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the lock is held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            raise FolderBusyError(
                f"{self.folder}: another command is writing into this folder ({holder}); wait for it to end or stop "
                f"it (if no such process runs, as on a network file system, delete {self.path})"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:  # released by the system, not by its holder: it was killed or crashed
            log.warning("%s: the last command into this folder ended without finishing (%s)", self.folder, previous)
        handle.seek(0)
        handle.truncate()
        handle.write(_holder_record(self.command) + "\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        self._handle.seek(0)
        self._handle.truncate()
        self._handle.flush()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
