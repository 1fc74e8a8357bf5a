"""Several instances on one PostgreSQL, and PostgreSQL going away under a gateway.

Two real `gateway serve` processes share the shared server (a schema of the test's
own): every request to either leaves exactly one row.  A private server (initdb +
pg_ctl, `pg_support.OwnPostgres`) is stopped under a running gateway: requests keep
succeeding, the rows wait in memory and land when it is back; a gateway stopped
meanwhile spills them under data/ and the next start replays them, once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from conftest import FREE_KEY, base_config
from fakes import Reply, fixture_bytes, fixture_json, json_reply, sse_reply
from pg_support import (  # noqa: F401 - fixtures
    fetch,
    own_postgres_fixture,
    own_postgres_server_fixture,
    pg_url_fixture,
    require_asyncpg,
)
from processes import launch, write_config

from gateway.appkeys import USAGE
from gateway.limits import load_month_usage
from gateway.postgres import describe

require_asyncpg()

MESSAGES = [{"role": "user", "content": "Hello"}]


async def _until(check: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _reply(i: int) -> Any:
    if i % 2:
        return sse_reply(fixture_bytes("openai_chunks_text_usage.sse"))
    return json_reply(fixture_json("openai_chat_completion_text.json"))


async def _ask(client: Any, i: int, prefix: str) -> None:
    rid = {"x-request-id": f"{prefix}-{i}"}
    if i % 2:
        stream = await client.chat.completions.create(
            model="oai-small", messages=MESSAGES, stream=True, extra_headers=rid
        )
        async for _ in stream:
            pass
    else:
        await client.chat.completions.create(model="oai-small", messages=MESSAGES, extra_headers=rid)


async def _ask_many(upstream: Any, client: Any, count: int, prefix: str) -> None:
    for parity in (0, 1):  # replies go out in arrival order: one kind at a time
        upstream.script(*(_reply(i) for i in range(parity, count, 2)))
        async with asyncio.timeout(10):  # answers never wait for the log
            await asyncio.gather(*(_ask(client, i, prefix) for i in range(parity, count, 2)))


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


# -- two processes, one database ------------------------------------------------------------


async def test_two_gateway_processes_share_one_postgres_log(fake_server: Any, pg_url: str, tmp_path: Path) -> None:
    fake, url = await fake_server()
    completion = fixture_bytes("openai_chat_completion_text.json")
    fake.script(*(Reply(body=completion) for _ in range(200)))
    # a password in the URL (trust auth ignores it): it must appear in no log line
    database = pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cr3t-pw@")
    config = write_config(tmp_path, base_config({"oai": ("openai", url)}, database))
    served = await asyncio.gather(launch(tmp_path, config), launch(tmp_path, config))  # they migrate at once
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {FREE_KEY}"}) as http:

            async def ask(i: int) -> int:
                body = {"model": "oai-small", "messages": MESSAGES}
                target = f"{served[i % 2].url}/v1/chat/completions"
                async with http.post(target, json=body, headers={"x-request-id": f"two-{i}"}) as resp:
                    await resp.read()
                    return resp.status

            statuses = []
            for start in range(0, 200, 25):
                statuses += await asyncio.gather(*(ask(i) for i in range(start, start + 25)))
        assert statuses == [200] * 200
        for one in served:
            one.proc.send_signal(signal.SIGTERM)  # a graceful stop flushes the queued rows
        assert [await asyncio.wait_for(one.proc.wait(), 20) for one in served] == [0, 0]
    finally:
        for one in served:
            await one.stop()
    rows = await fetch(pg_url, "SELECT request_id, status, total_tokens FROM usage")
    assert sorted(r[0] for r in rows) == sorted(_ids("two", 200))  # each request once, from either process
    assert {(r[1], r[2] > 0) for r in rows} == {(200, True)}
    assert await fetch(pg_url, "SELECT version FROM usage_schema ORDER BY 1") == [(1,), (2,)]
    # both processes' per-hour totals add up to their rows (upserts on the same groups)
    hourly = "SELECT sum(requests)::int, sum(total_tokens)::int FROM usage_hourly"
    assert await fetch(pg_url, hourly) == [(200, sum(r[2] for r in rows))]
    assert await fetch(pg_url, "SELECT version FROM response_store_schema") == [(1,)]
    for one in served:
        assert "s3cr3t" not in one.output()


# -- PostgreSQL stopped under a running gateway ---------------------------------------------------


async def test_requests_go_on_while_postgres_is_down_and_rows_land_when_it_returns(
    start_gateway: Any, openai_upstream: Any, own_postgres: tuple[Any, str], tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    server, database = own_postgres
    upstream, url = openai_upstream
    gw = await start_gateway(base_config({"oai": ("openai", url)}, database))
    store = gw.app[USAGE]
    client = gw.client(FREE_KEY)
    await _ask_many(upstream, client, 10, "up")
    await store.flush()
    await server.astop()  # connections ended, new ones refused
    await _ask_many(upstream, client, 20, "down")
    await _until(lambda: store.degraded() is not None)
    assert store.degraded().startswith(f"usage log: cannot write to {describe(database)}: ")  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http, http.get(gw.url.replace("/v1", "/healthz")) as resp:
        assert resp.status == 503
    assert store.stats()["rows_dropped_total"] == 0
    await server.astart()
    await _until(lambda: store.stats()["rows_written_total"] == 30)
    assert store.degraded() is None
    rows = await fetch(database, "SELECT request_id, status FROM usage")
    assert sorted(r[0] for r in rows) == sorted(_ids("up", 10) + _ids("down", 20))  # once each
    assert {r[1] for r in rows} == {200}
    assert not list((tmp_path / "data").glob("*.spill.*"))


async def test_a_stop_while_postgres_is_down_spills_and_the_next_start_replays(
    start_gateway: Any, openai_upstream: Any, own_postgres: tuple[Any, str], tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    server, database = own_postgres
    upstream, url = openai_upstream
    doc = base_config({"oai": ("openai", url)}, database)
    gw = await start_gateway(doc)
    client = gw.client(FREE_KEY)
    await _ask_many(upstream, client, 4, "before")
    await gw.app[USAGE].flush()
    await server.astop()
    await _ask_many(upstream, client, 6, "during")
    await _until(lambda: gw.app[USAGE].degraded() is not None)
    started = time.monotonic()
    await gw.server.close()  # graceful stop with the database down: the rows go to the spill
    assert time.monotonic() - started < 10
    spills = list((tmp_path / "data").glob("pg-127.0.0.1-*.spill.*.jsonl"))
    assert sum(p.read_bytes().count(b"\n") for p in spills) == 6

    await server.astart()
    gw = await start_gateway(doc)  # replays the spill before the quota is seeded
    assert gw.app[USAGE].stats()["rows_replayed_total"] == 6
    rows = await fetch(database, "SELECT request_id, total_tokens FROM usage")
    assert sorted(r[0] for r in rows) == sorted(_ids("before", 4) + _ids("during", 6))
    assert await load_month_usage(database) == {"bob": sum(r[1] for r in rows)}
    assert not list((tmp_path / "data").glob("*.spill.*"))
    await gw.server.close()
    gw = await start_gateway(doc)  # nothing replays twice
    assert gw.app[USAGE].stats()["rows_replayed_total"] == 0
    assert len(await fetch(database, "SELECT 1 FROM usage")) == 10
