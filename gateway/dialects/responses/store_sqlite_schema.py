"""The SQLite tables of the stored Responses, and opening a connection to them.

`connect(path, busy_ms)` opens the usage database file (created when missing; its
directory must exist), in WAL mode, migrated to our schema: two tables of our own
(`responses`, `response_items`, see `store_sqlite.py`) versioned by the one-row
table `response_store_schema`.  The usage log's `usage` table and its
`PRAGMA user_version` belong to its own migrations and are never touched.
Every failure is a `ResponseStoreError` naming the path, with the connection (and
its thread) closed.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Final

import aiosqlite

from gateway.dialects.responses.store import ResponseStoreError
from gateway.usage_sqlite import OPEN_BUSY_MS, switch_to_wal

_MIGRATIONS: Final = (
    """
    CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY,
        key_name TEXT NOT NULL,
        previous_id TEXT,
        created_at REAL NOT NULL,
        response BLOB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
    CREATE TABLE IF NOT EXISTS response_items (
        response_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        output INTEGER NOT NULL,
        item_id TEXT,
        item BLOB NOT NULL,
        PRIMARY KEY (response_id, position)
    );
    CREATE INDEX IF NOT EXISTS response_items_item_id ON response_items (item_id);
    """,
)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def connect(path: str, busy_ms: int) -> aiosqlite.Connection:
    """A connection to `path`, migrated, in autocommit mode (transactions are the
    caller's BEGIN/COMMIT, never implicit), waiting `busy_ms` for other writers."""
    if path != ":memory:" and not Path(path).parent.is_dir():
        raise ResponseStoreError(f"response store database {path}: directory {Path(path).parent} does not exist")
    connecting = aiosqlite.connect(path, isolation_level=None)
    thread = getattr(connecting, "_thread", None)
    if isinstance(thread, threading.Thread):
        thread.daemon = True  # a statement stuck in a hung disk must not keep the process alive
    try:
        db = await connecting
    except Exception as exc:
        raise ResponseStoreError(f"response store database {path}: {one_line(exc)}") from exc
    try:
        await _prepare(db, busy_ms)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await db.close()
        if isinstance(exc, Exception):
            raise ResponseStoreError(f"response store database {path}: {one_line(exc)}") from exc
        raise
    return db


async def _prepare(db: aiosqlite.Connection, busy_ms: int) -> None:
    await db.execute(f"PRAGMA busy_timeout={OPEN_BUSY_MS}")  # the usage log's: they share the file
    await switch_to_wal(db)
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("BEGIN IMMEDIATE")  # workers starting together migrate once
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS response_store_schema (version INTEGER NOT NULL)")
        rows = await db.execute_fetchall("SELECT version FROM response_store_schema")
        version = rows[0][0] if rows else 0
        if version > len(_MIGRATIONS):
            raise ResponseStoreError(f"schema version {version} is newer than this gateway's ({len(_MIGRATIONS)})")
        for script in _MIGRATIONS[version:]:
            for statement in filter(str.strip, script.split(";")):  # no ';' inside our statements
                await db.execute(statement)
        if version < len(_MIGRATIONS):
            await db.execute("DELETE FROM response_store_schema")
            await db.execute("INSERT INTO response_store_schema (version) VALUES (?)", (len(_MIGRATIONS),))
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            await db.execute("ROLLBACK")
        raise
    await db.execute(f"PRAGMA busy_timeout={busy_ms}")
