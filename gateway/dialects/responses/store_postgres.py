"""Stored Responses in PostgreSQL (see `store.py` for the contract), beside the usage
log in the `database: postgresql://...` database.

The tables are `store_sqlite.py`'s: `responses` (one row per response, the Response
object as orjson bytes with `output` emptied) and `response_items` (its input items
then its output items, by `position`), here with a foreign key that deletes a
response's items with it.  Bytes, not JSONB: JSONB reorders keys, and a stored
response must come back field for field in its order.  The schema is versioned in
`response_store_schema` and migrated under an advisory lock (`gateway.postgres`).

Expiry is the same filter on every read (`created_at > now - ttl`, the gateway's
clock); `purge_expired` deletes batches of `_PURGE_BATCH` responses, each batch
`FOR UPDATE SKIP LOCKED`, so instances sweeping at once never wait on each other.

Connections are kept by `_Connections`, a few per process (calls from concurrent
requests run side by side; PostgreSQL isolates their transactions).  Not asyncpg's
pool: it sends a reset query on every release, a round trip per call for session
state this store never leaves behind.  Every call, the wait for a connection
included, is bounded by `timeout`: past it, or on any database error, the caller gets
`StoreUnavailable`, and the connection whose call was cut is closed (its socket cut,
so the server rolls its transaction back) rather than reused in an unknown state.
A later call connects anew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final, TypeVar

import orjson

from gateway.dialects.responses.store import (
    DEFAULT_PAGE,
    DEFAULT_TIMEOUT,
    MAX_CHAIN_DEPTH,
    Json,
    Order,
    ResponseStoreError,
    StoreUnavailable,
    check_page,
    item_page,
)
from gateway.postgres import connect, describe, driver, migrate, one_line

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")
log = logging.getLogger(__name__)

_LOCK: Final = 0x6761_7465_7265_7370  # advisory lock key of these migrations ("gateresp")
_POOL_SIZE: Final = 10  # connections per process; calls beyond wait (within the bound)
_PURGE_BATCH: Final = 100  # responses per purge transaction (their items go with them)

_MIGRATIONS: Final = (
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        key_name TEXT NOT NULL,
        previous_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        response BYTEA NOT NULL
    );
    CREATE INDEX responses_created_at ON responses (created_at);
    CREATE TABLE response_items (
        response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        output BOOLEAN NOT NULL,
        item_id TEXT,
        item BYTEA NOT NULL,
        PRIMARY KEY (response_id, position)
    );
    CREATE INDEX response_items_item_id ON response_items (item_id);
    """,
)

# Same id again under the same key replaces the row; under another key it changes
# nothing ("INSERT 0 0"), which `put` refuses.
_PUT: Final = """
    INSERT INTO responses (id, key_name, previous_id, created_at, response) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (id) DO UPDATE SET previous_id = excluded.previous_id, created_at = excluded.created_at,
        response = excluded.response
    WHERE responses.key_name = excluded.key_name
"""
_ITEM_COLUMNS: Final = ("response_id", "position", "output", "item_id", "item")
# $1 id, $2 key name, $3 cutoff in every query below
_VISIBLE: Final = "key_name = $2 AND created_at > $3"

# One statement, so one snapshot: the head (position -1) then its output items.
_GET: Final = f"""
    SELECT -1 AS position, response FROM responses WHERE id = $1 AND {_VISIBLE}
    UNION ALL
    SELECT i.position, i.item FROM response_items AS i JOIN responses AS r ON r.id = i.response_id
    WHERE r.id = $1 AND r.key_name = $2 AND r.created_at > $3 AND i.output
    ORDER BY 1
"""

# The chain back to its first visible link (at most $4 links), then every link's
# items, oldest link first.  LEFT JOIN keeps a link without items, so "no rows" means
# exactly "the response is not visible".
_CONVERSATION: Final = f"""
    WITH RECURSIVE chain (id, previous_id, depth) AS (
        SELECT id, previous_id, 0 FROM responses WHERE id = $1 AND {_VISIBLE}
        UNION ALL
        SELECT r.id, r.previous_id, chain.depth + 1 FROM responses AS r JOIN chain ON r.id = chain.previous_id
        WHERE r.key_name = $2 AND r.created_at > $3 AND chain.depth + 1 < $4
    )
    SELECT i.item FROM chain LEFT JOIN response_items AS i ON i.response_id = chain.id
    ORDER BY chain.depth DESC, i.position
"""

# A row when the response is visible; its value is the position of `after` ($4; NULL
# if no `after` or not one of its input items).
_CURSOR: Final = f"""
    SELECT (SELECT position FROM response_items WHERE response_id = $1 AND NOT output AND item_id = $4
            ORDER BY position LIMIT 1)
    FROM responses WHERE id = $1 AND {_VISIBLE}
"""
_PAGE: Final = {
    "asc": "SELECT item FROM response_items WHERE response_id = $1 AND NOT output AND position > $2 "
    "ORDER BY position LIMIT $3",
    "desc": "SELECT item FROM response_items WHERE response_id = $1 AND NOT output AND position < $2 "
    "ORDER BY position DESC LIMIT $3",
}
_NO_POSITION: Final = 2**31 - 1  # "before every item" for a descending page without `after`

_FIND: Final = """
    SELECT i.item_id, i.item FROM response_items AS i JOIN responses AS r ON r.id = i.response_id
    WHERE i.item_id = ANY($1::text[]) AND r.key_name = $2 AND r.created_at > $3
    ORDER BY r.created_at, i.position
"""
_DELETE: Final = f"DELETE FROM responses WHERE id = $1 AND {_VISIBLE}"
_PURGE: Final = """
    DELETE FROM responses WHERE id IN (
        SELECT id FROM responses WHERE created_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED
    )
"""


class PostgresResponseStore:
    """`ResponseStore` in PostgreSQL; build it with `PostgresResponseStore.open`."""

    def __init__(
        self, pool: _Connections, url: str, ttl_seconds: float, timeout: float, clock: Callable[[], float]
    ) -> None:
        self._pool = pool
        self._url = url
        self._target = describe(url)
        self._ttl = ttl_seconds
        self._timeout = timeout
        self._clock = clock
        self._closed = False
        errors = driver().exceptions
        # what a failing database raises; anything else is a bug and propagates
        self._failures = (errors.PostgresError, errors.InterfaceError, OSError, ValueError)

    @classmethod
    async def open(
        cls,
        url: str,
        ttl_seconds: float,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        pool_size: int = _POOL_SIZE,
    ) -> PostgresResponseStore:
        """Connect, migrate, and keep a pool; raises `ResponseStoreError` naming the database."""
        if not ttl_seconds > 0 or not timeout > 0:
            raise ValueError("ttl_seconds and timeout must be positive")
        pool = _Connections(url, pool_size)
        try:
            conn = await pool.acquire()
            clean = False
            try:
                await migrate(conn, lock=_LOCK, table="response_store_schema", migrations=_MIGRATIONS)
                clean = True
            finally:
                pool.release(conn, clean=clean)
        except Exception as exc:  # MissingDriver, OSError, asyncpg's errors, TimeoutError, a newer schema
            await pool.close(timeout)
            raise ResponseStoreError(f"response store database {describe(url)}: {one_line(exc, url)}") from exc
        return cls(pool, url, ttl_seconds, timeout, clock)

    # -- the contract -------------------------------------------------------------------

    async def put(self, key_name: str, response: Json, input_items: list[Json]) -> None:
        response_id = response["id"]
        head = orjson.dumps({**response, "output": []})
        entries = [(False, item) for item in input_items] + [(True, item) for item in response.get("output") or ()]
        rows = [
            (response_id, position, output, _item_id(item), orjson.dumps(item))
            for position, (output, item) in enumerate(entries)
        ]
        meta = (response_id, key_name, response.get("previous_response_id"), self._clock(), head)

        async def work(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                if (await conn.execute(_PUT, *meta)).endswith(" 0"):
                    raise _Taken(f"response store: id {response_id} is taken by another key name")
                await conn.execute("DELETE FROM response_items WHERE response_id = $1", response_id)
                if rows:
                    await conn.copy_records_to_table("response_items", records=rows, columns=_ITEM_COLUMNS)

        await self._call("put", work)

    async def get(self, key_name: str, response_id: str) -> Json | None:
        rows = await self._call("get", lambda conn: conn.fetch(_GET, response_id, *self._visible(key_name)))
        if not rows:
            return None
        response: Json = orjson.loads(rows[0][1])
        response["output"] = [orjson.loads(row[1]) for row in rows[1:]]
        return response

    async def conversation(self, key_name: str, response_id: str) -> list[Json] | None:
        args = (response_id, *self._visible(key_name), MAX_CHAIN_DEPTH)
        rows = await self._call("conversation", lambda conn: conn.fetch(_CONVERSATION, *args))
        if not rows:
            return None
        return [orjson.loads(row[0]) for row in rows if row[0] is not None]

    async def input_items(
        self,
        key_name: str,
        response_id: str,
        *,
        limit: int = DEFAULT_PAGE,
        order: Order = "desc",
        after: str | None = None,
    ) -> Json | None:
        check_page(limit, order)
        visible = self._visible(key_name)

        async def work(conn: asyncpg.Connection) -> Json | None:
            # one snapshot across both queries
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                found = await conn.fetch(_CURSOR, response_id, *visible, after)
                if not found:
                    return None
                position = found[0][0]
                if after is not None and position is None:
                    return item_page([], False)  # `after` is not one of its items: nothing follows it
                if position is None:
                    position = -1 if order == "asc" else _NO_POSITION
                rows = await conn.fetch(_PAGE[order], response_id, position, limit + 1)
            items = [orjson.loads(row[0]) for row in rows[:limit]]
            return item_page(items, len(rows) > limit)

        return await self._call("input_items", work)

    async def find_items(self, key_name: str, item_ids: Iterable[str]) -> dict[str, Json]:
        wanted = list(dict.fromkeys(item_ids))
        if not wanted:
            return {}
        rows = await self._call("find_items", lambda conn: conn.fetch(_FIND, wanted, *self._visible(key_name)))
        # ordered oldest first: the newest copy of an item wins
        return {row[0]: orjson.loads(row[1]) for row in rows}

    async def delete(self, key_name: str, response_id: str) -> bool:
        status = await self._call("delete", lambda conn: conn.execute(_DELETE, response_id, *self._visible(key_name)))
        return not status.endswith(" 0")  # "DELETE n"; the items go with it (ON DELETE CASCADE)

    async def purge_expired(self) -> int:
        cutoff = self._clock() - self._ttl
        total = 0
        while True:
            # one short transaction per batch: requests' calls go in between
            status = await self._call("purge_expired", lambda conn: conn.execute(_PURGE, cutoff, _PURGE_BATCH))
            done = int(status.split()[-1])
            total += done
            if done < _PURGE_BATCH:
                log.debug("response store: purged %d expired responses", total)
                return total

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close(self._timeout)

    # -- machinery ----------------------------------------------------------------------

    def _visible(self, key_name: str) -> tuple[str, float]:
        return key_name, self._clock() - self._ttl

    async def _call(self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection within the bound; failures become StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable(f"response store database {self._target}: closed")
        conn: asyncpg.Connection | None = None
        clean = False
        try:
            async with asyncio.timeout(self._timeout):
                conn = await self._pool.acquire()  # may wait for a free slot or a new connection
                result = await work(conn)
                clean = True
                return result
        except _Taken as exc:
            clean = True  # its transaction was rolled back: the connection is fine
            raise StoreUnavailable(str(exc)) from None
        except TimeoutError:
            raise StoreUnavailable(
                f"response store database {self._target}: {what} took longer than {self._timeout:g} s"
            ) from None
        except self._failures as exc:
            cause = one_line(exc, self._url)
            raise StoreUnavailable(f"response store database {self._target}: {what}: {cause}") from exc
        finally:
            if conn is not None:
                # cut or failed mid-call, its state is unknown (and the server may be
                # gone): closed, not reused
                self._pool.release(conn, clean=clean)


class _Connections:
    """Up to `size` connections to `url`, reused while they work."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._idle: list[asyncpg.Connection] = []
        self._busy: set[asyncpg.Connection] = set()
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> asyncpg.Connection:
        await self._slots.acquire()
        try:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                conn = None if candidate.is_closed() else candidate  # the server closed it meanwhile
            if conn is None:
                conn = await connect(self._url)
        except BaseException:
            self._slots.release()
            raise
        self._busy.add(conn)
        return conn

    def release(self, conn: asyncpg.Connection, *, clean: bool) -> None:
        self._busy.discard(conn)
        if clean and not conn.is_closed() and not conn.is_in_transaction():
            self._idle.append(conn)
        else:
            conn.terminate()
        self._slots.release()

    async def close(self, timeout: float) -> None:
        idle, self._idle = self._idle, []
        for conn in self._busy:  # a call still running at shutdown: nothing to wait for
            conn.terminate()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(conn.close() for conn in idle))
        except Exception:  # a server that does not answer: cut the sockets
            for conn in idle:
                conn.terminate()


class _Taken(Exception):
    """`put` of an id another key name owns (rolled back; raised to the caller as StoreUnavailable)."""


def _item_id(item: Json) -> str | None:
    value = item.get("id")
    return value if type(value) is str else None
