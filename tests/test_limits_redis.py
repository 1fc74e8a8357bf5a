"""The `Limiter` contract, run against InProcessLimiter and RedisLimiter alike (the
real Redis server, a key prefix per test): the same Admission numbers, hence the same
x-ratelimit-* headers and 429s, step by step, on a test clock.  Then what only the
Redis one has: leases that lapse and are renewed, the monthly counter seeded once and
re-seeded after Redis lost it, open/closed when Redis is down or frozen (a private
redis-server), and cool-downs shared between two balancers."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ENV, base_config
from redis_support import OwnRedis, require_redis_package, shared_redis

from gateway.balancer import Balancer
from gateway.config import Limits, parse_config
from gateway.cooldowns_redis import CooldownMirror
from gateway.errors import ServiceUnavailable
from gateway.limits import Admission, InProcessLimiter, Limiter, next_month_start, rate_headers
from gateway.limits_redis import RedisLimiter, connect

require_redis_package()

T0 = 1_780_000_000.0  # 2026-05-28, far from a month boundary
FOREVER = 10**8  # seconds: leases never lapse in the contract tests (the in-process limiter has none)
FIELDS = ("rejected", "retry_after", "remaining_requests", "reset_requests", "remaining_tokens", "reset_tokens",
          "remaining_month", "month", "at", "estimate")  # fmt: skip


@pytest.fixture(params=["in-process", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "in-process":
        yield InProcessLimiter()
        return
    async with shared_redis() as (client, prefix):
        yield RedisLimiter(client, prefix=prefix, lease_ttl=FOREVER)


@pytest.fixture
async def both() -> AsyncIterator[tuple[InProcessLimiter, RedisLimiter]]:
    async with shared_redis() as (client, prefix):
        yield InProcessLimiter(), RedisLimiter(client, prefix=prefix, lease_ttl=FOREVER)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def numbers(adm: Admission) -> tuple[Any, ...]:
    return tuple(getattr(adm, f) for f in FIELDS)


# -- the contract, on both ---------------------------------------------------------------


async def test_rpm_window_and_retry_after(limiter: Limiter) -> None:
    limits = Limits(rpm=2)
    a = await limiter.admit("k", limits, 1, now=100.0)
    b = await limiter.admit("k", limits, 1, now=110.0)
    assert (a.rejected, a.remaining_requests, b.remaining_requests) == (None, 1, 0)
    assert b.reset_requests == 60.0
    c = await limiter.admit("k", limits, 1, now=120.0)
    assert c.rejected == "rpm" and c.retry_after == 40.0  # the request at 100 leaves the window at 160
    assert (await limiter.admit("k", limits, 1, now=159.9)).rejected == "rpm"
    assert (await limiter.admit("k", limits, 1, now=160.0)).rejected is None
    assert (await limiter.admit("other", limits, 1, now=160.0)).rejected is None  # per key


async def test_tpm_settles_the_estimate_to_real_usage_and_too_large(limiter: Limiter) -> None:
    limits = Limits(tpm=100)
    a = await limiter.admit("k", limits, 30, now=0.0)
    assert a.remaining_tokens == 70
    await limiter.release(a, 90, now=1.0)  # the answer really cost 90
    b = await limiter.admit("k", limits, 20, now=2.0)
    assert b.rejected == "tpm" and b.retry_after == 58.0 and b.remaining_tokens == 10
    c = await limiter.admit("k", limits, 10, now=2.0)
    assert c.rejected is None and c.remaining_tokens == 0
    await limiter.release(c, 5)
    assert (await limiter.admit("k", limits, 5, now=3.0)).rejected is None
    big = await limiter.admit("k", limits, 101, now=3.0)
    assert big.rejected == "too_large" and big.retry_after is None
    assert (await limiter.admit("k", limits, 20, now=60.0)).rejected is None  # the 90 left the window


async def test_concurrency_quota_and_month_rollover(limiter: Limiter) -> None:
    limits = Limits(concurrency=1, tokens_per_month=100)
    a = await limiter.admit("k", limits, 10, now=T0)
    b = await limiter.admit("k", limits, 10, now=T0)
    assert (a.rejected, b.rejected, b.retry_after) == (None, "concurrency", 1.0)
    await limiter.release(a, 100)
    await limiter.release(a, 100)  # twice: harmless
    c = await limiter.admit("k", limits, 1, now=T0 + 1)
    assert c.rejected == "tokens_per_month" and c.retry_after == next_month_start(T0) - (T0 + 1)
    assert c.remaining_month == 0
    d = await limiter.admit("k", limits, 1, now=next_month_start(T0))
    assert d.rejected is None and d.remaining_month == 99


async def test_seeded_quota_and_a_release_from_last_month(limiter: Limiter) -> None:
    limits = Limits(tokens_per_month=1000)
    await limiter.seed_month({"k": 900, "j": 10}, now=T0)
    a = await limiter.admit("k", limits, 50, now=T0)
    assert a.remaining_month == 50
    assert (await limiter.admit("k", limits, 51, now=T0)).rejected == "tokens_per_month"
    late = await limiter.admit("k", limits, 10, now=next_month_start(T0) - 1)
    assert late.rejected is None and late.remaining_month == 40
    fresh = await limiter.admit("k", limits, 5, now=next_month_start(T0))
    assert fresh.remaining_month == 995
    await limiter.release(late, 500)  # ended in the new month: counts in the old one only
    await limiter.release(a, 20)
    assert (await limiter.admit("k", limits, 0, now=next_month_start(T0) + 1)).remaining_month == 995


async def test_a_large_window_prunes_in_pages(limiter: Limiter) -> None:
    limits = Limits(rpm=5000, tpm=10**6)
    for i in range(1200):  # more than one page (500) of the script's pruning
        adm = await limiter.admit("k", limits, 7, now=1000.0 + i / 100)
        await limiter.release(adm, 8)
    full = await limiter.admit("k", limits, 1, now=1012.0)
    assert (full.remaining_requests, full.remaining_tokens) == (5000 - 1201, 10**6 - 1200 * 8 - 1)
    empty = await limiter.admit("k", limits, 1, now=1072.0)
    assert (empty.remaining_requests, empty.remaining_tokens) == (4999, 10**6 - 1)


async def test_same_numbers_and_headers_step_by_step(both: tuple[InProcessLimiter, RedisLimiter]) -> None:
    """400 random steps (admissions, settlements, time jumps across a month boundary) over
    three keys with mixed limits: every Admission field and header equal, bit for bit."""
    mem, red = both
    rng = random.Random(1414)
    keys = {
        "a": Limits(rpm=5, tpm=300, concurrency=3, tokens_per_month=2500),
        "b": Limits(tpm=120, tokens_per_month=900),
        "c": Limits(rpm=3, concurrency=4),
    }
    now = next_month_start(T0) - 1200.0  # crosses into June halfway
    live: list[tuple[Admission, Admission]] = []
    seen: set[str | None] = set()
    for step in range(400):
        now += rng.choice((0.0, 0.0, 0.25, 1.0, 3.0, 7.5, 15.0, 61.0))
        if live and rng.random() < 0.4:
            m, r = live.pop(rng.randrange(len(live)))
            actual = rng.randint(0, 150)
            await mem.release(m, actual, now=now)
            await red.release(r, actual, now=now)
            continue
        name = rng.choice("abc")
        est = rng.choice((0, 1, 5, 20, 40, 80, 130))
        m = await mem.admit(name, keys[name], est, now=now)
        r = await red.admit(name, keys[name], est, now=now)
        assert numbers(r) == numbers(m), f"step {step}: key {name}, estimate {est}"
        assert rate_headers(r) == rate_headers(m)
        seen.add(m.rejected)
        if m.rejected is None:
            live.append((m, r))
    assert seen == {None, "rpm", "tpm", "too_large", "concurrency", "tokens_per_month"}  # every path was taken


# -- Redis only: leases, seeding, time ------------------------------------------------


async def test_a_lease_lapses_after_its_ttl() -> None:
    async with shared_redis() as (client, prefix):
        lim = RedisLimiter(client, prefix=prefix, lease_ttl=5)
        limits = Limits(concurrency=1)
        assert (await lim.admit("k", limits, 1, now=T0)).rejected is None  # never released: its process died
        assert (await lim.admit("k", limits, 1, now=T0 + 4.9)).rejected == "concurrency"
        assert (await lim.admit("k", limits, 1, now=T0 + 5.0)).rejected is None


async def test_running_requests_keep_their_leases_and_redis_time_is_used() -> None:
    async with shared_redis() as (client, prefix):
        lim = RedisLimiter(client, prefix=prefix, lease_ttl=2.4)  # renewed every 0.8 s
        await lim.start()
        try:
            limits = Limits(rpm=100, concurrency=1)
            held = await lim.admit("k", limits, 1)
            server_time = float((await client.time())[0])
            assert abs(held.at - server_time) < 5  # Redis's clock, not a test clock
            await asyncio.sleep(5.0)  # two lease lifetimes: only the renewals keep the slot taken
            assert (await lim.admit("k", limits, 1)).rejected == "concurrency"
            await lim.release(held, 1)
            assert (await lim.admit("k", limits, 1)).rejected is None
        finally:
            await lim.close()
        assert not lim.client or await client.ping()  # a client it was given stays open


async def test_seed_only_where_no_counter_and_expiry_after_the_month() -> None:
    async with shared_redis() as (client, prefix):
        lim = RedisLimiter(client, prefix=prefix, lease_ttl=FOREVER)
        limits = Limits(tokens_per_month=1000)
        await lim.seed_month({"k": 100}, now=T0)
        assert (await lim.admit("k", limits, 10, now=T0)).remaining_month == 890
        await lim.seed_month({"k": 0}, now=T0)  # a second process starting: the live counter stays
        assert (await lim.admit("k", limits, 0, now=T0)).remaining_month == 890
        ttl = await client.pttl(f"{prefix}{{k}}:q")
        assert abs(ttl / 1000 - (next_month_start(T0) - T0)) < 60  # gone when its month is
        await lim.seed_month({"k": 400}, now=next_month_start(T0))  # a stale month is replaced
        assert (await lim.admit("k", limits, 0, now=next_month_start(T0))).remaining_month == 600


async def test_seed_waits_for_redis_and_redis_data_loss_is_reseeded(own_redis: OwnRedis) -> None:
    own_redis.stop()
    calls: list[int] = []

    async def from_the_log() -> dict[str, int]:
        calls.append(1)
        return {"k": 700}

    lim = RedisLimiter(url=own_redis.url, prefix="gw:", lease_ttl=0.3, timeout=0.5)
    await lim.start(from_the_log)  # Redis down at start: a warning, no failure
    probe = connect(own_redis.url, 1.0)
    try:
        await lim.seed_month({"k": 500})  # cannot reach Redis: kept for later
        own_redis.start()
        await until(lambda: probe.hget("gw:{k}:q", "used"), b"500")
        assert not calls  # the pending seed, not the log, filled a Redis that never had one
        own_redis.stop()
        own_redis.start()  # restarted empty
        await until(lambda: probe.hget("gw:{k}:q", "used"), b"700")
        assert calls
        assert (await lim.admit("k", Limits(tokens_per_month=1000), 10)).remaining_month == 290
    finally:
        await lim.close()
        await probe.aclose()


async def until(read: Any, want: Any, seconds: float = 15.0) -> None:
    """Poll `await read()` until it returns `want` (a liveness bound, not a timing claim)."""
    deadline = time.monotonic() + seconds
    value = None
    while time.monotonic() < deadline:
        try:
            value = await read()
        except Exception as exc:  # the server may still be starting
            value = exc
        if value == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {value!r}, waiting for {want!r}")


# -- Redis down, frozen, back -------------------------------------------------------------


async def test_open_admits_uncounted_while_redis_is_down_then_counts_again(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    lim = RedisLimiter(url=own_redis.url, prefix="gw:", on_error="open", timeout=0.2)
    await lim.start()
    limits = Limits(rpm=100, concurrency=5)
    try:
        assert (await lim.admit("k", limits, 1)).remaining_requests == 99
        own_redis.stop()
        with caplog.at_level(logging.WARNING, logger="gateway.limits_redis"):
            for _ in range(20):
                adm = await asyncio.wait_for(lim.admit("k", limits, 1), 5)
                assert adm.rejected is None and rate_headers(adm) == {}  # nothing charged, nothing claimed
                await lim.release(adm, 50)  # does nothing, raises nothing
        assert lim.open_admissions_total == 20 and lim.errors_total >= 20
        warnings = [r for r in caplog.records if r.name == "gateway.limits_redis"]
        assert len(warnings) == 1 and "admitted uncounted" in warnings[0].getMessage()  # one per 10 s
        own_redis.start()  # empty: a restart without persistence
        await until(lambda: _remaining(lim, limits), 99)  # the pool reconnected; counting resumed
        assert (await lim.admit("k", limits, 1)).remaining_requests == 98
    finally:
        await lim.close()


async def _remaining(lim: RedisLimiter, limits: Limits) -> int | None:
    return (await lim.admit("k", limits, 1)).remaining_requests


async def test_closed_refuses_with_503_while_redis_is_down(own_redis: OwnRedis) -> None:
    lim = RedisLimiter(url=own_redis.url, prefix="gw:", on_error="closed", timeout=0.2)
    await lim.start()
    try:
        assert (await lim.admit("k", Limits(rpm=10), 1)).remaining_requests == 9
        own_redis.stop()
        with pytest.raises(ServiceUnavailable) as exc:
            await asyncio.wait_for(lim.admit("k", Limits(rpm=10), 1), 5)
        error = exc.value
        assert (error.status, error.code, error.headers) == (503, "limits_unavailable", {"Retry-After": "1"})
        own_redis.start()
        await until(lambda: _remaining(lim, Limits(rpm=10)), 9)
    finally:
        await lim.close()


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_a_frozen_redis_costs_the_timeout_never_a_hang(own_redis: OwnRedis, on_error: str) -> None:
    lim = RedisLimiter(url=own_redis.url, prefix="gw:", on_error=on_error, timeout=0.1)
    await lim.start()
    limits = Limits(rpm=100)
    try:
        held = await lim.admit("k", limits, 1)
        own_redis.freeze()  # connections stay open; nothing answers
        for _ in range(3):
            if on_error == "open":
                adm = await asyncio.wait_for(lim.admit("k", limits, 1), 5)
                assert adm.rejected is None and adm.remaining_requests is None
            else:
                with pytest.raises(ServiceUnavailable):
                    await asyncio.wait_for(lim.admit("k", limits, 1), 5)
        await asyncio.wait_for(lim.release(held, 1), 5)
        own_redis.thaw()
        # counting resumes (how many of the timed-out calls Redis ran late, once thawed, varies)
        await until(lambda: _counted(lim, limits), True)
        first, second = await lim.admit("k", limits, 1), await lim.admit("k", limits, 1)
        assert first.remaining_requests is not None and second.remaining_requests == first.remaining_requests - 1
    finally:
        own_redis.thaw()
        await lim.close()


async def _counted(lim: RedisLimiter, limits: Limits) -> bool:
    return (await lim.admit("k", limits, 1)).remaining_requests is not None


# -- cool-downs shared between balancers ----------------------------------------------------


def _two_deployments() -> Any:
    doc = base_config({"oai": ("openai", "http://127.0.0.1:9/v1"), "alt": ("openai", "http://127.0.0.1:9/v1")}, "db")
    doc["models"][0]["deployments"] = [{"provider": "oai", "upstream": "m"}, {"provider": "alt", "upstream": "m"}]
    del doc["models"][0]["provider"], doc["models"][0]["upstream"]
    doc["routing"] = {"failures_before_cooldown": 2, "cooldown": 30}
    return parse_config(doc, ENV)


async def test_a_cooldown_in_one_process_benches_the_target_in_the_other() -> None:
    config = _two_deployments()
    async with shared_redis() as (client, prefix):
        one, two = Balancer(config), Balancer(config)
        mirrors = [CooldownMirror(RedisLimiter(client, prefix=prefix), lambda b=b: b) for b in (one, two)]
        for mirror in mirrors:
            await mirror.sync()  # attaches to its balancer
        assert one.shared is mirrors[0] and two.shared is mirrors[1]
        target = next(t for t in one.plan("oai-small") if t.label == "oai/m")
        one.failed(target)
        await mirrors[0].sync()
        await mirrors[1].sync()
        assert not two.cooling(target)  # one failure: no cool-down yet
        one.failed(target)
        assert one.cooling(target) and not two.cooling(target)
        await mirrors[0].sync()  # published ...
        await mirrors[1].sync()  # ... and adopted, as the remaining time Redis holds
        assert two.cooling(target)
        assert [t.label for t in two.plan("oai-small")] == ["alt/m", "oai/m"]
        left = await client.pttl(f"{prefix}cooldown:oai/m")
        assert 25_000 < left <= 30_000


async def test_shared_cooldowns_travel_by_themselves_within_seconds() -> None:
    config = _two_deployments()
    async with shared_redis() as (client, prefix):
        one, two = Balancer(config), Balancer(config)
        mirrors = [CooldownMirror(RedisLimiter(client, prefix=prefix), lambda b=b: b) for b in (one, two)]
        for mirror in mirrors:
            mirror.start()
        try:
            target = next(t for t in one.plan("oai-small") if t.label == "alt/m")
            await until(lambda: _attached(one), True)
            one.failed(target, retry_after=1.5)  # a short cool-down (Retry-After) travels too
            await until(lambda: _cooling(two, target), True)
        finally:
            for mirror in mirrors:
                await mirror.stop()


async def _attached(balancer: Balancer) -> bool:
    return balancer.shared is not None


async def _cooling(balancer: Balancer, target: Any) -> bool:
    return balancer.cooling(target)


def test_without_redis_the_balancer_shares_nothing() -> None:
    balancer = Balancer(_two_deployments())
    target = balancer.plan("oai-small")[0]
    balancer.failed(target)
    balancer.failed(target)
    assert balancer.shared is None and balancer.cooling(target)
