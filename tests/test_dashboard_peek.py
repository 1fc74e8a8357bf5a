"""`Limiter.peek`, the dashboard's read of a key's counters, on InProcessLimiter and
RedisLimiter alike (the real Redis server, a prefix per test): the same numbers as the
admissions imply, and a peek never charges, prunes or creates anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis_support import require_redis_package, shared_redis

from gateway.config import Limits
from gateway.limits import InProcessLimiter, Limiter, Peek, next_month_start
from gateway.limits_redis import RedisLimiter

require_redis_package()

T0 = 1_780_000_000.0  # 2026-05-28, far from a month boundary
LIMITS = Limits(rpm=5, tpm=1000, concurrency=3, tokens_per_month=10_000)


@pytest.fixture(params=["in-process", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "in-process":
        yield InProcessLimiter()
        return
    async with shared_redis() as (client, prefix):
        yield RedisLimiter(client, prefix=prefix, lease_ttl=10**8)


async def test_peek_reads_what_admissions_counted_and_charges_nothing(limiter: Limiter) -> None:
    assert await limiter.peek("k", LIMITS, now=T0) == Peek(0, 0, 0, 0, 5, 1000, 3, 10_000)
    await limiter.seed_month({"k": 2000}, now=T0)
    first = await limiter.admit("k", LIMITS, 100, now=T0)
    await limiter.admit("k", LIMITS, 50, now=T0 + 1)
    await limiter.release(first, 300, now=T0 + 2)  # the estimate 100 becomes 300; one still in flight
    expected = Peek(2, 350, 1, 2350, 3, 650, 2, 7650)
    for _ in range(3):  # peeking again changes nothing
        assert await limiter.peek("k", LIMITS, now=T0 + 3) == expected
    # the next admission sees exactly the counters the peeks left
    third = await limiter.admit("k", LIMITS, 10, now=T0 + 3)
    assert (third.remaining_requests, third.remaining_tokens, third.remaining_month) == (2, 640, 7640)
    # a minute later the window is empty; the month and the slot in flight are not
    later = await limiter.peek("k", LIMITS, now=T0 + 64)
    assert (later.requests, later.tokens, later.in_flight, later.month_used) == (0, 0, 2, 2360)
    # unlimited fields have no remainder; another key name sees nothing of k
    assert await limiter.peek("other", Limits(), now=T0 + 3) == Peek(0, 0, 0, 0)


async def test_a_new_month_reads_zero_before_any_admission_rolls_it(limiter: Limiter) -> None:
    await limiter.admit("k", LIMITS, 400, now=T0)
    assert (await limiter.peek("k", LIMITS, now=T0 + 5)).month_used == 400
    assert (await limiter.peek("k", LIMITS, now=next_month_start(T0) + 5)).month_used == 0


async def test_redis_peek_reads_what_another_process_admitted() -> None:
    async with shared_redis() as (client, prefix):
        one = RedisLimiter(client, prefix=prefix, lease_ttl=10**8)
        other = RedisLimiter(client, prefix=prefix, lease_ttl=10**8)
        await one.admit("k", LIMITS, 70, now=T0)
        seen = await other.peek("k", LIMITS, now=T0 + 1)
        assert (seen.requests, seen.tokens, seen.in_flight, seen.month_used) == (1, 70, 1, 70)
