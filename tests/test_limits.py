"""Tier capacity: rpm, tpm, concurrency and the monthly quota, each tripped and
recovered on a controllable clock; OpenAI's x-ratelimit-* headers; 429 bodies the
SDK raises as RateLimitError; the quota across a restart; 50 requests at once."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import ENV, FREE_KEY, PRO_KEY, Gateway, base_config
from fakes import FakeUpstream, Reply, fixture_bytes, fixture_json, json_reply, sse_reply
from openai_schema import validate_error

from gateway.appkeys import LIMITER, LIVE
from gateway.config import ConfigError, Limits, parse_config
from gateway.limits import (
    InProcessLimiter,
    duration,
    estimate_chat_tokens,
    estimate_embedding_tokens,
    month_start,
    next_month_start,
)
from gateway.runtime import Runtime

MESSAGES = [{"role": "user", "content": "Hello"}]  # estimated at ceil(len("user" "Hello") / 4) = 3 tokens
TEXT = fixture_json("openai_chat_completion_text.json")  # usage: 379 tokens
STREAM = fixture_bytes("openai_chunks_text_usage.sse")  # usage: 44 tokens
T0 = 1_780_000_000.0  # 2026-05-28, far from a month boundary


def limited(url: str, db: str, free: dict[str, Any], pro: dict[str, Any] | None = None, **key: Any) -> dict[str, Any]:
    doc = base_config({"oai": ("openai", url)}, db)
    doc["tiers"]["free"]["limits"] = free
    if pro is not None:
        doc["tiers"]["pro"]["limits"] = pro
    if key:
        doc["keys"][1]["limits"] = key  # bob, on the free tier
    return doc


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def start(start_gateway: Any, url: str, tmp_path: Path, free: dict[str, Any], **kw: Any) -> tuple[Gateway, Clock]:
    gw = await start_gateway(limited(url, str(tmp_path / "u.db"), free, **kw))
    clock = Clock()
    limiter = gw.app[LIMITER]
    assert isinstance(limiter, InProcessLimiter)
    limiter.clock = clock
    return gw, clock


async def chat(gw: Gateway, key: str = FREE_KEY, **kw: Any) -> Any:
    raw = await gw.client(key).chat.completions.with_raw_response.create(model="oai-small", messages=MESSAGES, **kw)
    return raw


def rejected_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    validate_error(body)
    return body["error"]


# -- configuration ---------------------------------------------------------------------------


def test_limits_inherit_field_by_field_and_keys_override() -> None:
    doc = base_config({"oai": ("openai", "http://x")}, "db")
    doc["tiers"]["free"]["limits"] = {"rpm": 20, "tpm": 40000, "concurrency": 2, "tokens_per_month": 1000000}
    doc["tiers"]["pro"]["limits"] = {"rpm": 600, "tpm": 2000000, "concurrency": 20}
    doc["keys"][0]["limits"] = {"rpm": 60}
    config = parse_config(doc, ENV)
    assert config.tiers["free"].limits == Limits(20, 40000, 2, 1000000)
    assert config.tiers["pro"].limits == Limits(600, 2000000, 20, 1000000)  # the quota is inherited
    keys = {k.name: k for k in config.keys.values()}
    assert keys["alice"].limits == Limits(60, 2000000, 20, 1000000)
    assert keys["bob"].limits == Limits(20, 40000, 2, 1000000)


def test_no_limits_means_unlimited() -> None:
    config = parse_config(base_config({"oai": ("openai", "http://x")}, "db"), ENV)
    assert all(k.limits == Limits() for k in config.keys.values())


def test_bad_limits_are_named_with_their_place() -> None:
    doc = base_config({"oai": ("openai", "http://x")}, "db")
    doc["tiers"]["free"]["limits"] = {"rpm": -1, "tpm": 1.5, "burst": 3}
    doc["keys"][0]["limits"] = {"concurrency": "many", "tokens_per_month": 0}
    doc["tiers"]["pro"]["limits"] = [1]
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, ENV)
    errors = exc.value.errors
    assert "tiers.free.limits.rpm: must be a positive integer, got -1" in errors
    assert "tiers.free.limits.tpm: must be a positive integer, got 1.5" in errors
    assert any(e.startswith("tiers.free.limits.burst: unknown field") for e in errors)
    assert "tiers.pro.limits: must be a mapping, got a list" in errors
    assert "keys[0].limits.concurrency: must be a positive integer, got 'many'" in errors
    assert "keys[0].limits.tokens_per_month: must be a positive integer, got 0" in errors


# -- the limiter on its own ----------------------------------------------------------------


async def test_limiter_rpm_window_and_retry_after() -> None:
    lim, limits = InProcessLimiter(), Limits(rpm=2)
    a = await lim.admit("k", limits, 1, now=100.0)
    b = await lim.admit("k", limits, 1, now=110.0)
    assert (a.rejected, a.remaining_requests, b.remaining_requests) == (None, 1, 0)
    assert b.reset_requests == 60.0
    c = await lim.admit("k", limits, 1, now=120.0)
    assert c.rejected == "rpm" and c.retry_after == 40.0  # the request at 100 leaves the window at 160
    assert (await lim.admit("k", limits, 1, now=159.9)).rejected == "rpm"
    assert (await lim.admit("k", limits, 1, now=160.0)).rejected is None
    assert (await lim.admit("other", limits, 1, now=160.0)).rejected is None  # per key


async def test_limiter_tpm_reconciles_the_estimate_with_real_usage() -> None:
    lim, limits = InProcessLimiter(), Limits(tpm=100)
    a = await lim.admit("k", limits, 30, now=0.0)
    assert a.remaining_tokens == 70
    await lim.release(a, 90, now=1.0)  # the answer really cost 90
    b = await lim.admit("k", limits, 20, now=2.0)
    assert b.rejected == "tpm" and b.retry_after == 58.0 and b.remaining_tokens == 10
    c = await lim.admit("k", limits, 10, now=2.0)
    assert c.rejected is None and c.remaining_tokens == 0
    await lim.release(c, 5)
    assert (await lim.admit("k", limits, 5, now=3.0)).rejected is None
    assert (await lim.admit("k", limits, 101, now=3.0)).rejected == "too_large"
    assert (await lim.admit("k", limits, 20, now=60.0)).rejected is None  # the 90 left the window


async def test_limiter_concurrency_and_month_rollover() -> None:
    lim = InProcessLimiter()
    limits = Limits(concurrency=1, tokens_per_month=100)
    a = await lim.admit("k", limits, 10, now=T0)
    b = await lim.admit("k", limits, 10, now=T0)
    assert (a.rejected, b.rejected) == (None, "concurrency")
    await lim.release(a, 100)
    await lim.release(a, 100)  # twice: harmless
    c = await lim.admit("k", limits, 1, now=T0 + 1)
    assert c.rejected == "tokens_per_month" and c.retry_after == next_month_start(T0) - (T0 + 1)
    d = await lim.admit("k", limits, 1, now=next_month_start(T0))
    assert d.rejected is None and d.remaining_month == 99


def test_month_boundaries_are_utc() -> None:
    assert month_start(T0) == 1_777_593_600.0  # 2026-05-01T00:00Z
    assert next_month_start(T0) == 1_780_272_000.0  # 2026-06-01T00:00Z
    assert next_month_start(1_796_083_200.0 - 1) == 1_796_083_200.0  # December -> 2027-01-01


def test_reset_durations_in_openai_format() -> None:
    assert [duration(s) for s in (0, 0.02, 1, 17.76, 360, 3723.5)] == [
        "0ms",
        "20ms",
        "1s",
        "17.76s",
        "6m0s",
        "1h2m3.5s",
    ]


def test_prompt_estimates() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "abcdefgh"},
                    {"type": "image_url", "image_url": {"url": "data:" + "A" * 10_000}},
                ],
            },
        ]
    }  # fmt: skip
    assert estimate_chat_tokens(body) == math.ceil((len("user") + len("text") + len("abcdefgh") + len("image_url")) / 4)
    assert estimate_embedding_tokens({"input": "abcde"}) == 2
    assert estimate_embedding_tokens({"input": ["abcd", "abcd"]}) == 2
    assert estimate_embedding_tokens({"input": [1, 2, 3]}) == 3
    assert estimate_embedding_tokens({"input": [[1, 2], [3]]}) == 3


# -- through the gateway ---------------------------------------------------------------------


async def test_rpm_tripped_and_recovered(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, clock = await start(start_gateway, url, tmp_path, {"rpm": 2})
    upstream.script(*[json_reply(TEXT) for _ in range(4)])
    first = await chat(gw)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 10
    second = await chat(gw)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 5
    with pytest.raises(openai.RateLimitError) as exc:
        await chat(gw)
    err = rejected_body(exc.value)
    assert (err["type"], err["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded")
    assert exc.value.response.headers["Retry-After"] == "45"  # the first request leaves the window at +60
    assert exc.value.response.headers["retry-after-ms"] == "45000"
    assert exc.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.requests) == 2, "a refused request never reaches the upstream"
    assert (await chat(gw, PRO_KEY)).headers["x-ratelimit-remaining-requests"] == "1"  # alice: her own allowance
    clock.now += 45
    third = await chat(gw)
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-reset-requests"] == "1m0s"
    rows = await gw.usage_rows()
    assert [(r["key_name"], r["status"], r["error_code"]) for r in rows] == [
        ("bob", 200, None), ("bob", 200, None), ("bob", 429, "rate_limit_exceeded"), ("alice", 200, None),
        ("bob", 200, None),
    ]  # fmt: skip


async def test_tpm_tripped_and_recovered_with_real_usage(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, clock = await start(start_gateway, url, tmp_path, {"tpm": 400})
    upstream.script(json_reply(TEXT), json_reply(TEXT))
    first = await chat(gw)
    assert first.headers["x-ratelimit-limit-tokens"] == "400"
    assert first.headers["x-ratelimit-remaining-tokens"] == "397"  # the estimate: 3 tokens
    assert first.headers["x-ratelimit-reset-tokens"] == "1m0s"
    clock.now += 20
    with pytest.raises(openai.RateLimitError) as exc:  # 379 really used; 21 left, 48 estimated
        await gw.client(FREE_KEY).chat.completions.create(
            model="oai-small", messages=[{"role": "user", "content": "x" * 188}]
        )
    assert exc.value.response.headers["Retry-After"] == "40"
    assert exc.value.response.headers["x-ratelimit-remaining-tokens"] == "21"
    assert rejected_body(exc.value)["code"] == "rate_limit_exceeded"
    assert len(upstream.requests) == 1
    clock.now += 40
    assert (await chat(gw)).headers["x-ratelimit-remaining-tokens"] == "397"


async def test_prompt_over_tpm_is_refused_without_retry(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, _ = await start(start_gateway, url, tmp_path, {"tpm": 10})
    with pytest.raises(openai.RateLimitError) as exc:
        await gw.client(FREE_KEY).embeddings.create(model="oai-small", input="y" * 100)
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert "Retry-After" not in exc.value.response.headers
    assert "too large" in rejected_body(exc.value)["message"]
    assert upstream.requests == []


async def test_concurrency_tripped_and_recovered(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, _ = await start(start_gateway, url, tmp_path, {"concurrency": 1})
    upstream.script(Reply(json=TEXT, delay=0.3), json_reply(TEXT))
    slow = asyncio.create_task(chat(gw))
    while not upstream.requests:  # wait until the first one is in flight
        await asyncio.sleep(0.005)
    with pytest.raises(openai.RateLimitError) as exc:
        await chat(gw)
    assert exc.value.response.headers["Retry-After"] == "1"
    assert (await slow).http_response.status_code == 200
    assert (await chat(gw)).http_response.status_code == 200  # the slot was freed
    assert len(upstream.requests) == 2


async def test_streamed_answer_carries_the_headers(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, clock = await start(start_gateway, url, tmp_path, {"rpm": 5, "tpm": 1000, "tokens_per_month": 10_000})
    upstream.script(sse_reply(STREAM), json_reply(TEXT))
    raw = await chat(gw, stream=True, stream_options={"include_usage": True})
    headers = raw.headers
    assert headers["content-type"].startswith("text/event-stream")
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("5", "4")
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("1000", "997")
    assert headers["x-ratelimit-remaining-tokens-month"] == "9997"
    assert [c async for c in raw.parse()][-1].usage.total_tokens == 44
    clock.now += 1
    after = await chat(gw)
    assert after.headers["x-ratelimit-remaining-tokens"] == str(1000 - 44 - 3)  # the stream's real usage
    assert after.headers["x-ratelimit-remaining-tokens-month"] == str(10_000 - 44 - 3)
    assert after.headers["x-ratelimit-reset-tokens"] == "1m0s"


async def test_monthly_quota_survives_a_restart(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    free = {"tokens_per_month": 400}
    gw, _ = await start(start_gateway, url, tmp_path, free)
    gw.app[LIMITER].clock = __import__("time").time  # the log and the quota share the real month here
    upstream.script(json_reply(TEXT))
    assert (await chat(gw)).headers["x-ratelimit-remaining-tokens-month"] == "397"
    with pytest.raises(openai.RateLimitError) as exc:  # 379 used, 21 left, 48 estimated
        await gw.client(FREE_KEY).chat.completions.create(
            model="oai-small", messages=[{"role": "user", "content": "x" * 188}]
        )
    err = rejected_body(exc.value)
    assert (err["type"], err["code"]) == ("insufficient_quota", "insufficient_quota")
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert int(exc.value.response.headers["Retry-After"]) > 0
    await gw.usage_rows()  # on disk

    again = await start_gateway(limited(url, str(tmp_path / "u.db"), free))  # a new process, same log
    with pytest.raises(openai.RateLimitError) as exc:
        await again.client(FREE_KEY).chat.completions.create(
            model="oai-small", messages=[{"role": "user", "content": "x" * 188}]
        )
    assert rejected_body(exc.value)["code"] == "insufficient_quota"
    assert exc.value.response.headers["x-ratelimit-remaining-tokens-month"] == "21"
    assert len(upstream.requests) == 1
    limiter = again.app[LIMITER]
    assert isinstance(limiter, InProcessLimiter)
    limiter.clock = Clock(next_month_start(__import__("time").time()) + 1)  # a new month: a new quota
    upstream.script(json_reply(TEXT))
    assert (await chat(again)).headers["x-ratelimit-remaining-tokens-month"] == "397"


async def test_fifty_at_once_never_exceed_the_limits(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, _ = await start(start_gateway, url, tmp_path, {"rpm": 10})
    upstream.script(*[json_reply(TEXT) for _ in range(50)])
    client = gw.client(FREE_KEY)
    results = await asyncio.gather(
        *[client.chat.completions.create(model="oai-small", messages=MESSAGES) for _ in range(50)],
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(refused) == 40 and len(results) - len(refused) == 10
    assert len(upstream.requests) == 10


async def test_fifty_at_once_respect_concurrency(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, _ = await start(start_gateway, url, tmp_path, {"concurrency": 5})
    upstream.script(*[Reply(json=TEXT, delay=0.5) for _ in range(50)])
    client = gw.client(FREE_KEY)
    results = await asyncio.gather(
        *[client.embeddings.create(model="oai-small", input="hi") for _ in range(50)], return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(upstream.requests) == 50 - len(refused) <= 5


async def test_reload_applies_new_limits_and_keeps_the_counters(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, _ = await start(start_gateway, url, tmp_path, {"rpm": 2})
    upstream.script(*[json_reply(TEXT) for _ in range(3)])
    await chat(gw)
    await chat(gw)
    with pytest.raises(openai.RateLimitError):
        await chat(gw)
    doc = limited(url, str(tmp_path / "u.db"), {"rpm": 3})
    gw.app[LIVE].current = Runtime.build(parse_config(doc, ENV))  # what a SIGHUP reload does
    third = await chat(gw)
    assert (third.headers["x-ratelimit-limit-requests"], third.headers["x-ratelimit-remaining-requests"]) == ("3", "0")
    with pytest.raises(openai.RateLimitError):
        await chat(gw)
    assert len(upstream.requests) == 3


async def test_key_override_applies(
    start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    gw, _ = await start(start_gateway, url, tmp_path, {"rpm": 1, "tpm": 5000}, rpm=7)
    upstream.script(json_reply(TEXT))
    raw = await chat(gw)
    assert (raw.headers["x-ratelimit-limit-requests"], raw.headers["x-ratelimit-limit-tokens"]) == ("7", "5000")


# -- gateway usage ---------------------------------------------------------------------------


async def test_usage_command_per_tier_and_remaining_quota(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from gateway.cli import main as cli_main
    from gateway.usage import UsageRecord, UsageStore

    db = tmp_path / "u.db"
    now = time.time()
    store = await UsageStore.open(str(db))
    store.record(UsageRecord(ts=now, key_name="alice", tier="pro", model="m", status=200, total_tokens=300))
    store.record(UsageRecord(ts=now, key_name="bob", tier="free", model="m", status=200, total_tokens=70))
    store.record(UsageRecord(ts=now, key_name="bob", tier="free", model="m", status=429, total_tokens=0))
    store.record(
        UsageRecord(ts=month_start(now) - 10, key_name="bob", tier="free", model="m", status=200, total_tokens=5)
    )
    await store.close()
    config = tmp_path / "g.yaml"
    config.write_text(
        f"database: {db}\nproviders: {{p: {{kind: openai, base_url: 'http://h'}}}}\n"
        "models: [{id: m, provider: p}]\n"
        "tiers: {free: {models: [m], limits: {tokens_per_month: 100}}, pro: {extends: free}}\n"
        "keys: [{name: alice, key: a-key, tier: pro, limits: {tokens_per_month: 1000}},\n"
        "       {name: bob, key: b-key, tier: free}]\n"
    )
    assert cli_main(["usage", "--config", str(config), "--tiers"]) == 0
    out = [line.split() for line in capsys.readouterr().out.splitlines()]
    tiers = out.index(["tier", "requests", "errors", "prompt", "completion", "total"])
    assert out[tiers + 1 : tiers + 3] == [["free", "3", "1", "0", "0", "75"], ["pro", "1", "0", "0", "0", "300"]]
    quota = out.index(["key", "tier", "month", "quota", "used", "remaining"])
    assert out[quota + 1 :] == [["alice", "pro", "1000", "300", "700"], ["bob", "free", "100", "70", "30"]]
