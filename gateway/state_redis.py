"""Which limiter a gateway uses, and the lifetime of the state it shares through Redis.

`state.redis` unset: `InProcessLimiter`, nothing else runs.  Set: `RedisLimiter` for
tier limits and the monthly quota, plus a `CooldownMirror` sharing retry cool-downs;
both on one client, connected when the app starts and closed when it stops.  A Redis
that is down at start is a WARNING, not a failure: `state.on_error` applies to each
request until Redis answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gateway.balancer import Balancer
from gateway.config import State
from gateway.limits import InProcessLimiter, Limiter
from gateway.limits_redis import RedisLimiter, Reseed


def limiter_for(state: State) -> Limiter:
    """No I/O and no `redis` import here: both wait for `shared_state`."""
    return RedisLimiter.from_state(state) if state.redis else InProcessLimiter()


@asynccontextmanager
async def shared_state(
    limiter: Limiter, balancer: Callable[[], Balancer], reseed: Reseed | None = None
) -> AsyncIterator[None]:
    """Run the Redis side of `limiter` (lease renewal, re-seeding) and the cool-down
    mirror for the balancer in force; a no-op for any other limiter."""
    if not isinstance(limiter, RedisLimiter):
        yield
        return
    from gateway.cooldowns_redis import CooldownMirror

    await limiter.start(reseed)
    mirror = CooldownMirror(limiter, balancer)
    balancer().shared = mirror  # at once: the first sync may be a second away
    mirror.start()
    try:
        yield
    finally:
        await mirror.stop()
        await limiter.close()
