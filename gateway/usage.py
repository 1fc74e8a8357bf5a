"""The usage log: one SQLite row per API request, written off the request path.

Handlers `record()` a finished `UsageRecord` (no await, no I/O); a single writer
task drains the queue in batches into SQLite (WAL mode) through aiosqlite.
`close()` flushes everything still queued, so a graceful stop loses no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

import aiosqlite

log = logging.getLogger(__name__)

_BATCH: Final = 500
_LINGER: Final = 0.2  # seconds a row may wait for others before it is written
CLIENT_CLOSED: Final = 499  # nginx's status for "client closed request"

_MIGRATIONS: Final = (
    """
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        request_id TEXT,
        endpoint TEXT,
        key_name TEXT,
        tier TEXT,
        model TEXT,
        provider TEXT,
        upstream_model TEXT,
        stream INTEGER NOT NULL DEFAULT 0,
        status INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        latency_ms REAL,
        ttfb_ms REAL,
        error_code TEXT
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_key_ts ON usage (key_name, ts);
    """,
    "ALTER TABLE usage ADD COLUMN attempts TEXT;",  # v2: every upstream attempt, "label=status ..."
    # v3: 1 when the token counts are the gateway's estimate (the real usage never came:
    # client hang-up, upstream cut)
    "ALTER TABLE usage ADD COLUMN tokens_estimated INTEGER NOT NULL DEFAULT 0;",
)


@dataclass(slots=True)
class UsageRecord:
    ts: float
    request_id: str | None = None
    endpoint: str | None = None
    key_name: str | None = None
    tier: str | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    error_code: str | None = None
    attempts: str | None = None
    tokens_estimated: bool = False  # the token counts are our estimate, not the upstream's report

    def add_usage(self, usage: Any) -> None:
        """Take token counts from an OpenAI-shaped usage object, tolerating junk."""
        if not isinstance(usage, dict):
            return
        self.prompt_tokens = _int(usage.get("prompt_tokens"))
        self.completion_tokens = _int(usage.get("completion_tokens"))
        self.total_tokens = _int(usage.get("total_tokens")) or self.prompt_tokens + self.completion_tokens


_COLUMNS: Final = tuple(f.name for f in fields(UsageRecord))
# a C-level getter: dataclasses.astuple deep-copies and cost 4 % of a request (scripts/bench)
_ROW: Final = operator.attrgetter(*_COLUMNS)
_INSERT: Final = f"INSERT INTO usage ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


async def open_db(path: str) -> aiosqlite.Connection:
    """Open (creating if needed) the usage database, migrated to the current schema."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA busy_timeout=5000")  # several workers may share the file
    await _switch_to_wal(db)
    await db.execute("PRAGMA synchronous=NORMAL")
    # BEGIN IMMEDIATE takes the write lock before the version is read: workers starting
    # together migrate once, the others wait (busy_timeout) and find it done
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            for statement in filter(str.strip, script.split(";")):  # no ';' inside our statements
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {number}")
        await db.commit()
    except BaseException:
        await db.rollback()
        await db.close()
        raise
    return db


async def _switch_to_wal(db: aiosqlite.Connection, tries: int = 50) -> None:
    """WAL lets workers write while others read.  Switching a new file to it needs an
    exclusive lock, for which SQLite does not wait: workers starting together retry."""
    for attempt in range(tries):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt + 1 == tries:
                raise
            await asyncio.sleep(0.1)


class UsageStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._queue: asyncio.Queue[UsageRecord | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # cuts the writer's linger short (flush, close, a full batch)
        self.written = 0

    @classmethod
    async def open(cls, path: str) -> UsageStore:
        store = cls(await open_db(path))
        store._writer = asyncio.create_task(store._run(), name="usage-writer")
        return store

    def record(self, row: UsageRecord) -> None:
        self._queue.put_nowait(row)
        if self._queue.qsize() >= _BATCH:
            self._wake.set()

    async def close(self) -> None:
        """Flush every queued row, then close the database."""
        if self._writer is not None:
            self._queue.put_nowait(None)
            self._wake.set()
            await self._writer
            self._writer = None
        await self._db.close()

    async def flush(self) -> None:
        """Wait until everything queued so far is on disk (tests, shutdown)."""
        self._wake.set()
        await self._queue.join()

    async def _run(self) -> None:
        stop = False
        while not stop:
            batch = [await self._queue.get()]
            # linger so rows arriving meanwhile share one transaction: a write per request
            # meant two thread hand-offs and loop wake-ups per request (scripts/bench)
            if batch[0] is not None and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_LINGER):
                        await self._wake.wait()
            self._wake.clear()
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [_ROW(r) for r in batch if r is not None]
            stop = len(rows) != len(batch)
            try:
                if rows:
                    await self._db.executemany(_INSERT, rows)
                    await self._db.commit()
                    self.written += len(rows)
            except Exception:  # a full disk must not kill the writer; the rows are reported lost
                log.exception("usage log: could not write %d rows", len(rows))
            finally:
                for _ in batch:
                    self._queue.task_done()


def now() -> float:
    return time.time()
