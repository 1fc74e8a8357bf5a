"""Limits shared across gateway processes through Redis (state.redis): two real
`gateway serve` processes on different ports, one Redis (the shared server, under a
key prefix of the test's own), a fake upstream.  Exact rpm and concurrency under
concurrent load spread over both, a shared monthly quota, the slot of a SIGKILLed
process freed by its lease; then a private Redis stopped and restarted under a
gateway: `open` keeps serving, `closed` answers 503 + Retry-After, never a 500 or a
hang, and counting resumes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ENV, FREE_KEY, base_config
from fakes import FakeUpstream, Reply, fixture_bytes, fixture_json, json_reply
from processes import ROOT, Served, free_port, wait_until_serving, write_config
from redis_support import REDIS_URL, OwnRedis, require_redis_package, shared_redis

from gateway.appkeys import LIMITER
from gateway.limits import InProcessLimiter
from gateway.limits_redis import RedisLimiter

require_redis_package()

MESSAGES = [{"role": "user", "content": "Hello"}]  # estimated at 3 tokens
TEXT = fixture_json("openai_chat_completion_text.json")  # usage: 379 tokens
FIRST_EVENTS = fixture_bytes("openai_chunks_text_usage.sse").split(b"\n\n", 2)[0] + b"\n\n"


def limited_doc(url: str, db: Path, limits: dict[str, Any], **state: Any) -> dict[str, Any]:
    doc = base_config({"oai": ("openai", url)}, str(db))
    doc["tiers"]["free"]["limits"] = limits  # bob's tier
    # tests share a loaded machine: a generous timeout, and `closed`, so a slow Redis
    # shows up as a 503, never as an extra admission that would pass for a counting bug
    doc["state"] = {"redis": REDIS_URL, "on_error": "closed", "timeout_ms": 2000, **state}
    return doc


async def serve(tmp_path: Path, config: Path, env: dict[str, str]) -> Served:
    """`gateway serve` with extra environment (the Redis key prefix, the lease)."""
    port = free_port()
    log = tmp_path / f"gateway-{port}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port),
            cwd=ROOT, env={**ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    served = Served(proc, port, config, log)
    await wait_until_serving(served)
    return served


@pytest.fixture
async def pair(
    tmp_path: Path, fake_server: Any
) -> AsyncIterator[Callable[..., Awaitable[tuple[FakeUpstream, Served, Served]]]]:
    """Starts two gateways on one config (one usage log) and one Redis prefix."""
    started: list[Served] = []
    async with shared_redis() as (_, prefix):

        async def start(limits: dict[str, Any], lease_ttl: float = 30.0) -> tuple[FakeUpstream, Served, Served]:
            fake, url = await fake_server()
            config = write_config(tmp_path, limited_doc(url, tmp_path / "usage.db", limits))
            env = {"GATEWAY_REDIS_PREFIX": prefix, "GATEWAY_REDIS_LEASE_TTL": str(lease_ttl)}
            one = await serve(tmp_path, config, env)
            started.append(one)
            two = await serve(tmp_path, config, env)
            started.append(two)
            return fake, one, two

        try:
            yield start
        finally:
            for served in started:
                await served.stop()


async def call(session: aiohttp.ClientSession, served: Served, **extra: Any) -> tuple[int, dict[str, Any], Any]:
    async with asyncio.timeout(30):  # a liveness bound: no request may hang
        async with session.post(
            f"{served.url}/v1/chat/completions",
            json={"model": "oai-small", "messages": MESSAGES, **extra},
            headers={"Authorization": f"Bearer {FREE_KEY}"},
        ) as resp:
            return resp.status, dict(resp.headers), await resp.json(content_type=None)


def fresh_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


async def test_rpm_is_exact_across_two_processes(pair: Any) -> None:
    fake, one, two = await pair({"rpm": 10})
    fake.script(*(json_reply(TEXT) for _ in range(30)))
    async with fresh_session() as session:
        answers = await asyncio.gather(*(call(session, (one, two)[i % 2]) for i in range(30)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 10 + [429] * 20
    assert {body["error"]["code"] for status, _, body in answers if status == 429} == {"rate_limit_exceeded"}
    assert len(fake.requests) == 10  # the refused ones never reached the upstream
    remaining = sorted(int(h["x-ratelimit-remaining-requests"]) for status, h, _ in answers if status == 200)
    assert remaining == list(range(10))  # each admission saw every other, whichever process it met


async def test_concurrency_is_exact_across_two_processes(pair: Any) -> None:
    fake, one, two = await pair({"concurrency": 3})
    # slow answers: all ten arrive while three run (a fourth upstream call would get the fake's 599)
    fake.script(*(Reply(json=TEXT, delay=3.0) for _ in range(3)))
    async with fresh_session() as session:
        answers = await asyncio.gather(*(call(session, (one, two)[i % 2]) for i in range(10)))
        assert sorted(status for status, _, _ in answers) == [200] * 3 + [429] * 7
        refused = [body["error"]["message"] for status, _, body in answers if status == 429]
        assert all("3 requests in flight" in message for message in refused)
        fake.script(json_reply(TEXT), json_reply(TEXT))
        assert (await call(session, one))[0] == 200  # every slot was released, on both
        assert (await call(session, two))[0] == 200


async def test_the_monthly_quota_is_shared(pair: Any) -> None:
    fake, one, two = await pair({"tokens_per_month": 500})
    fake.script(*(json_reply(TEXT) for _ in range(4)))
    async with fresh_session() as session:
        first = await call(session, one)  # settles at 379 tokens
        assert first[0] == 200
        second = await call(session, two)  # 379 + 3 estimated <= 500
        assert second[0] == 200 and second[1]["x-ratelimit-remaining-tokens-month"] == "118"
        for served in (one, two):  # 758 used: refused on both, though each served only 379
            status, headers, body = await call(session, served)
            assert status == 429 and body["error"]["code"] == "insufficient_quota"
            assert headers["x-should-retry"] == "false"


async def test_a_killed_process_frees_its_slot_within_the_lease(pair: Any) -> None:
    lease = 2.4  # renewed every 0.8 s: a 1.6 s stall of a loaded machine still keeps it
    fake, one, two = await pair({"concurrency": 1}, lease_ttl=lease)
    fake.script(Reply(body=FIRST_EVENTS, content_type="text/event-stream", stall=True))
    async with fresh_session() as session:
        stream = await session.post(
            f"{one.url}/v1/chat/completions",
            json={"model": "oai-small", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {FREE_KEY}"},
        )
        assert stream.status == 200
        await stream.content.readline()  # the stream is live: its slot is taken
        await asyncio.sleep(2 * lease)  # well past one lease: only renewals hold it
        assert (await call(session, two))[0] == 429
        one.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        fake.script(json_reply(TEXT))
        while (status := (await call(session, two))[0]) == 429 and time.monotonic() - killed < 30:
            await asyncio.sleep(0.1)
        freed_after = time.monotonic() - killed
        stream.close()
    assert status == 200
    assert freed_after < lease + 5  # within the lease (plus a loaded machine's slack)


# -- Redis stopped, frozen and restarted under a gateway (a private redis-server) ------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def gateway_on(start_gateway: Any, openai_upstream: Any, tmp_path: Path, redis_url: str, on_error: str) -> Any:
    upstream, url = openai_upstream
    doc = limited_doc(url, tmp_path / "usage.db", {"rpm": 100})
    doc["state"] = {"redis": redis_url, "on_error": on_error, "timeout_ms": 200}
    upstream.script(*(json_reply(TEXT) for _ in range(100)))
    return await start_gateway(doc)


async def chat(gw: Any) -> tuple[int, dict[str, Any], Any]:
    async with fresh_session() as session:
        async with asyncio.timeout(30), session.post(
            gw.url + "/chat/completions",
            json={"model": "oai-small", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {FREE_KEY}"},
        ) as resp:  # fmt: skip
            return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def counted_again(gw: Any) -> int:
    """Requests until one is counted in Redis again (a liveness bound); its remaining-requests."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, headers, _ = await chat(gw)
        assert status in (200, 503)
        if "x-ratelimit-remaining-requests" in headers:
            return int(headers["x-ratelimit-remaining-requests"])
        await asyncio.sleep(0.05)
    raise AssertionError("Redis came back but requests are still not counted")


async def outage(gw: Any, on_error: str) -> None:
    for _ in range(3):
        status, headers, body = await chat(gw)
        if on_error == "open":
            assert status == 200 and "x-ratelimit-remaining-requests" not in headers
        else:
            assert (status, headers["Retry-After"], body["error"]["code"]) == (503, "1", "limits_unavailable")


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_redis_stopped_and_restarted_mid_run(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path, own_redis: OwnRedis, on_error: str
) -> None:
    gw = await gateway_on(start_gateway, openai_upstream, tmp_path, own_redis.url, on_error)
    assert isinstance(gw.app[LIMITER], RedisLimiter)
    status, headers, _ = await chat(gw)
    assert (status, headers["x-ratelimit-remaining-requests"]) == (200, "99")
    own_redis.stop()  # down: connections refused
    await outage(gw, on_error)
    own_redis.start()
    assert await counted_again(gw) == 99  # restarted empty: counting starts over
    own_redis.freeze()  # hung: every call runs into the timeout
    await outage(gw, on_error)
    own_redis.thaw()
    remaining = await counted_again(gw)
    assert (await chat(gw))[1]["x-ratelimit-remaining-requests"] == str(remaining - 1)
    assert all(row["status"] in (200, 503) for row in await gw.usage_rows())  # never a 500
    limiter = gw.app[LIMITER]
    assert limiter.errors_total >= 6
    assert limiter.open_admissions_total == (6 if on_error == "open" else 0)


async def test_a_gateway_starts_with_redis_down_and_counts_once_it_is_up(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = OwnRedis(tmp_path)  # its port, nothing listening yet
    with caplog.at_level(logging.WARNING):
        gw = await gateway_on(start_gateway, openai_upstream, tmp_path, own.url, "open")
    assert any("does not answer at start" in r.getMessage() for r in caplog.records)
    status, headers, _ = await chat(gw)
    assert status == 200 and "x-ratelimit-remaining-requests" not in headers
    own.start()
    try:
        assert await counted_again(gw) == 99
    finally:
        own.stop()


def test_without_state_redis_limits_stay_in_process(tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.config import parse_config

    doc = base_config({"oai": ("openai", "http://127.0.0.1:9/v1")}, str(tmp_path / "u.db"))
    assert isinstance(create_app(parse_config(doc, ENV))[LIMITER], InProcessLimiter)
    doc["state"] = {"redis": "redis://127.0.0.1:9/0"}
    assert isinstance(create_app(parse_config(doc, ENV))[LIMITER], RedisLimiter)  # no I/O until started
