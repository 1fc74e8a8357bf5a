"""The SQLite usage sink: the schema, its migrations, and one transaction per batch.

`SqliteSink.open(path)` opens (creating if needed) the database in WAL mode and migrates
it; any failure closes the aiosqlite connection (its thread would otherwise keep the
process alive) and raises `UsageLogError` with one line naming the path and the cause.

`write(rows, mark)` inserts a batch in one transaction, rolled back whole on an error
so a retry never inserts a row twice; the batch's per-hour totals (`usage_hourly`,
see `gateway.usage_hourly`) are added in the same transaction.  `mark` = (spill file
id, byte offset) is stored in the same transaction (table `usage_spill`): how far
that spill file has been replayed, so a replay cut by a crash resumes where it
stopped instead of repeating.
A database file removed or replaced under the running gateway is noticed at the next
batch and the path opened again (a new, empty log if the file is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import aiosqlite

from gateway import usage_hourly as hourly
from gateway.usage_record import COLUMNS, Row, UsageLogError, coerce_row

# workers starting together wait for each other's migration; the first start after an
# upgrade may fill a new table from the whole log (usage_hourly: ~10 s per million rows)
OPEN_BUSY_MS: Final = 120_000
# a write waits this long for another process's lock, then fails and is retried by the
# writer with backoff: short, so a graceful stop with the database locked stays in budget
_WRITE_BUSY_MS: Final = 1000

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
    # v4: how far each spill file has been replayed (bytes), written with the rows
    "CREATE TABLE usage_spill (spill_id TEXT PRIMARY KEY, replayed_bytes INTEGER NOT NULL);",
    # v5: prompt-cache tokens (reads and writes), both part of prompt_tokens
    "ALTER TABLE usage ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE usage ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;",
    "ALTER TABLE usage ADD COLUMN upstream_id TEXT;",  # v6: the provider's own id of the answer
    # v7: per-hour totals (gateway.usage_hourly), filled from the rows already logged
    f"{hourly.create_sql('INTEGER')} WITHOUT ROWID;",
)
_USAGE_HOURLY: Final = 7  # the migration after which _fill_hourly runs, in the same transaction

_INSERT: Final = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_MARK: Final = (
    "INSERT INTO usage_spill (spill_id, replayed_bytes) VALUES (?, ?) "
    "ON CONFLICT (spill_id) DO UPDATE SET replayed_bytes = excluded.replayed_bytes"
)


# errors about a row's values (a NULL status, a dict where text goes, a 2**70 token count)
_DATA_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    TypeError,
    ValueError,
)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def open_db(path: str) -> aiosqlite.Connection:
    """Open (creating if needed) the usage database, migrated to the current schema.

    Raises `UsageLogError` on any failure, with the connection (and its thread) closed."""
    try:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connecting = aiosqlite.connect(path)
    except Exception as exc:
        raise UsageLogError(f"usage database {path}: {_one_line(exc)}") from exc
    # Should a graceful stop ever give up on a write stuck in SQLite, its thread must not
    # keep the process alive; every normal path closes the connection anyway.
    thread = getattr(connecting, "_thread", None)
    if isinstance(thread, threading.Thread):
        thread.daemon = True
    try:
        db = await connecting  # a failed connect stops the thread itself
    except Exception as exc:
        raise UsageLogError(f"usage database {path}: {_one_line(exc)}") from exc
    try:
        await _prepare(db)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await db.close()
        if isinstance(exc, Exception):
            raise UsageLogError(f"usage database {path}: {_one_line(exc)}") from exc
        raise
    return db


async def _prepare(db: aiosqlite.Connection) -> None:
    await db.execute(f"PRAGMA busy_timeout={OPEN_BUSY_MS}")  # several workers may share the file
    await switch_to_wal(db)
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
            if number == _USAGE_HOURLY:
                await _fill_hourly(db)
            await db.execute(f"PRAGMA user_version = {number}")
        await db.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            await db.rollback()
        raise
    await db.execute(f"PRAGMA busy_timeout={_WRITE_BUSY_MS}")


async def _fill_hourly(db: aiosqlite.Connection) -> None:
    """usage_hourly from the rows already logged (an upgraded gateway shows the same numbers)."""
    async with db.execute(hourly.SELECT_ROWS) as cur:
        while rows := await cur.fetchmany(hourly.BACKFILL_ROWS):
            await db.executemany(hourly.SQLITE_UPSERT, hourly.backfill(list(rows)))


async def switch_to_wal(db: aiosqlite.Connection, tries: int = 50) -> None:
    """WAL lets workers write while others read (the usage log and the stored Responses
    share the file).  Switching a new file to it needs an
    exclusive lock, for which SQLite does not wait: workers starting together retry."""
    for attempt in range(tries):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt + 1 == tries:
                raise
            await asyncio.sleep(0.1)


def _identity(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st else None


class SqliteSink:
    """The usage log in one SQLite file (see the module docstring)."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self.db = db
        self.target = path  # named in log lines and `degraded()`: a path holds no secret
        self.spill_base: str | None = None if path == ":memory:" else path
        self._file = _identity(self.spill_base)

    @classmethod
    async def open(cls, path: str) -> SqliteSink:
        return cls(await open_db(path), path)

    async def write(self, rows: Sequence[Row], mark: tuple[str, int] | None = None) -> None:
        """Insert `rows` (and the spill mark) in one transaction: all or nothing."""
        await self._same_file()
        try:
            await self._insert(rows, mark)
        except _DATA_ERRORS:
            # the rows, not the database: a retry as they are would fail forever
            await self._insert([coerce_row(row) for row in rows], mark)

    async def _insert(self, rows: Sequence[Row], mark: tuple[str, int] | None) -> None:
        try:
            if rows:
                groups = hourly.fold(rows)  # before any write: a TypeError here is a data error
                await self.db.executemany(_INSERT, rows)
                await self.db.executemany(hourly.SQLITE_UPSERT, groups)
            if mark is not None:
                await self.db.execute(_MARK, mark)
            await self.db.commit()
        except BaseException:
            # a statement that failed halfway leaves the transaction open with the rows
            # before it: without the rollback, the retry would insert those twice
            with contextlib.suppress(Exception):
                await self.db.rollback()
            raise

    async def _same_file(self) -> None:
        """Reopen the path when the file was removed or replaced: the open connection
        would go on writing, without an error, into a file nobody reads any more.
        One stat() per batch; a reopen that fails is a failed write (retried, spilled)."""
        if self.spill_base is None or _identity(self.spill_base) == self._file:
            return
        with contextlib.suppress(Exception):
            await self.db.close()
        self.db = await open_db(self.spill_base)
        self._file = _identity(self.spill_base)

    async def replayed(self, spill_id: str) -> int:
        """Bytes of spill file `spill_id` already in the log (0: none)."""
        await self._same_file()
        async with self.db.execute("SELECT replayed_bytes FROM usage_spill WHERE spill_id = ?", (spill_id,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self.db.close()
