"""The usage log: one row per API request, written off the request path, never lost.

Handlers `record()` a finished `UsageRecord` (no await, no I/O: an append to a deque).
One writer task drains the rows in batches (lingering up to 0.2 s so rows share a
transaction) into a `UsageSink`: SQLite today (`gateway.usage_sqlite`), any store
with the same three coroutines later.

When a write fails (a full disk, another process holding the database's lock), the
batch is kept and retried with backoff (0.1 s doubling to 5 s); the store reports
`degraded()` until a write succeeds.  Rows wait in memory up to `max_queued`
(100,000); past that, and on `flush()` or `close()` while the database is failing,
they go to the spill file beside the database (`gateway.spill`: fsync'd JSON lines).
Spilled rows are replayed into the database as soon as a write succeeds again, and
by `open()` before it returns, so the monthly quota seeded from the log counts them.
Rows are dropped only when the spill file cannot be written either (or holds a line
that is not a row); every drop is counted and logged.

`stats()` and `degraded()` are the read-only view for `/metrics` and `/healthz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Protocol

from gateway.spill import Spill, SpillFile
from gateway.usage_record import CLIENT_CLOSED, ROW, Row, UsageLogError, UsageRecord, now
from gateway.usage_sqlite import SqliteSink, open_db

__all__ = ["CLIENT_CLOSED", "UsageLogError", "UsageRecord", "UsageSink", "UsageStore", "now", "open_db"]

log = logging.getLogger(__name__)

_BATCH: Final = 500
_LINGER: Final = 0.2  # seconds a row may wait for others before it is written
_MAX_QUEUED: Final = 100_000  # rows held in memory while the database fails, then spilled
_RETRY_FIRST: Final = 0.1
_RETRY_MAX: Final = 5.0
_REPLAY_ROWS: Final = 5000  # spilled rows per replay transaction
_CLOSE_BUDGET: Final = 2.0  # seconds close() gives the writer before it spills what is left itself


class UsageSink(Protocol):
    """Where batches of rows go.  `target` names it in log lines (never a credential)."""

    target: str
    spill_base: str | None  # the path spill files sit beside; None: no spill

    async def write(self, rows: Sequence[Row], mark: tuple[str, int] | None = None) -> None:
        """Insert `rows` in one transaction, all or nothing; with `mark` = (spill id,
        byte offset), record in the same transaction how far that spill is replayed."""
        ...

    async def replayed(self, spill_id: str) -> int:
        """The byte offset recorded for `spill_id` (0: none)."""
        ...

    async def close(self) -> None: ...


class UsageStore:
    def __init__(self, sink: UsageSink, *, max_queued: int = _MAX_QUEUED) -> None:
        self._sink = sink
        self._spill = Spill(sink.spill_base)
        self._max_queued = max(max_queued, _BATCH)
        self._rows: deque[UsageRecord] = deque()
        self._batch: list[Row] = []  # taken from _rows; kept until written or spilled
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # rows arrived, a batch filled, flush or close
        self._progress = asyncio.Event()  # rows left memory (written, spilled or dropped)
        self._closing = False
        self._flushing = 0  # flush() calls waiting
        self._failing: str | None = None  # why writes fail, while they do
        self._stuck = False  # the spill failed too: rows wait in memory, flush() cannot help
        self._retry_in = _RETRY_FIRST
        self._done = 0  # rows that left memory, for flush()
        self._written = self._failures = self._dropped = self._spilled = self._replayed = 0

    @classmethod
    async def open(cls, path: str, *, max_queued: int = _MAX_QUEUED) -> UsageStore:
        """Open the SQLite log at `path` (UsageLogError if it cannot be), replay any spill
        files left beside it, and start the writer."""
        return await cls.start(await SqliteSink.open(path), max_queued=max_queued)

    @classmethod
    async def start(cls, sink: UsageSink, *, max_queued: int = _MAX_QUEUED) -> UsageStore:
        store = cls(sink, max_queued=max_queued)
        try:
            await store._replay(adopt=True)
        except Exception as exc:  # the database is there but will not take them yet
            store._failed(exc)
        store._writer = asyncio.create_task(store._run(), name="usage-writer")
        return store

    @property
    def _db(self) -> Any:
        """The SQLite connection (tests/conftest.py reads the rows through it)."""
        return getattr(self._sink, "db", None)

    def record(self, row: UsageRecord) -> None:
        rows = self._rows
        rows.append(row)
        n = len(rows)
        # wake the writer when it idles (first row), may stop lingering (a full batch),
        # or must spill (memory bound): each crossing once
        if n == 1 or n == _BATCH or n == self._max_queued:
            self._wake.set()

    def stats(self) -> dict[str, int]:
        """Counters and gauges for /metrics, under stable names."""
        return {
            "queue_depth": len(self._rows) + len(self._batch),
            "spilled_pending": self._spill.pending,
            "write_failures_total": self._failures,
            "rows_dropped_total": self._dropped,
            "rows_written_total": self._written,
            "rows_spilled_total": self._spilled,
            "rows_replayed_total": self._replayed,
        }

    def degraded(self) -> str | None:
        """Why rows cannot be written now, or None when they can."""
        return self._failing

    async def flush(self) -> None:
        """Wait until every row recorded so far is in the database, or in the spill file
        while the database fails."""
        if self._writer is None or self._writer.done():
            return
        target = self._done + len(self._batch) + len(self._rows)
        self._flushing += 1
        self._wake.set()
        try:
            while self._done < target and not self._writer.done() and not self._stuck:
                self._progress.clear()
                await self._progress.wait()
        finally:
            self._flushing -= 1

    async def close(self) -> None:
        """Write every queued row (to the spill file if the database fails), then close."""
        writer, self._writer = self._writer, None
        self._closing = True
        self._wake.set()
        if writer is not None:
            try:
                async with asyncio.timeout(_CLOSE_BUDGET):
                    await asyncio.shield(writer)
            except TimeoutError:  # a write stuck in the database: keep the rows on disk instead
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
                log.error("usage log: %s did not answer within %.0f s at shutdown", self._sink.target, _CLOSE_BUDGET)
                await self._spill_memory()
        self._spill.release()
        try:
            async with asyncio.timeout(_CLOSE_BUDGET):
                await self._sink.close()
        except Exception as exc:
            log.error("usage log: closing %s: %s", self._sink.target, exc)

    # -- the writer ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not (self._closing and not self._rows and not self._batch):
            try:
                await self._step()
            except Exception:  # a bug here must not stop the usage log
                log.exception("usage log: writer error")
                await self._pause(1.0)

    async def _step(self) -> None:
        if not self._batch:
            if not self._rows:
                if self._spill.pending and not self._closing:
                    await self._probe_spill()
                else:
                    self._wake.clear()
                    await self._wake.wait()
                return
            if self._failing is None:
                await self._linger()
            rows = self._rows
            self._batch = [ROW(rows.popleft()) for _ in range(min(_BATCH, len(rows)))]
        if self._failing is not None and (self._closing or self._flushing):
            await self._spill_memory()  # no more waiting on a failing database: bounded stop
            return
        try:
            await self._sink.write(self._batch)
        except Exception as exc:
            self._failed(exc)
            if self._closing or self._flushing or len(self._rows) + len(self._batch) >= self._max_queued:
                await self._spill_memory()
            else:
                await self._backoff()
            return
        self._stuck = False
        self._left_memory(len(self._batch))
        self._written += len(self._batch)
        self._batch = []
        if self._failing is not None:
            self._recovered()
        if self._spill.pending and not self._closing:
            await self._probe_spill()

    async def _linger(self) -> None:
        # rows arriving meanwhile share one transaction: a write per request meant two
        # thread hand-offs and loop wake-ups per request (scripts/bench)
        self._wake.clear()
        if len(self._rows) < _BATCH and not self._closing and not self._flushing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LINGER):
                    await self._wake.wait()

    async def _probe_spill(self) -> None:
        """Replay the spill files; while the database fails, this is the retry."""
        try:
            await self._replay(adopt=self._failing is not None)
        except Exception as exc:
            self._failed(exc)
            await self._backoff()
            return
        if self._failing is not None:
            self._recovered()

    async def _backoff(self) -> None:
        await self._pause(self._retry_in)
        self._retry_in = min(self._retry_in * 2, _RETRY_MAX)

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short only by what cannot wait: close, flush, the memory bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not (self._closing or (self._flushing and not self._stuck) or len(self._rows) >= self._max_queued):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        reason = f"usage log: cannot write to {self._sink.target}: {' '.join(str(exc).split()) or type(exc).__name__}"
        if self._failing is None:  # one line per outage, not one per retry
            log.error("%s (rows are kept and retried)", reason)
        self._failing = reason

    def _recovered(self) -> None:
        log.warning("usage log: %s takes rows again (%d write failures so far)", self._sink.target, self._failures)
        self._failing = None
        self._retry_in = _RETRY_FIRST

    def _left_memory(self, count: int) -> None:
        self._done += count
        self._progress.set()

    async def _spill_memory(self) -> None:
        """Move every row held in memory to the spill file (or count it dropped)."""
        rows = self._batch + [ROW(r) for r in self._rows]
        self._batch = []
        self._rows.clear()
        if not rows:
            return
        try:
            await asyncio.to_thread(self._spill.append, rows)
        except Exception as exc:
            keep = 0 if self._closing else self._max_queued  # disk full too: memory is all that is left
            lost = max(0, len(rows) - keep)
            self._batch = rows[lost:]
            self._dropped += lost
            self._stuck = True
            self._left_memory(lost)
            log.error(
                "usage log: cannot spill %d rows beside %s: %s; %d rows dropped",
                len(rows),
                self._sink.target,
                exc,
                lost,
            )
            if not self._closing:
                await self._backoff()
            return
        self._spilled += len(rows)
        self._stuck = False
        self._left_memory(len(rows))
        log.warning("usage log: %d rows spilled to %s", len(rows), self._spill.own.path if self._spill.own else "?")

    async def _replay(self, *, adopt: bool) -> None:
        """Replay every spill file this process holds (adopting others' first: at start,
        and while recovering) into the sink.  Raises when the sink fails."""
        if adopt:
            found = await asyncio.to_thread(self._spill.adopt)
            if found:
                log.warning("usage log: replaying %d spilled rows into %s", found, self._sink.target)
        for spill in self._spill.files():
            await self._replay_file(spill)

    async def _replay_file(self, spill: SpillFile) -> None:
        offset = max(await self._sink.replayed(spill.spill_id), spill.replayed)
        if offset > spill.replayed:  # a replay a crash cut: those rows are in already
            spill.pending -= await asyncio.to_thread(self._spill.count, spill, spill.replayed, offset)
            spill.replayed = offset
        while True:
            rows, end, bad = await asyncio.to_thread(self._spill.read, spill, offset, _REPLAY_ROWS)
            if end == offset:
                break
            await self._sink.write(rows, (spill.spill_id, end))
            if bad:
                self._dropped += bad
                log.error("usage log: %d unreadable lines in %s skipped", bad, spill.path)
            spill.pending -= len(rows) + bad
            spill.replayed = end
            self._written += len(rows)
            self._replayed += len(rows)
            offset = end
        await asyncio.to_thread(self._spill.done, spill)
