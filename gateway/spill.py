"""The spill: usage rows the database could not take, kept on disk until it can.

Files sit beside the database: `<db>.spill.<pid>-<random>.jsonl`, one JSON object per
row and line (column names as keys, so a file written by an older version replays
into a newer schema).  Each append is written whole and fsync'd; an append that fails
(disk full) is cut off again, so no torn line is left for the next one to follow.

Ownership, with several processes on one database (`server.workers`): every process
appends only to a file it created, and holds an exclusive `flock` on each file it
writes or replays.  A starting (or recovering) process adopts every other spill file
it can lock: those of a process that crashed or stopped with the database down.  A
live process's file is locked, so it is skipped; that process replays it itself.

Exactly once: the writer replays a file in chunks, each inserted in the same
transaction as the byte offset it reached (the sink's spill mark), and deletes the
file only when it is fully replayed.  A crash anywhere in between repeats nothing: the
next replay starts from the recorded offset.  A file's name is never reused.

Every method here does blocking file I/O: the writer calls them through
`asyncio.to_thread`, one at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from gateway.usage_record import COLUMNS, DEFAULTS, Row, coerce_row

log = logging.getLogger(__name__)

_READ_BYTES: Final = 1 << 20  # per replay read; a row is a few hundred bytes


@dataclass(slots=True)
class SpillFile:
    path: Path
    fd: int
    pending: int  # rows in the file not yet replayed (lines, for an adopted file)
    size: int  # bytes written (own file) or found (adopted file)
    replayed: int = 0  # bytes known to be in the log (and no longer counted in `pending`)

    @property
    def spill_id(self) -> str:
        return self.path.name  # unique: the pid and a random part


class Spill:
    def __init__(self, database: str | None) -> None:
        """`database`: the database file the spill sits beside; None: no spill (an
        in-memory database), so `append` fails and the rows count as dropped."""
        self._base = Path(database) if database else None
        self.own: SpillFile | None = None  # the file this process appends to
        self.adopted: list[SpillFile] = []  # other processes' files, being replayed here
        # the writer calls one method at a time, but a close() that gave up on a stuck
        # writer spills while the writer's own append may still run in its thread
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return sum(max(0, f.pending) for f in self.files())

    def files(self) -> list[SpillFile]:
        return [*self.adopted, *([self.own] if self.own is not None else [])]

    def append(self, rows: list[Row]) -> None:
        """Write `rows` at the end of this process's file, durably (fsync), or raise OSError."""
        if self._base is None:
            raise OSError("no spill file for an in-memory database")
        with self._lock:
            self._append(rows)

    def _append(self, rows: list[Row]) -> None:
        own = self.own or self._create()
        data = b"".join(map(_line, rows))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(own.fd, view) :]
            os.fsync(own.fd)
        except OSError:
            with contextlib.suppress(OSError):  # no half line for the next append to follow
                os.ftruncate(own.fd, own.size)
            raise
        own.size += len(data)
        own.pending += len(rows)

    def _create(self) -> SpillFile:
        assert self._base is not None
        path = self._base.with_name(f"{self._base.name}.spill.{os.getpid()}-{secrets.token_hex(4)}.jsonl")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and unique: nobody else holds it
            _sync_dir(path.parent)  # the file's name survives a crash, not only its bytes
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self.own = SpillFile(path, fd, 0, 0)
        return self.own

    def adopt(self) -> int:
        """Lock and take over every other spill file of this database nobody holds; rows found."""
        if self._base is None:
            return 0
        held = {f.path.name for f in self.files()}
        found = 0
        for path in sorted(self._base.parent.glob(f"{self._base.name}.spill.*.jsonl")):
            if path.name in held:
                continue
            adopted = _lock(path)
            if adopted is not None:
                self.adopted.append(adopted)
                found += adopted.pending
        return found

    def read(self, spill: SpillFile, offset: int, max_rows: int) -> tuple[list[Row], int, int]:
        """Up to `max_rows` rows from `offset`: (rows, offset after them, unreadable lines)."""
        data = os.pread(spill.fd, _READ_BYTES, offset)
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) == _READ_BYTES:  # one "line" of a megabyte is not ours
                return [], offset + len(data), 1
            # a line without its newline at the very end: the tail of an append a crash
            # cut (this process never leaves one: a failed append is truncated)
            return [], offset + len(data), 1 if data.strip() else 0
        rows: list[Row] = []
        bad = 0
        lines = data[:end].split(b"\n")[:-1]
        for line in lines[:max_rows]:
            row = _row(line)
            if row is None:
                bad += 1
            else:
                rows.append(row)
        if len(lines) > max_rows:
            end = sum(len(line) + 1 for line in lines[:max_rows])
        return rows, offset + end, bad

    def count(self, spill: SpillFile, start: int, stop: int) -> int:
        """Lines between two offsets (rows another replay already put in the log)."""
        return os.pread(spill.fd, max(0, stop - start), start).count(b"\n")

    def done(self, spill: SpillFile) -> None:
        """The file is fully replayed: delete it, then let go of its lock."""
        with contextlib.suppress(OSError):
            spill.path.unlink()
        os.close(spill.fd)
        if spill is self.own:
            self.own = None  # the next outage starts a new file (names are never reused)
        else:
            self.adopted.remove(spill)

    def release(self) -> None:
        """Let go of every file, keeping it for the next start (graceful stop)."""
        locked = self._lock.acquire(timeout=1.0)  # a stuck append must not hold up the stop
        for spill in self.files():
            with contextlib.suppress(OSError):
                os.close(spill.fd)
        self.own = None
        self.adopted = []
        if locked:
            self._lock.release()


def _lock(path: Path) -> SpillFile | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except OSError:
        return None  # gone meanwhile (its owner replayed it)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the lock may have come only after its holder replayed and deleted it: an
        # unlinked file is done, whatever it still holds
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
        size = os.fstat(fd).st_size
        lines = sum(chunk.count(b"\n") for chunk in _chunks(fd, size))
    except OSError:  # BlockingIOError: a live process holds it
        os.close(fd)
        return None
    return SpillFile(path, fd, lines, size)


def _chunks(fd: int, size: int) -> Iterator[bytes]:
    for offset in range(0, size, _READ_BYTES):
        yield os.pread(fd, _READ_BYTES, offset)


def _line(row: Row) -> bytes:
    try:
        return orjson.dumps(dict(zip(COLUMNS, row, strict=True)), default=str) + b"\n"
    except TypeError:  # orjson's limits (an int past 64 bits): the schema's types fit
        return orjson.dumps(dict(zip(COLUMNS, coerce_row(row), strict=True))) + b"\n"


def _row(line: bytes) -> Row | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("ts"), int | float):
        return None
    return tuple(obj.get(name, DEFAULTS[name]) for name in COLUMNS)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
