"""Stored Responses (`store: true`): the interface every backend implements.

A stored response is its Response object plus its input items (as
`items.input_items` normalised them) and its output items, readable, chainable
and deletable only under the key name (the API key's configured `name`) that
created it, and only until it is `ttl_seconds` old.  An unknown id, an expired
one and one stored under another key name all answer the same "not found"
(None / False): a caller cannot learn that an id exists for someone else.

- `put(key_name, response, input_items)`: one short transaction; the handler
  awaits it before `response.completed`, so a response is readable as soon as its
  answer ends.  Storing the same id again under the same key replaces it.
- `get`: the Response object, `output` included.
- `conversation(key_name, id)`: what `previous_response_id = id` continues: the
  conversation of the response's own `previous_response_id` (recursively), then
  its input items, then its output items.  Each response stores only its own
  items and the chain is walked on read, so storage grows linearly with turns.
  The walk stops at a link that is gone (expired, deleted) and after
  `MAX_CHAIN_DEPTH` links: the history then starts at the oldest link still
  reachable, as a conversation whose first turns aged out.  The requested
  response itself must be visible, or the answer is None.
- `input_items(key_name, id, limit=, order=, after=)`: one page of
  `GET /v1/responses/{id}/input_items`, the response's OWN input items (the spec
  says only "input items for a given response", which does not confirm that a
  chained response lists its predecessors' items too, so they are left out).
- `find_items(key_name, ids)`: stored items by id, for `item_reference` inputs.
- `delete`: True when something visible was deleted.
- `purge_expired()`: removes expired rows in short batches (for an hourly task);
  expired rows are invisible at once whatever the purge does.

Failures while serving raise `StoreUnavailable` within the backend's bound
(2 s by default), never a hang: the handler logs a warning and still answers.
Opening failures raise `ResponseStoreError` naming the database.  Backends:
`store_sqlite.SQLiteResponseStore` and `store_postgres.PostgresResponseStore`;
`open_response_store` picks one from the `database` setting, so callers never
name one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, Protocol

Json = dict[str, Any]
Order = Literal["asc", "desc"]

DEFAULT_TTL_SECONDS: Final = 30 * 24 * 3600.0  # OpenAI keeps stored responses 30 days
DEFAULT_TIMEOUT: Final = 2.0  # seconds any call may take before StoreUnavailable
MAX_CHAIN_DEPTH: Final = 1000  # links `conversation` walks (far past any context window)
MAX_PAGE: Final = 100  # input_items `limit` range is 1..MAX_PAGE, as at OpenAI
DEFAULT_PAGE: Final = 20


class ResponseStoreError(Exception):
    """The store cannot be used; the message is one line naming the database and the cause."""


class StoreUnavailable(ResponseStoreError):  # noqa: N818 - the name the handlers catch
    """A call failed or ran out of time (database locked, broken, unreachable).
    The request it served goes on: the handler logs it and flags the answer."""


class ResponseStore(Protocol):
    async def put(self, key_name: str, response: Json, input_items: list[Json]) -> None: ...

    async def get(self, key_name: str, response_id: str) -> Json | None: ...

    async def conversation(self, key_name: str, response_id: str) -> list[Json] | None: ...

    async def input_items(
        self,
        key_name: str,
        response_id: str,
        *,
        limit: int = DEFAULT_PAGE,
        order: Order = "desc",
        after: str | None = None,
    ) -> Json | None: ...

    async def find_items(self, key_name: str, item_ids: Iterable[str]) -> dict[str, Json]: ...

    async def delete(self, key_name: str, response_id: str) -> bool: ...

    async def purge_expired(self) -> int: ...

    async def close(self) -> None: ...


def check_page(limit: int, order: str) -> None:
    """Raise ValueError naming the parameter when a page request is out of range
    (the handler validates the query first; this guards every backend alike)."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")


def item_page(items: list[Json], has_more: bool) -> Json:
    """The `ResponseItemList` for one page.  An empty page has null first/last ids
    (the spec types them as strings but there is no id to give)."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0].get("id") if items else None,
        "last_id": items[-1].get("id") if items else None,
        "has_more": has_more,
    }


async def open_response_store(
    database: str,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> ResponseStore:
    """The store for the gateway's `database` setting: an SQLite file, or a
    `postgresql://` URL (then asyncpg is needed).

    An SQLite file's directory must exist (the usage log, opened first, creates it);
    raises `ResponseStoreError` naming the database when it cannot be opened."""
    # imported here so a deployment loads only its own backend (and both backends can
    # import this module's names without a cycle)
    from gateway.config import is_postgres

    if is_postgres(database):
        from gateway.dialects.responses.store_postgres import PostgresResponseStore

        return await PostgresResponseStore.open(database, ttl_seconds, timeout=timeout, clock=clock)
    from gateway.dialects.responses.store_sqlite import SQLiteResponseStore

    return await SQLiteResponseStore.open(database, ttl_seconds, timeout=timeout, clock=clock)
