"""Retry cool-downs shared by every gateway process through Redis.

The balancer keeps reading its own in-memory health map (`plan` stays synchronous and
costs nothing more); this mirror runs beside it, once a second:
  - a cool-down this process started (`publish`, called by `Balancer.failed`) is written
    to Redis as `<prefix>cooldown:<target label>` with its remaining time as the key's
    expiry (never shortening a longer one already there),
  - and the remaining time of every target's key comes back in the same call, so a
    target another process benched is benched here within about a second.
One script call per second per process, whatever the traffic; a new cool-down wakes
the mirror at once rather than waiting for the second.  Remaining times travel as
Redis TTLs, so the hosts' clocks never need to agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from gateway.balancer import Balancer
from gateway.limits_redis import RedisLimiter, Script, redis_errors

log = logging.getLogger(__name__)

SYNC_EVERY: Final = 1.0  # seconds between two syncs

# KEYS: one per target label   ARGV: per key, ms of a cool-down this process started (0: none)
# -> per key, the ms it has left (PTTL: -2 when there is none)
SYNC: Final = """
local out = {}
for i, k in ipairs(KEYS) do
  local want = tonumber(ARGV[i])
  local left = redis.call('PTTL', k)
  if want > 0 and want > left then
    redis.call('SET', k, '1', 'PX', want)
    left = want
  end
  out[i] = left
end
return out
"""


class CooldownMirror:
    """Sink for the balancer's cool-downs, and the task that syncs them with Redis.
    Borrows the limiter's client (one pool per process) and its error accounting."""

    def __init__(self, limiter: RedisLimiter, balancer: Callable[[], Balancer]) -> None:
        self.limiter = limiter
        self.balancer = balancer  # the balancer in force (a reload builds a new one)
        self._script = Script.of(SYNC)
        self._pending: dict[str, float] = {}  # label -> monotonic time its cool-down ends
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._keys: dict[str, str] = {}

    def publish(self, label: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self._pending.get(label, 0.0):
            self._pending[label] = until
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="redis-cooldowns")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_EVERY):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except Exception:  # the task must outlive any one failure
                log.warning("Redis cool-downs: sync failed", exc_info=True)

    async def sync(self) -> None:
        """Send this process's new cool-downs, adopt everyone's (one script call)."""
        balancer = self.balancer()
        balancer.shared = self  # a reloaded configuration brings a new balancer: attach to it
        labels = balancer.labels
        if not labels:
            return
        now = time.monotonic()
        sent = dict(self._pending)
        wants = [max(0, int((sent.get(label, 0.0) - now) * 1000)) for label in labels]
        keys = [self._key(label) for label in labels]
        limiter = self.limiter
        try:
            async with asyncio.timeout(max(limiter.timeout, 1.0)):
                lefts = await limiter.run_script(self._script, keys, wants)
        except redis_errors() as exc:  # kept for the next sync; the local cool-down works meanwhile
            limiter.failed("cool-down sync", exc)
            return
        for label, until in sent.items():  # sent: forget, unless renewed meanwhile
            if self._pending.get(label) == until:
                del self._pending[label]
        for label, left in zip(labels, lefts, strict=True):
            if left > 0:
                balancer.adopt_cooldown(label, left / 1000)

    def _key(self, label: str) -> str:
        key = self._keys.get(label)
        if key is None:
            key = self._keys[label] = f"{self.limiter.prefix}cooldown:{label}"
        return key
