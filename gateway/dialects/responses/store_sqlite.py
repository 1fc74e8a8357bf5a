"""Stored Responses in the usage database's SQLite file (see `store.py` for the contract).

Two tables of our own beside the usage log's (created and versioned by
`store_sqlite_schema.py`):

- `responses`: one row per response: the key name that owns it, its
  `previous_response_id`, when it was stored, and the Response object as orjson
  with `output` emptied (the output items live in the next table, once).
- `response_items`: the response's input items (`output = 0`) then its output
  items (`output = 1`), numbered by `position` in that order, so a conversation
  is "every link oldest first, items by position".

Expiry is a filter, `created_at > now - ttl`, on every read, so a lowered TTL
applies at once to rows already stored; `purge_expired` deletes in batches of
`_PURGE_BATCH` responses, one short transaction each.

Several worker processes share the file: every transaction is short, writes take
the lock up front (BEGIN IMMEDIATE) and wait for other writers up to a busy
timeout below the call's bound, so a locked database fails the call with
`StoreUnavailable` (SQLite gave up) before the bound.  The bound itself
(`asyncio.timeout`) catches anything slower (a hung disk, calls queued behind a
slow one): the caller gets `StoreUnavailable` at once, a long statement is
interrupted (SQLite's busy wait is not interruptible: it runs out by itself), and
the cut transaction is rolled back before the connection is used again.  One
connection per process, its calls taken in turn by a lock: transactions on one
connection must not interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import aiosqlite
import orjson

from gateway.dialects.responses.store import (
    DEFAULT_PAGE,
    DEFAULT_TIMEOUT,
    MAX_CHAIN_DEPTH,
    Json,
    Order,
    StoreUnavailable,
    check_page,
    item_page,
)
from gateway.dialects.responses.store_sqlite_schema import connect, one_line

T = TypeVar("T")
log = logging.getLogger(__name__)

_PURGE_BATCH: Final = 100  # responses per purge transaction (each with its items)
_IDS_PER_QUERY: Final = 500  # under SQLite's bound-parameter limit
_NO_POSITION: Final = 1 << 62  # "before every item" for a descending page without `after`

# Same id again under the same key replaces the row; under another key it changes
# nothing (rowcount 0), which `put` refuses.
_PUT: Final = """
    INSERT INTO responses (id, key_name, previous_id, created_at, response) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET previous_id = excluded.previous_id, created_at = excluded.created_at,
        response = excluded.response
    WHERE responses.key_name = excluded.key_name
"""
_PUT_ITEM: Final = "INSERT INTO response_items (response_id, position, output, item_id, item) VALUES (?, ?, ?, ?, ?)"
_VISIBLE: Final = "key_name = :key AND created_at > :cutoff"

# One statement, so one snapshot: the head (position -1) then its output items.
_GET: Final = f"""
    SELECT -1, response FROM responses WHERE id = :id AND {_VISIBLE}
    UNION ALL
    SELECT i.position, i.item FROM response_items AS i JOIN responses AS r ON r.id = i.response_id
    WHERE r.id = :id AND r.key_name = :key AND r.created_at > :cutoff AND i.output = 1
    ORDER BY 1
"""

# The chain from the response back to its first visible link (at most :depth links),
# then every link's items, oldest link first.  LEFT JOIN keeps a link without items, so
# "no rows" means exactly "the response is not visible".
_CONVERSATION: Final = f"""
    WITH RECURSIVE chain (id, previous_id, depth) AS (
        SELECT id, previous_id, 0 FROM responses WHERE id = :id AND {_VISIBLE}
        UNION ALL
        SELECT r.id, r.previous_id, chain.depth + 1 FROM responses AS r JOIN chain ON r.id = chain.previous_id
        WHERE r.key_name = :key AND r.created_at > :cutoff AND chain.depth + 1 < :depth
    )
    SELECT i.item FROM chain LEFT JOIN response_items AS i ON i.response_id = chain.id
    ORDER BY chain.depth DESC, i.position
"""

# A row when the response is visible; its value is the position of `after` (NULL if
# no `after` or not one of its input items).
_CURSOR: Final = f"""
    SELECT (SELECT position FROM response_items WHERE response_id = :id AND output = 0 AND item_id = :after
            ORDER BY position LIMIT 1)
    FROM responses WHERE id = :id AND {_VISIBLE}
"""
_PAGE: Final = {
    "asc": "SELECT item FROM response_items WHERE response_id = ? AND output = 0 AND position > ? "
    "ORDER BY position LIMIT ?",
    "desc": "SELECT item FROM response_items WHERE response_id = ? AND output = 0 AND position < ? "
    "ORDER BY position DESC LIMIT ?",
}


class SQLiteResponseStore:
    """`ResponseStore` on an SQLite file; build it with `SQLiteResponseStore.open`."""

    def __init__(
        self, db: aiosqlite.Connection, path: str, ttl_seconds: float, timeout: float, clock: Callable[[], float]
    ) -> None:
        self._db = db
        self._path = path
        self._ttl = ttl_seconds
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._in_transaction = False  # a transaction was begun and not yet ended
        self._settling: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str,
        ttl_seconds: float,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        busy_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SQLiteResponseStore:
        """Open the store in `path` (created if missing; its directory must exist).

        `timeout` bounds every call; `busy_timeout` (default 3/4 of it) is how long a
        write waits for another process's lock.  Raises `ResponseStoreError`."""
        if not ttl_seconds > 0 or not timeout > 0:
            raise ValueError("ttl_seconds and timeout must be positive")
        busy_ms = int(1000 * (timeout * 0.75 if busy_timeout is None else busy_timeout))
        db = await connect(path, busy_ms)
        return cls(db, path, ttl_seconds, timeout, clock)

    # -- the contract -------------------------------------------------------------------

    async def put(self, key_name: str, response: Json, input_items: list[Json]) -> None:
        response_id = response["id"]
        # serialised before taking the lock: the transaction holds the file's write
        # lock, and every worker waits on it, so nothing slow happens inside
        head = orjson.dumps({**response, "output": []})
        rows = [
            (response_id, position, output, _item_id(item), orjson.dumps(item))
            for position, (output, item) in enumerate(
                [(0, item) for item in input_items] + [(1, item) for item in response.get("output") or ()]
            )
        ]
        meta = (response_id, key_name, response.get("previous_response_id"), self._clock(), head)

        async def work(db: aiosqlite.Connection) -> None:
            async with self._transaction(db):
                if (await db.execute(_PUT, meta)).rowcount == 0:
                    raise StoreUnavailable(f"response store: id {response_id} is taken by another key name")
                await db.execute("DELETE FROM response_items WHERE response_id = ?", (response_id,))
                await db.executemany(_PUT_ITEM, rows)

        await self._call("put", work)

    async def get(self, key_name: str, response_id: str) -> Json | None:
        params = {"id": response_id, **self._visible(key_name)}
        rows = await self._call("get", lambda db: db.execute_fetchall(_GET, params))
        if not rows:
            return None
        response: Json = orjson.loads(rows[0][1])
        response["output"] = [orjson.loads(item) for _, item in rows[1:]]
        return response

    async def conversation(self, key_name: str, response_id: str) -> list[Json] | None:
        params = {"id": response_id, "depth": MAX_CHAIN_DEPTH, **self._visible(key_name)}
        rows = await self._call("conversation", lambda db: db.execute_fetchall(_CONVERSATION, params))
        if not rows:
            return None
        return [orjson.loads(item) for (item,) in rows if item is not None]

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
        params = {"id": response_id, "after": after, **self._visible(key_name)}

        async def work(db: aiosqlite.Connection) -> Json | None:
            async with self._transaction(db, "BEGIN"):  # a read snapshot across both queries
                found = await db.execute_fetchall(_CURSOR, params)
                if not found:
                    return None
                position = found[0][0]
                if after is not None and position is None:
                    return item_page([], False)  # `after` is not one of its items: nothing follows it
                if position is None:
                    position = -1 if order == "asc" else _NO_POSITION
                rows = list(await db.execute_fetchall(_PAGE[order], (response_id, position, limit + 1)))
            items = [orjson.loads(item) for (item,) in rows[:limit]]
            return item_page(items, len(rows) > limit)

        return await self._call("input_items", work)

    async def find_items(self, key_name: str, item_ids: Iterable[str]) -> dict[str, Json]:
        wanted = list(dict.fromkeys(item_ids))
        visible = self._visible(key_name)

        async def work(db: aiosqlite.Connection) -> dict[str, Json]:
            found: dict[str, Json] = {}
            for start in range(0, len(wanted), _IDS_PER_QUERY):
                chunk = wanted[start : start + _IDS_PER_QUERY]
                sql = (
                    "SELECT i.item_id, i.item FROM response_items AS i JOIN responses AS r ON r.id = i.response_id "
                    f"WHERE i.item_id IN ({', '.join('?' for _ in chunk)}) AND r.key_name = ? AND r.created_at > ? "
                    "ORDER BY r.created_at, i.position"
                )
                for item_id, item in await db.execute_fetchall(sql, (*chunk, visible["key"], visible["cutoff"])):
                    found[item_id] = orjson.loads(item)  # ordered oldest first: the newest copy wins
            return found

        return await self._call("find_items", work) if wanted else {}

    async def delete(self, key_name: str, response_id: str) -> bool:
        params = {"id": response_id, **self._visible(key_name)}

        async def work(db: aiosqlite.Connection) -> bool:
            async with self._transaction(db):
                deleted = (await db.execute(f"DELETE FROM responses WHERE id = :id AND {_VISIBLE}", params)).rowcount
                if deleted:
                    await db.execute("DELETE FROM response_items WHERE response_id = ?", (response_id,))
            return bool(deleted)

        return await self._call("delete", work)

    async def purge_expired(self) -> int:
        cutoff = self._clock() - self._ttl

        async def batch(db: aiosqlite.Connection) -> int:
            async with self._transaction(db):
                found = await db.execute_fetchall(
                    "SELECT id FROM responses WHERE created_at <= ? LIMIT ?", (cutoff, _PURGE_BATCH)
                )
                ids = [(response_id,) for (response_id,) in found]
                await db.executemany("DELETE FROM response_items WHERE response_id = ?", ids)
                await db.executemany("DELETE FROM responses WHERE id = ?", ids)
            return len(ids)

        total = 0
        while True:
            # the lock is let go between batches, so requests' calls go in between
            done = await self._call("purge_expired", batch)
            total += done
            if done < _PURGE_BATCH:
                log.debug("response store: purged %d expired responses", total)
                return total

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._settling is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._settling), self._timeout)
        with contextlib.suppress(Exception):
            await self._db.close()

    # -- machinery ----------------------------------------------------------------------

    def _visible(self, key_name: str) -> dict[str, Any]:
        return {"key": key_name, "cutoff": self._clock() - self._ttl}

    async def _call(self, what: str, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `work` alone on the connection within the bound; failures become StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable(f"response store database {self._path}: closed")
        try:
            async with asyncio.timeout(self._timeout), self._lock:
                try:
                    if self._in_transaction:
                        await self._rollback()
                    return await work(self._db)
                except asyncio.CancelledError:
                    # cut short (the bound, or the caller's own cancellation) while the
                    # statement may still run in aiosqlite's thread: stop it, and end its
                    # transaction before anyone uses the connection again
                    with contextlib.suppress(Exception):
                        await self._db.interrupt()  # never suspends, so it runs even when cancelled
                    if self._in_transaction:
                        self._settling = asyncio.ensure_future(self._settle())
                    raise
        except TimeoutError:
            raise StoreUnavailable(
                f"response store database {self._path}: {what} took longer than {self._timeout:g} s"
            ) from None
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a closed connection, an undecodable row
            raise StoreUnavailable(f"response store database {self._path}: {what}: {one_line(exc)}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self, db: aiosqlite.Connection, begin: str = "BEGIN IMMEDIATE") -> AsyncIterator[None]:
        self._in_transaction = True  # before BEGIN: a cancelled BEGIN may still succeed in the thread
        await db.execute(begin)
        try:
            yield
        except Exception:
            await self._rollback()
            raise
        await db.execute("COMMIT")
        self._in_transaction = False

    async def _rollback(self) -> None:
        self._in_transaction = False
        with contextlib.suppress(sqlite3.Error):  # "no transaction is active" after a failed BEGIN
            await self._db.execute("ROLLBACK")

    async def _settle(self) -> None:
        with contextlib.suppress(Exception):
            async with self._lock:
                if self._in_transaction:
                    log.debug("response store: rolling back a transaction cut short")
                    await self._rollback()


def _item_id(item: Json) -> str | None:
    value = item.get("id")
    return value if type(value) is str else None
