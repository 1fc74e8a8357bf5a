"""The stored-responses database (issue 12): the contract against both backends,
real SQLite files in tmp_path and the real PostgreSQL server (a schema per test).

Responses are real ones: recorded OpenAI traffic, or rendered by the dialect from a
hub completion; input items come from `items.input_items`.  Failures are real
conditions: for SQLite, another connection holding the write lock (what another
worker or process does), a file overwritten with garbage, a missing directory; for
PostgreSQL, another session's table lock, a private server stopped and started, a
port nobody listens on."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from openai_schema import validate_response, validate_response_item_list
from pg_support import (  # noqa: F401 - fixtures
    connect,
    fetch,
    fresh_schema,
    own_postgres_fixture,
    own_postgres_server_fixture,
    pg_url_fixture,
    unavailable,
)
from processes import free_port
from responses_support import context, load

from gateway.dialects.responses.items import input_items
from gateway.dialects.responses.render import render_response
from gateway.dialects.responses.store import (
    MAX_CHAIN_DEPTH,
    ResponseStore,
    ResponseStoreError,
    StoreUnavailable,
    open_response_store,
)
from gateway.dialects.responses.store_sqlite import SQLiteResponseStore
from gateway.postgres import describe
from gateway.usage_sqlite import _MIGRATIONS as USAGE_MIGRATIONS
from gateway.usage_sqlite import open_db

Json = dict[str, Any]
TTL = 1000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "gateway.db")


@pytest.fixture(params=["sqlite", "postgres"])
async def target(request: pytest.FixtureRequest, db_path: str) -> AsyncIterator[str]:
    """The database the contract runs against: an SQLite file, or a PostgreSQL URL
    whose search_path is a schema of this test's own."""
    if request.param == "sqlite":
        yield db_path
        return
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        unavailable("asyncpg is not installed (pip install -e '.[dev]')")
    async with fresh_schema() as url:
        yield url


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., Awaitable[ResponseStore]]]:
    stores: list[ResponseStore] = []

    async def open_(target: str, ttl: float = TTL, **kw: Any) -> ResponseStore:
        if target.startswith("postgresql://"):
            from gateway.dialects.responses.store_postgres import PostgresResponseStore

            stores.append(await PostgresResponseStore.open(target, ttl, **kw))
        else:
            stores.append(await SQLiteResponseStore.open(target, ttl, **kw))
        return stores[-1]

    yield open_
    for store in stores:
        await store.close()


def turn(text: str, answer: str, previous: str | None = None) -> tuple[Json, list[Json]]:
    """One turn as the handler has it: the Response rendered from a hub completion,
    and the request's normalised input items."""
    body = {"model": "test-model", "input": [{"role": "user", "content": text}], "previous_response_id": previous}
    completion = {"choices": [{"message": {"content": answer}, "finish_reason": "stop"}], "usage": None}
    response = render_response(completion, context(body, previous_response_id=previous))
    return response, input_items(body)


async def table_rows(target: str, table: str) -> int:
    if target.startswith("postgresql://"):
        return (await fetch(target, f"SELECT count(*) FROM {table}"))[0][0]
    with sqlite3.connect(target) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def test_put_get_round_trip_of_recorded_traffic(target: str) -> None:
    store: ResponseStore = await open_response_store(target, TTL)
    try:
        response = load("openai_response_reasoning_function_call.json")  # reasoning + function call output
        items = input_items(load("openai_responses_request_function_call_output_roundtrip.json"))
        assert await store.get("alice", response["id"]) is None
        await store.put("alice", response, items)
        got = await store.get("alice", response["id"])
        assert got == response and list(got) == list(response)  # every field, in order
        validate_response(got)
        assert await store.conversation("alice", response["id"]) == items + response["output"]
        page = await store.input_items("alice", response["id"], order="asc", limit=100)
        assert page is not None and page["data"] == items
        ids = [response["output"][0]["id"], items[0]["id"], "msg_nowhere"]
        assert await store.find_items("alice", ids) == {ids[0]: response["output"][0], ids[1]: items[0]}
    finally:
        await store.close()


async def test_another_key_name_sees_exactly_what_a_missing_id_shows(opened: Any, target: str) -> None:
    store = await opened(target)
    first, first_items = turn("hi", "hello")
    await store.put("alice", first, first_items)
    for key, rid in (("bob", first["id"]), ("alice", "resp_missing"), ("", first["id"])):
        assert await store.get(key, rid) is None
        assert await store.conversation(key, rid) is None
        assert await store.input_items(key, rid) is None
        assert await store.delete(key, rid) is False
    for key in ("bob", "", "Alice"):
        assert await store.find_items(key, [first_items[0]["id"], first["output"][0]["id"]]) == {}
    assert await store.get("alice", first["id"]) == first  # bob's delete removed nothing
    # a chain never crosses key names, even should a caller link bob's turn to alice's
    bobs, bobs_in = turn("mine", "yours", first["id"])
    await store.put("bob", bobs, bobs_in)
    assert await store.conversation("bob", bobs["id"]) == bobs_in + bobs["output"]
    assert await store.conversation("alice", bobs["id"]) is None
    # an id taken by another key name is never overwritten
    with pytest.raises(StoreUnavailable, match="another key name"):
        await store.put("bob", {**first, "output": []}, [])
    assert await store.get("alice", first["id"]) == first


async def test_a_chain_of_three_is_every_turn_in_order(opened: Any, target: str) -> None:
    store = await opened(target)
    one, one_in = turn("one", "uno")
    two, two_in = turn("two", "dos", one["id"])
    three, three_in = turn("three", "tres", two["id"])
    for response, items in ((one, one_in), (two, two_in), (three, three_in)):
        await store.put("alice", response, items)
    expected = one_in + one["output"] + two_in + two["output"] + three_in + three["output"]
    assert await store.conversation("alice", three["id"]) == expected
    assert await store.conversation("alice", two["id"]) == expected[:4]
    assert await store.conversation("alice", one["id"]) == expected[:2]
    texts = [part["text"] for item in expected for part in item["content"]]
    assert texts == ["one", "uno", "two", "dos", "three", "tres"]
    # a deleted link ends the walk: the history starts after the gap
    assert await store.delete("alice", two["id"])
    assert await store.conversation("alice", three["id"]) == three_in + three["output"]


async def test_the_walk_stops_at_the_depth_cap(opened: Any, target: str) -> None:
    store = await opened(target)
    previous = None
    responses = []
    for i in range(MAX_CHAIN_DEPTH + 5):
        response, items = turn(f"q{i}", f"a{i}", previous)
        await store.put("alice", response, items)
        responses.append(response)
        previous = response["id"]
    items = await store.conversation("alice", previous)
    assert len(items) == 2 * MAX_CHAIN_DEPTH  # the newest MAX_CHAIN_DEPTH links, two items each
    assert items[0]["content"][0]["text"] == "q5"
    assert items[-1] == responses[-1]["output"][0]


async def test_expired_rows_vanish_at_once_and_purge_removes_them(opened: Any, target: str) -> None:
    clock = Clock()
    store = await opened(target, ttl=100, clock=clock)
    old, old_in = turn("old", "answer")
    await store.put("alice", old, old_in)
    clock.now += 60
    new, new_in = turn("new", "answer", old["id"])
    await store.put("alice", new, new_in)
    clock.now += 39.9  # old is 99.9 s old: still there
    assert await store.get("alice", old["id"]) == old
    assert await store.purge_expired() == 0
    clock.now += 0.2  # old is past its TTL, new is not
    assert await store.get("alice", old["id"]) is None
    assert await store.conversation("alice", old["id"]) is None
    assert await store.input_items("alice", old["id"]) is None
    assert await store.find_items("alice", [old_in[0]["id"]]) == {}
    assert await store.delete("alice", old["id"]) is False
    assert await store.conversation("alice", new["id"]) == new_in + new["output"]  # the aged-out turn is gone
    assert await table_rows(target, "responses") == 2  # invisible, not yet purged
    assert await store.purge_expired() == 1
    assert await table_rows(target, "responses") == 1 and await table_rows(target, "response_items") == 2
    assert await store.get("alice", new["id"]) == new


async def test_purge_goes_in_batches_until_nothing_expired_is_left(opened: Any, target: str) -> None:
    clock = Clock()
    store = await opened(target, ttl=10, clock=clock)
    for i in range(250):  # more than two purge batches
        await store.put("alice", *turn(f"q{i}", "a"))
    clock.now += 11
    keep, keep_in = turn("kept", "a")
    await store.put("bob", keep, keep_in)
    assert await store.purge_expired() == 250
    assert await table_rows(target, "responses") == 1 and await table_rows(target, "response_items") == 2
    assert await store.purge_expired() == 0


async def test_input_items_pages_as_openai(opened: Any, target: str) -> None:
    store = await opened(target)
    first, first_in = turn("earlier", "turn")
    await store.put("alice", first, first_in)
    body = {"model": "m", "input": [{"role": "user", "content": f"part {i}"} for i in range(7)]}
    items = input_items(body)
    response, _ = turn("x", "y", first["id"])
    await store.put("alice", response, items)
    ids = [item["id"] for item in items]

    async def walk(order: str, limit: int) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = await store.input_items("alice", response["id"], limit=limit, order=order, after=after)
            validate_response_item_list(page)
            assert page["object"] == "list" and 1 <= len(page["data"]) <= limit
            assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"], page["data"][-1]["id"])
            seen += [item["id"] for item in page["data"]]
            if not page["has_more"]:
                return seen
            after = page["last_id"]

    default = await store.input_items("alice", response["id"])  # desc, 20: this response's own items only
    assert default is not None and default["data"] == items[::-1] and default["has_more"] is False
    assert await walk("desc", 3) == ids[::-1]
    assert await walk("asc", 3) == ids
    assert await walk("asc", 7) == ids
    assert await walk("asc", 1) == ids
    page = await store.input_items("alice", response["id"], limit=2, order="asc", after=ids[4])
    assert [item["id"] for item in page["data"]] == ids[5:7] and page["has_more"] is False
    page = await store.input_items("alice", response["id"], limit=2, after=ids[4])
    assert [item["id"] for item in page["data"]] == [ids[3], ids[2]] and page["has_more"] is True
    # after the last item, or an id that is not one of its input items: an empty page
    for after in (ids[-1], first_in[0]["id"], "msg_unknown"):
        empty = await store.input_items("alice", response["id"], order="asc", after=after)
        assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": True}, {"order": "up"}):
        with pytest.raises(ValueError):
            await store.input_items("alice", response["id"], **bad)


async def test_delete_then_everything_is_not_found(opened: Any, target: str) -> None:
    store = await opened(target)
    response, items = turn("bye", "ciao")
    await store.put("alice", response, items)
    assert await store.delete("alice", response["id"]) is True
    assert await store.get("alice", response["id"]) is None
    assert await store.conversation("alice", response["id"]) is None
    assert await store.input_items("alice", response["id"]) is None
    assert await store.delete("alice", response["id"]) is False
    assert await table_rows(target, "responses") == 0 and await table_rows(target, "response_items") == 0


async def test_put_again_replaces_the_stored_response(opened: Any, target: str) -> None:
    store = await opened(target)
    response, items = turn("q", "first answer")
    await store.put("alice", response, items)
    better = {**response, "output": [], "status": "incomplete"}
    await store.put("alice", better, items[:0])
    assert await store.get("alice", response["id"]) == better
    assert await store.conversation("alice", response["id"]) == []
    assert await table_rows(target, "response_items") == 0


async def test_two_workers_share_the_file(opened: Any, db_path: str) -> None:
    usage = await open_db(db_path)  # the usage log opens the file first, as at start-up
    try:
        a, b = await opened(db_path), await opened(db_path)
        response, items = turn("shared", "yes")
        await a.put("alice", response, items)
        assert await b.get("alice", response["id"]) == response
        turns = [turn(f"q{i}", "a") for i in range(40)]
        await asyncio.gather(*(store.put("alice", *t) for store, t in zip([a, b] * 20, turns, strict=True)))
        for t in turns:
            assert await a.get("alice", t[0]["id"]) == t[0] == await b.get("alice", t[0]["id"])
        assert await b.delete("alice", response["id"]) is True
        assert await a.get("alice", response["id"]) is None
        async with usage.execute("PRAGMA user_version") as cur:
            assert (await cur.fetchone())[0] == len(USAGE_MIGRATIONS)  # the usage log's own migrations, untouched
        async with usage.execute("SELECT count(*) FROM usage") as cur:
            assert (await cur.fetchone())[0] == 0
    finally:
        await usage.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT version FROM response_store_schema").fetchall() == [(1,)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_locked_database_fails_within_the_bound_then_recovers(opened: Any, db_path: str) -> None:
    store = await opened(db_path, timeout=0.5)
    response, items = turn("q", "a")
    await store.put("alice", response, items)
    other = sqlite3.connect(db_path, isolation_level=None)  # another worker holding the write lock
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"{db_path}: put: database is locked"):
            await store.put("alice", *turn("q2", "a2"))
        assert time.monotonic() - started < 0.5  # SQLite gave up first (busy timeout = 3/4 of the bound)
        assert await store.get("alice", response["id"]) == response  # WAL: reads go on
        other.execute("ROLLBACK")
        await store.put("alice", *turn("q3", "a3"))
    finally:
        other.close()


async def test_a_call_stuck_in_sqlite_is_cut_at_the_bound_never_a_hang(opened: Any, db_path: str) -> None:
    # SQLite would wait 5 s for the lock; the call's bound is 0.3 s
    store = await opened(db_path, timeout=0.3, busy_timeout=5)
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        response, items = turn("q", "a")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="put took longer than 0.3 s"):
            await store.put("alice", response, items)
        assert time.monotonic() - started < 0.6
        other.execute("ROLLBACK")
        await store.put("alice", response, items)  # the cut transaction was rolled back, the connection serves
        assert await store.get("alice", response["id"]) == response
        other.execute("BEGIN IMMEDIATE")  # and the store does not keep the write lock
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_broken_database_is_unavailable_not_a_crash(opened: Any, db_path: str) -> None:
    store = await opened(db_path)
    response, items = turn("q", "a")
    await store.put("alice", response, items)
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    Path(db_path).write_bytes(b"\x17" * Path(db_path).stat().st_size)
    started = time.monotonic()
    for call in (
        store.put("alice", *turn("q2", "a2")),
        store.get("alice", response["id"]),
        store.conversation("alice", response["id"]),
        store.purge_expired(),
    ):
        with pytest.raises(StoreUnavailable, match=f"{db_path}: .*file is not a database"):
            await call
    assert time.monotonic() - started < 2
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("alice", response["id"])


async def test_opening_names_the_path_of_what_is_wrong(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such" / "dir" / "gateway.db")
    with pytest.raises(ResponseStoreError, match=f"{missing}: directory .*/dir does not exist"):
        await open_response_store(missing, TTL)
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("this is not a database, it is a text file with enough bytes in it to have a header\n" * 5)
    with pytest.raises(ResponseStoreError, match=f"{not_a_db}: file is not a database"):
        await open_response_store(str(not_a_db), TTL)
    with pytest.raises(ResponseStoreError, match=f"{tmp_path}: unable to open"):
        await open_response_store(str(tmp_path), TTL)  # a directory
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("CREATE TABLE response_store_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO response_store_schema VALUES (99)")
    with pytest.raises(ResponseStoreError, match=f"{newer}: schema version 99 is newer"):
        await open_response_store(str(newer), TTL)


# -- PostgreSQL: what differs from a file ----------------------------------------------------


async def test_postgres_instances_starting_together_migrate_once_and_share(opened: Any, pg_url: str) -> None:
    stores = await asyncio.gather(*(opened(pg_url) for _ in range(6)))  # six instances starting at once
    assert await fetch(pg_url, "SELECT version FROM response_store_schema") == [(1,)]
    a, b = stores[0], stores[-1]
    response, items = turn("shared", "yes")
    await a.put("alice", response, items)
    assert await b.get("alice", response["id"]) == response
    turns = [turn(f"q{i}", "a") for i in range(40)]
    await asyncio.gather(*(store.put("alice", *t) for store, t in zip(stores * 7, turns, strict=False)))
    for t in turns:
        assert await a.get("alice", t[0]["id"]) == t[0] == await b.get("alice", t[0]["id"])
    assert await b.delete("alice", response["id"]) is True
    assert await a.get("alice", response["id"]) is None


async def test_postgres_a_call_stuck_on_a_lock_is_cut_at_the_bound(opened: Any, pg_url: str) -> None:
    store = await opened(pg_url, timeout=0.3)
    response, items = turn("q", "a")
    await store.put("alice", response, items)
    other = await connect(pg_url)  # another session holding the table
    try:
        lock = other.transaction()
        await lock.start()
        await other.execute("LOCK TABLE responses IN ACCESS EXCLUSIVE MODE")
        for call in (store.put("alice", *turn("q2", "a2")), store.get("alice", response["id"])):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"took longer than 0.3 s"):
                await call
            assert time.monotonic() - started < 2.0  # the bound, not the lock, ends the call
        await lock.rollback()
        assert await store.get("alice", response["id"]) == response  # a new connection serves
        await store.put("alice", *turn("q3", "a3"))
        # the cut sessions are gone: nothing of theirs holds the table
        async with asyncio.timeout(5), other.transaction():
            await other.execute("LOCK TABLE responses IN ACCESS EXCLUSIVE MODE")
    finally:
        await other.close()


async def test_postgres_stopped_is_unavailable_within_the_bound_then_serves_again(
    opened: Any, own_postgres: tuple[Any, str]
) -> None:
    server, url = own_postgres
    store = await opened(url, timeout=1.0)
    response, items = turn("q", "a")
    await store.put("alice", response, items)
    await server.astop()
    started = time.monotonic()
    for call in (store.get("alice", response["id"]), store.put("alice", *turn("q2", "a2")), store.purge_expired()):
        with pytest.raises(StoreUnavailable, match=f"{describe(url)}: "):
            await call
    assert time.monotonic() - started < 3 * 1.0 + 2.0
    await server.astart()
    assert await store.get("alice", response["id"]) == response
    later, later_in = turn("later", "b", response["id"])
    await store.put("alice", later, later_in)
    assert await store.conversation("alice", later["id"]) == items + response["output"] + later_in + later["output"]


async def test_postgres_opening_names_the_database_never_the_password(pg_url: str) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ResponseStoreError) as caught:
        await open_response_store(f"postgresql://gw:s3cr3t-pw@127.0.0.1:{port}/test", TTL)
    message = str(caught.value)
    assert message.startswith(f"response store database postgresql://gw@127.0.0.1:{port}/test: ")
    assert "s3cr3t" not in message and "\n" not in message and time.monotonic() - started < 10
    conn = await connect(pg_url)
    try:
        await (await open_response_store(pg_url, TTL)).close()  # creates the tables
        await conn.execute("INSERT INTO response_store_schema (version) VALUES (99)")
    finally:
        await conn.close()
    with pytest.raises(ResponseStoreError, match=r"postgresql://postgres@.*: schema version 99 is newer"):
        await open_response_store(pg_url, TTL)
