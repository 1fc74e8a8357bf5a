"""The PostgreSQL usage sink (`database: postgresql://...`), for the batching writer in
`gateway.usage`: the same rows and columns as the SQLite log, one transaction per batch.

Schema.  Table `usage` has an identity `id` and one column per `UsageRecord` field,
typed from the field's annotation (int: BIGINT, float: DOUBLE PRECISION, str: TEXT,
bool: INTEGER 0/1 as in SQLite) with the field's default; nothing repeats the column
list.  Migrations are numbered in `_MIGRATIONS` and recorded in `usage_schema`; a
field added to `UsageRecord` later is added to the table at the next start by
`_after_migrations`.  Both run in one transaction under an advisory lock
(`gateway.postgres.migrate`): instances starting together migrate once.

Writes.  A batch goes in by binary COPY, its per-hour totals (`usage_hourly`, see
`gateway.usage_hourly`) by one upsert per group, with the spill mark (as in SQLite: how far
a spill file is replayed, table `usage_spill`) and a batch token (`usage_commit`) in
the same transaction.  The token settles the one case a client-server database adds:
the connection dies after COMMIT was sent, before its answer came.  The writer
retries the same batch (the same list); before inserting it again the sink looks the
token up and, when that commit did happen, reports success instead of writing the
rows twice.  (Only should the writer have spilled that batch meanwhile, a stop while
the database failed, can its rows come back from the spill a second time: logged.)
Every call is bounded (`_WRITE_TIMEOUT`); a connection that failed or was cut is
dropped and the next write reconnects.

A batch refused for its values (a NUL character in a model name, a count past 64
bits) is written again with every value coerced to its column's type, as SQLite does.

Spill.  A URL has no directory to spill beside: spilled rows go to `spill_dir`
(default `data/`, relative to the working directory like the SQLite default), in
files named after host, port, database and session settings (`gateway.postgres.
spill_name`), so they replay into the database they were meant for.

Opening failures raise `UsageLogError`: one line naming the database (never its
password) and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway import usage_hourly as hourly
from gateway.postgres import connect, describe, driver, migrate, one_line, spill_name, sql_literal
from gateway.usage_record import COLUMNS, Row, UsageLogError, UsageRecord, coerce_row
from gateway.usage_report import Report

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

DEFAULT_SPILL_DIR: Final = "data"
_LOCK: Final = 0x6761_7465_7573_6167  # advisory lock key of the usage migrations ("gateusag")
_WRITE_TIMEOUT: Final = 10.0  # seconds one batch may take, connecting included
_TOKENS_KEPT: Final = "7 days"  # batch tokens older than this are deleted...
_TOKEN_SWEEP_EVERY: Final = 1000  # ...every this many batches

_TYPES: Final = {"int": "BIGINT", "float": "DOUBLE PRECISION", "str": "TEXT", "bool": "INTEGER"}


def _column(field: Field[Any]) -> str:
    """`name TYPE [NOT NULL] [DEFAULT x]` from a UsageRecord field."""
    kind = str(field.type).split()[0]  # "float | None" -> "float"
    sql = f"{field.name} {_TYPES[kind]}"
    if field.default is MISSING:
        return sql + " NOT NULL"  # ts: every row has one
    if field.default is None:
        return sql
    return f"{sql} NOT NULL DEFAULT {sql_literal(field.default)}"


_MIGRATIONS: Final = (
    # v1: the table as UsageRecord has it when the database is created (later fields:
    # _after_migrations); the spill marks; the batch tokens
    f"""
    CREATE TABLE usage (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        {", ".join(_column(f) for f in fields(UsageRecord))}
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_key_ts ON usage (key_name, ts);
    CREATE TABLE usage_spill (spill_id TEXT PRIMARY KEY, replayed_bytes BIGINT NOT NULL);
    CREATE TABLE usage_commit (batch_id TEXT PRIMARY KEY, written_at TIMESTAMPTZ NOT NULL DEFAULT now());
    CREATE INDEX usage_commit_written_at ON usage_commit (written_at);
    """,
    # v2: per-hour totals (gateway.usage_hourly), filled from the rows already logged
    f"{hourly.create_sql('BIGINT')};",  # filled by _after_migrations in the same transaction
)

_MARK: Final = (
    "INSERT INTO usage_spill (spill_id, replayed_bytes) VALUES ($1, $2) "
    "ON CONFLICT (spill_id) DO UPDATE SET replayed_bytes = excluded.replayed_bytes"
)
_TOKEN: Final = "INSERT INTO usage_commit (batch_id) VALUES ($1)"
_SWEEP: Final = f"DELETE FROM usage_commit WHERE written_at < now() - interval '{_TOKENS_KEPT}'"


async def _after_migrations(conn: asyncpg.Connection) -> None:
    """Under the migration lock, at every start: add every UsageRecord field the table
    lacks (a field added since it was created), forget old batch tokens (a gateway that
    restarts often may never reach `_TOKEN_SWEEP_EVERY` batches), and fill usage_hourly
    when this start created it."""
    have = {
        row[0]
        for row in await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'usage'"
        )
    }
    for field in fields(UsageRecord):
        if field.name not in have:  # checked first: ALTER TABLE locks the table even when there is nothing to do
            await conn.execute(f"ALTER TABLE usage ADD COLUMN {_column(field)}")
    await conn.execute(_SWEEP)
    # usage_hourly created by this very transaction (applied_at is its start): fill it
    # from the rows already logged, so an upgraded gateway shows the same numbers
    if await conn.fetchval("SELECT applied_at = now() FROM usage_schema WHERE version = 2"):
        async with conn.transaction():  # a savepoint: a cursor needs a transaction block
            cursor = await conn.cursor(hourly.SELECT_ROWS)
            while rows := await cursor.fetch(hourly.BACKFILL_ROWS):
                await conn.executemany(hourly.POSTGRES_UPSERT, hourly.backfill([tuple(r) for r in rows]))


async def open_db(url: str) -> asyncpg.Connection:
    """A connection to `url`'s database, migrated; `UsageLogError` (one line) otherwise."""
    try:
        conn = await connect(url)
    except Exception as exc:  # MissingDriver, OSError, asyncpg's errors, TimeoutError
        raise UsageLogError(f"usage database {describe(url)}: {one_line(exc, url)}") from exc
    try:
        await migrate(conn, lock=_LOCK, table="usage_schema", migrations=_MIGRATIONS, after=_after_migrations)
    except BaseException as exc:
        conn.terminate()
        if isinstance(exc, Exception):
            raise UsageLogError(f"usage database {describe(url)}: {one_line(exc, url)}") from exc
        raise
    return conn


def clean_row(row: Row) -> Row:
    """`coerce_row`, then text PostgreSQL accepts: no NUL character, no lone surrogate."""
    return tuple(
        value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else value
        for value in coerce_row(row)
    )


class PostgresSink:
    """The usage log in PostgreSQL (see the module docstring); `UsageStore.start(sink)`."""

    def __init__(self, conn: asyncpg.Connection, url: str, spill_base: str | None) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = conn
        self.target = describe(url)  # in log lines and degraded(): no password
        self.spill_base = spill_base
        self._unsure: tuple[Sequence[Row], str] | None = None  # (batch, token) whose COMMIT went unanswered
        self._batches = 0
        errors = driver().exceptions
        # errors about the rows' values (server: class 22 data, class 23 constraints;
        # client: a value asyncpg cannot encode)
        self._data_errors = (
            errors.DataError,
            errors.IntegrityConstraintViolationError,
            ValueError,
            TypeError,
            OverflowError,
        )

    @classmethod
    async def open(cls, url: str, *, spill_dir: str | os.PathLike[str] = DEFAULT_SPILL_DIR) -> PostgresSink:
        conn = await open_db(url)
        directory = Path(spill_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # not fatal: only an outage needs it, and then the writer logs each drop
            log.warning("usage log: cannot create the spill directory %s: %s", directory, exc.strerror or exc)
        return cls(conn, url, str(directory / spill_name(url)))

    async def write(self, rows: Sequence[Row], mark: tuple[str, int] | None = None) -> None:
        """Insert `rows` (and the spill mark) in one transaction: all or nothing."""
        try:
            try:
                await self._bounded(rows, rows, mark)
            except self._data_errors:
                # the rows, not the database: as they are, a retry would fail forever
                await self._bounded(rows, [clean_row(row) for row in rows], mark)
        except Exception as exc:
            raise RuntimeError(one_line(exc, self._url)) from exc  # the writer logs it: no password

    async def replayed(self, spill_id: str) -> int:
        """Bytes of spill file `spill_id` already in the log (0: none)."""
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT):
                conn = await self._connection()
                value = await conn.fetchval("SELECT replayed_bytes FROM usage_spill WHERE spill_id = $1", spill_id)
        except BaseException as exc:
            self._drop()
            if isinstance(exc, Exception):
                raise RuntimeError(one_line(exc, self._url)) from exc
            raise
        return int(value or 0)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2.0)
            except Exception:  # a server that does not answer: just cut the socket
                conn.terminate()

    # -- machinery ----------------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await connect(self._url)  # the schema is there: opened once at start
        return self._conn

    def _drop(self) -> None:
        """Forget the connection (cutting it): after a failure its state is unknown."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _bounded(self, batch: Sequence[Row], rows: Sequence[Row], mark: tuple[str, int] | None) -> None:
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT):
                await self._insert(batch, rows, mark)
        except TimeoutError:
            self._drop()
            raise TimeoutError(f"no answer within {_WRITE_TIMEOUT:g} s") from None

    async def _insert(self, batch: Sequence[Row], rows: Sequence[Row], mark: tuple[str, int] | None) -> None:
        conn = await self._connection()
        if self._unsure is not None and await self._settled(conn, batch):
            return
        token = secrets.token_hex(16)
        transaction = conn.transaction()
        try:
            await transaction.start()
            if rows:
                groups = hourly.fold(rows)
                await conn.copy_records_to_table("usage", records=rows, columns=COLUMNS)
                await conn.executemany(hourly.POSTGRES_UPSERT, groups)
            if mark is not None:
                await conn.execute(_MARK, *mark)
            await conn.execute(_TOKEN, token)
            self._batches += 1
            if self._batches % _TOKEN_SWEEP_EVERY == 0:
                await conn.execute(_SWEEP)
        except asyncio.CancelledError:
            self._drop()  # cut mid-statement (the bound): the server rolls back when the socket goes
            raise
        except self._data_errors:
            try:
                await transaction.rollback()  # the connection is fine; the caller retries with clean rows
            except BaseException:
                self._drop()
                raise
            raise
        except BaseException:
            self._drop()
            raise
        try:
            await transaction.commit()
        except BaseException:
            # the COMMIT may have happened with only its answer lost: settled on the retry
            self._unsure = (batch, token)
            self._drop()
            raise

    async def _settled(self, conn: asyncpg.Connection, batch: Sequence[Row]) -> bool:
        """Whether `batch` is already in: its earlier COMMIT went unanswered but happened."""
        assert self._unsure is not None
        unsure, token = self._unsure
        committed = bool(await conn.fetchval("SELECT true FROM usage_commit WHERE batch_id = $1", token))
        self._unsure = None
        if unsure is batch:
            return committed
        if committed:  # the writer spilled that batch meanwhile (a stop while failing)
            log.error(
                "usage log: a batch of %d rows whose commit went unanswered was written; "
                "if it was also spilled, its rows will be counted twice when the spill is replayed",
                len(unsure),
            )
        return False


async def month_usage(url: str, since: float) -> dict[str, int]:
    """Tokens per key name logged since `since` (the monthly quota's seed)."""
    found = await _read(url, [(_MONTH, since)])
    return {name: int(total or 0) for name, total in (found[0] if found else [])}


async def report(url: str, start: float, month_since: float) -> Report | None:
    """`gateway usage`'s totals since `start`, and the month's per key; None when the
    database has no usage log yet."""
    found = await _read(url, [(_BY_KEY, start), (_BY_TIER, start), (_MONTH, month_since)])
    if found is None:
        return None
    by_key, by_tier, month = found
    return Report(
        [tuple(r) for r in by_key], [tuple(r) for r in by_tier], {name: int(total or 0) for name, total in month}
    )


_MONTH: Final = (
    "SELECT key_name, sum(total_tokens)::bigint FROM usage WHERE ts >= $1 AND key_name IS NOT NULL GROUP BY 1"
)
# the SQLite queries' twins (gateway.usage_report), text ordered byte-wise ("C") as SQLite orders it
_BY_KEY: Final = """
    SELECT coalesce(key_name, '(unauthenticated)') COLLATE "C", coalesce(model, '-') COLLATE "C", count(*),
           count(*) FILTER (WHERE status >= 400), sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint,
           sum(total_tokens)::bigint, sum(tokens_estimated * total_tokens)::bigint
    FROM usage WHERE ts >= $1 GROUP BY 1, 2 ORDER BY 1, 2
"""
_BY_TIER: Final = """
    SELECT coalesce(tier, '-') COLLATE "C", count(*), count(*) FILTER (WHERE status >= 400),
           sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint, sum(total_tokens)::bigint
    FROM usage WHERE ts >= $1 GROUP BY 1 ORDER BY 1
"""


async def _read(url: str, queries: list[tuple[str, float]]) -> list[list[Any]] | None:
    """Run each (query, $1) in one read-only snapshot; None when the database has no
    usage table.  Raises UsageLogError naming the database."""
    conn = None
    try:
        conn = await connect(url)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if await conn.fetchval("SELECT to_regclass('usage') IS NULL"):
                return None
            return [list(await conn.fetch(query, arg)) for query, arg in queries]
    except Exception as exc:
        raise UsageLogError(f"usage database {describe(url)}: {one_line(exc, url)}") from exc
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2.0)
