"""The usage log in PostgreSQL (`database: postgresql://...`), against the real server
at POSTGRES_URL, each test in a schema of its own: the batching writer's contract on
both sinks (every row, every column, the same on SQLite), values PostgreSQL refuses,
migrations by instances starting together, opening failures, a gateway whose every
request leaves one row, and `gateway usage` / the monthly-quota seed reading it."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import FREE_KEY, base_config
from fakes import fixture_bytes, fixture_json, json_reply, sse_reply
from pg_support import connect, fetch, fresh_schema, pg_url_fixture, require_asyncpg  # noqa: F401 - fixtures
from processes import free_port

from gateway.appkeys import USAGE
from gateway.cli import main as cli_main
from gateway.limits import load_month_usage
from gateway.postgres import describe
from gateway.usage import UsageLogError, UsageRecord, UsageStore
from gateway.usage_postgres import PostgresSink
from gateway.usage_record import COLUMNS, ROW

require_asyncpg()

MESSAGES = [{"role": "user", "content": "Hello"}]
LAST_FIELD = dataclasses.fields(UsageRecord)[-1]


def _record(i: int) -> UsageRecord:
    """Rows with every kind of value a column holds: None, text, 0/1, floats, big counts."""
    return UsageRecord(
        ts=1_800_000_000.0 + i / 1000,
        request_id=f"r{i}",
        endpoint="/v1/chat/completions",
        key_name=("alice", "bob", None)[i % 3],
        tier=("pro", "free", None)[i % 3],
        model="gpt-4o" if i % 2 else "модель/ü-✓",
        provider="oai",
        upstream_model=None if i % 7 else "gpt-4o-2024",
        stream=bool(i % 2),
        status=(200, 429, 499, 502)[i % 4],
        prompt_tokens=i,
        completion_tokens=2 * i,
        total_tokens=3 * i + (2**40 if i == 7 else 0),
        latency_ms=i * 1.5,
        ttfb_ms=None if i % 4 else 0.25,
        error_code=None if i % 4 == 0 else "rate_limited",
        attempts=f"oai/gpt-4o={(200, 429, 499, 502)[i % 4]}",
        tokens_estimated=i % 5 == 0,
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def log_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The usage database: an SQLite file, or a PostgreSQL URL (a schema of the test's own)."""
    if request.param == "sqlite":
        yield str(tmp_path / "usage.db")
        return
    async with fresh_schema() as url:
        yield url


async def _open(target: str, tmp_path: Path, **kw: Any) -> UsageStore:
    if target.startswith("postgresql://"):
        return await UsageStore.start(await PostgresSink.open(target, spill_dir=tmp_path / "spill"), **kw)
    return await UsageStore.open(target, **kw)


async def _rows(target: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows by id) as the database holds them."""
    if target.startswith("postgresql://"):
        conn = await connect(target)
        try:
            records = await conn.fetch("SELECT * FROM usage ORDER BY id")
            names = [a.name for a in (await conn.prepare("SELECT * FROM usage")).get_attributes()]
        finally:
            await conn.close()
        return names, [tuple(r) for r in records]
    with sqlite3.connect(target) as db:
        cur = db.execute("SELECT * FROM usage ORDER BY id")
        return [c[0] for c in cur.description], cur.fetchall()


# -- the writer's contract, on both sinks ------------------------------------------------------


async def test_the_writer_puts_every_row_and_column_in_either_sink(log_target: str, tmp_path: Path) -> None:
    store = await _open(log_target, tmp_path)
    records = [_record(i) for i in range(1234)]  # several batches
    for record in records[:700]:
        store.record(record)
    await store.flush()
    for record in records[700:]:
        store.record(record)
    await store.close()  # flushes the rest
    names, rows = await _rows(log_target)
    assert names == ["id", *COLUMNS]  # the same columns, in the same order, on both backends
    assert [row[1:] for row in rows] == [ROW(r) for r in records]  # every row, every value (True == 1)
    assert len({row[0] for row in rows}) == 1234
    assert store.stats()["rows_written_total"] == 1234 and store.stats()["rows_dropped_total"] == 0


async def test_values_postgres_refuses_are_coerced_not_lost(pg_url: str, tmp_path: Path) -> None:
    store = await _open(pg_url, tmp_path)
    store.record(UsageRecord(ts=1.0, model="nul\x00inside", status=200, total_tokens=5))
    store.record(UsageRecord(ts=2.0, model="lone \udcff surrogate", status=200))
    store.record(UsageRecord(ts=3.0, model={"a": "dict"}, status=200, prompt_tokens=2**70))  # type: ignore[arg-type]
    store.record(UsageRecord(ts=4.0, model="fine", status=200, total_tokens=7))
    await store.flush()
    assert store.degraded() is None
    await store.close()
    rows = await fetch(pg_url, "SELECT ts, model, prompt_tokens, total_tokens FROM usage ORDER BY ts")
    assert rows == [
        (1.0, "nul\ufffdinside", 0, 5),
        (2.0, "lone ? surrogate", 0, 0),
        (3.0, "{'a': 'dict'}", 0, 0),
        (4.0, "fine", 0, 7),
    ]


# -- migrations ---------------------------------------------------------------------------


async def test_instances_starting_together_migrate_once(pg_url: str, tmp_path: Path) -> None:
    sinks = await asyncio.gather(*(PostgresSink.open(pg_url, spill_dir=tmp_path) for _ in range(8)))
    for sink in sinks:
        await sink.close()
    assert await fetch(pg_url, "SELECT version FROM usage_schema ORDER BY 1") == [(1,), (2,)]
    # a table created before the newest UsageRecord field existed: the next start adds it
    conn = await connect(pg_url)
    try:
        await conn.execute(f"ALTER TABLE usage DROP COLUMN {LAST_FIELD.name}")
        await conn.execute("INSERT INTO usage (ts, status) VALUES (1.0, 200)")
    finally:
        await conn.close()
    sinks = await asyncio.gather(*(PostgresSink.open(pg_url, spill_dir=tmp_path) for _ in range(4)))
    for sink in sinks:
        await sink.close()
    names, rows = await _rows(pg_url)
    assert names == ["id", *COLUMNS]
    assert rows[0][-1] == LAST_FIELD.default  # the old row got the field's default
    assert await fetch(pg_url, "SELECT version FROM usage_schema ORDER BY 1") == [(1,), (2,)]
    # a database migrated by a newer gateway is refused, not altered
    await fetch(pg_url, "INSERT INTO usage_schema (version) VALUES (99)")
    with pytest.raises(UsageLogError, match=r"^usage database postgresql://postgres@.*: schema version 99 is newer"):
        await PostgresSink.open(pg_url, spill_dir=tmp_path)


async def test_opening_failures_name_the_database_never_the_password(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    for url in (
        f"postgresql://gw:s3cr3t-pw@127.0.0.1:{port}/usage",
        f"postgresql://gw@127.0.0.1:{port}/usage?password=s3cr3t-pw&sslmode=disable",
    ):
        started = time.monotonic()
        with pytest.raises(UsageLogError) as caught:
            await UsageStore.start(await PostgresSink.open(url, spill_dir=tmp_path))
        message = str(caught.value)
        assert message.startswith(f"usage database postgresql://gw@127.0.0.1:{port}/usage: "), message
        assert "s3cr3t" not in message and "\n" not in message and "Connect call failed" in message
        assert time.monotonic() - started < 10
    async with fresh_schema() as url:
        missing = url.replace("/test?", "/no_such_gateway_db?")
        with pytest.raises(UsageLogError, match=r'/no_such_gateway_db: database "no_such_gateway_db" does not exist'):
            await PostgresSink.open(missing, spill_dir=tmp_path)


# -- a gateway on PostgreSQL ----------------------------------------------------------------


def _reply(i: int) -> Any:
    if i % 2:
        return sse_reply(fixture_bytes("openai_chunks_text_usage.sse"))
    return json_reply(fixture_json("openai_chat_completion_text.json"))


async def _ask(client: Any, i: int, prefix: str = "pg") -> None:
    rid = {"x-request-id": f"{prefix}-{i}"}
    if i % 2:
        stream = await client.chat.completions.create(
            model="oai-small", messages=MESSAGES, stream=True, extra_headers=rid
        )
        async for _ in stream:
            pass
    else:
        await client.chat.completions.create(model="oai-small", messages=MESSAGES, extra_headers=rid)


async def test_a_gateway_on_postgres_leaves_one_row_per_request(
    start_gateway: Any, openai_upstream: Any, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the spill directory (data/) is relative to the working directory
    upstream, url = openai_upstream
    gw = await start_gateway(base_config({"oai": ("openai", url)}, pg_url))
    client = gw.client(FREE_KEY)
    for parity in (0, 1):  # replies go out in arrival order: one kind at a time
        upstream.script(*(_reply(i) for i in range(parity, 30, 2)))
        await asyncio.gather(*(_ask(client, i) for i in range(parity, 30, 2)))
    with pytest.raises(Exception) as refused:  # a model outside the free tier: a row too
        await client.chat.completions.create(model="oai-large", messages=MESSAGES, extra_headers={"x-request-id": "no"})
    assert getattr(refused.value, "status_code", None) == 403
    await gw.app[USAGE].flush()
    rows = await fetch(pg_url, "SELECT request_id, key_name, status, stream, total_tokens FROM usage")
    assert sorted(r[0] for r in rows) == sorted([*(f"pg-{i}" for i in range(30)), "no"])
    ok = [r for r in rows if r[0] != "no"]
    assert all(r[1] == "bob" and r[2] == 200 and r[4] > 0 for r in ok)
    assert sorted(r[3] for r in ok) == [0] * 15 + [1] * 15
    assert gw.app[USAGE].degraded() is None and (tmp_path / "data").is_dir()
    month = await load_month_usage(pg_url)
    assert month == {"bob": sum(r[4] for r in rows if r[1] == "bob")}


# -- gateway usage and the monthly quota, from PostgreSQL as from SQLite -------------------------


def _write_config(tmp_path: Path, database: str, name: str) -> Path:
    config = tmp_path / name
    config.write_text(
        f"database: '{database}'\nproviders: {{p: {{kind: openai, base_url: 'http://h'}}}}\n"
        "models: [{id: gpt-4o, provider: p}]\n"
        "tiers: {t: {models: [gpt-4o], limits: {tokens_per_month: 1000}}}\n"
        "keys: [{name: alice, key_sha256: " + "a" * 64 + ", tier: t}]\n"
    )
    return config


async def test_gateway_usage_and_the_month_seed_read_postgres_as_sqlite(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    records = [
        UsageRecord(ts=100.0, key_name="alice", tier="t", model="gpt-4o", status=200, prompt_tokens=3, total_tokens=5),
        UsageRecord(ts=200.0, key_name="alice", tier="t", model="gpt-4o", status=502, prompt_tokens=2, total_tokens=2),
        UsageRecord(ts=300.0, key_name="Bob", model="mini", status=499, total_tokens=7, tokens_estimated=True),
        UsageRecord(ts=now, key_name="alice", tier="t", model="gpt-4o", status=200, total_tokens=40),
        UsageRecord(ts=now, key_name=None, model=None, status=401),
    ]
    outputs = []
    for target in (str(tmp_path / "u.db"), pg_url):
        store = await _open(target, tmp_path)
        for record in records:
            store.record(record)
        await store.close()
        config = _write_config(tmp_path, target, "g.yaml")
        for args in ([], ["--tiers"], ["--since", "1970-01-01T00:04:00"]):
            assert await asyncio.to_thread(cli_main, ["usage", "--config", str(config), *args]) == 0
            outputs.append(capsys.readouterr().out)
        assert await load_month_usage(target, now=now) == {"alice": 40}
    sqlite_out, pg_out = outputs[:3], outputs[3:]
    assert pg_out == sqlite_out  # the same report, character for character
    lines = pg_out[0].splitlines()
    assert lines[1].split() == ["(unauthenticated)", "-", "1", "1", "0", "0", "0", "0"]
    assert lines[2].split() == ["Bob", "mini", "1", "1", "0", "0", "7", "7"]
    assert lines[3].split() == ["alice", "gpt-4o", "3", "1", "5", "0", "47", "0"]
    assert lines[-1].split() == ["alice", "t", "1000", "40", "960"]


async def test_gateway_usage_on_an_empty_or_unreachable_postgres(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, pg_url, "empty.yaml")
    assert await asyncio.to_thread(cli_main, ["usage", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"no usage recorded yet ({describe(pg_url)} has no usage table)\n"
    assert await load_month_usage(pg_url) == {}
    port = free_port()
    config = _write_config(tmp_path, f"postgresql://gw:s3cr3t-pw@127.0.0.1:{port}/usage", "down.yaml")
    assert await asyncio.to_thread(cli_main, ["usage", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cannot read the usage log: usage database postgresql://gw@127.0.0.1:{port}/usage: ")
    assert "s3cr3t" not in err
    with pytest.raises(UsageLogError, match=f"127.0.0.1:{port}/usage: "):  # a quota seeded with 0 would overspend
        await load_month_usage(f"postgresql://gw:s3cr3t-pw@127.0.0.1:{port}/usage")


async def test_sqlite_needs_no_asyncpg_and_postgres_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.dialects.responses.store import ResponseStoreError, open_response_store

    monkeypatch.setitem(sys.modules, "asyncpg", None)  # `import asyncpg` now fails, as when not installed
    db = str(tmp_path / "u.db")
    store = await UsageStore.open(db)
    store.record(UsageRecord(ts=time.time(), key_name="alice", status=200, total_tokens=3))
    await store.close()
    await (await open_response_store(db)).close()
    assert await load_month_usage(db) == {"alice": 3}
    url = "postgresql://gw:s3cr3t-pw@127.0.0.1:5432/test"
    with pytest.raises(UsageLogError, match=r"^usage database postgresql://gw@127.0.0.1:5432/test: asyncpg is not"):
        await PostgresSink.open(url, spill_dir=tmp_path)
    with pytest.raises(ResponseStoreError, match=r"postgresql://gw@127.0.0.1:5432/test: asyncpg is not installed"):
        await open_response_store(url)
    with pytest.raises(UsageLogError, match=r"pip install 'gateway\[postgres\]'"):
        await load_month_usage(url)


# -- a COMMIT whose answer is lost: the retry must not write the batch twice ---------------------


class CuttingProxy:
    """A TCP proxy to PostgreSQL that, once armed, forwards the next COMMIT to the server
    and then cuts the connection before the server's answer reaches the client: the
    transaction is committed, the client cannot know it (a network failure at the worst
    moment)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.armed = False
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        cut = asyncio.Event()
        answered = asyncio.Event()  # the server answered the COMMIT (into the void)

        async def to_server() -> None:
            while data := await client_r.read(65536):
                if self.armed and b"COMMIT" in data:
                    self.armed = False
                    cut.set()  # from now on nothing the server says reaches the client
                    server_w.write(data)
                    await server_w.drain()
                    await asyncio.wait_for(answered.wait(), 5)  # committed: now the network fails
                    self.cuts += 1
                    return
                server_w.write(data)
                await server_w.drain()

        async def to_client() -> None:
            while data := await server_r.read(65536):
                if cut.is_set():
                    answered.set()
                    continue
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for writer in (client_w, server_w):
            writer.transport.abort()


async def test_a_commit_whose_answer_is_lost_is_not_written_twice(pg_url: str, tmp_path: Path) -> None:
    parts = urlsplit(pg_url)
    proxy = CuttingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    try:
        via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
        store = await UsageStore.start(await PostgresSink.open(via_proxy, spill_dir=tmp_path))
        proxy.armed = True
        for i in range(50):
            store.record(_record(i))
        await _until(lambda: store.stats()["rows_written_total"] == 50)
        assert proxy.cuts == 1 and store.stats()["write_failures_total"] >= 1  # the cut happened, was retried
        await store.close()
    finally:
        await proxy.close()
    rows = await fetch(pg_url, "SELECT request_id FROM usage ORDER BY id")
    assert [r[0] for r in rows] == [f"r{i}" for i in range(50)]  # once each, although written "twice"


async def _until(check: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
