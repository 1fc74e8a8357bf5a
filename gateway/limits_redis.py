"""Tier limits shared by every gateway process through Redis (or Valkey).

`RedisLimiter` implements `gateway.limits.Limiter` with the same rules and the same
`Admission` numbers as `InProcessLimiter`, but the counters live in Redis, so N
processes (workers, hosts) together admit a key's `rpm` requests a minute, not N
times that.  The cost is one round trip at admission and one at release: each is a
single Lua script (gateway/limits_redis_lua.py) that checks and charges every counter
of the key atomically, on Redis's clock.

Concurrency slots are leases: a request holds its slot until it is released, or
until the lease (`lease_ttl`, 30 s) lapses.  One task per process renews the leases of
all its running requests every `lease_ttl / 3` in one call, so the slots of a process
that crashed or was killed free themselves within `lease_ttl`.

Redis unreachable or slower than `state.timeout_ms`: with `on_error: open` the
request is admitted uncounted (its release does nothing), with `closed` it gets a 503
`limits_unavailable`; either way one WARNING per 10 s at most, and `errors_total` /
`open_admissions_total` count it.  redis-py reconnects by itself when Redis is back.

The monthly quota is seeded from the usage log at start (`seed_month`, only where
Redis has no counter for this month: one there is live and newer than any log).  A
Redis that lost its data while the gateway ran (a restart without persistence) is
noticed by the renewal task (a sentinel key is gone) and re-seeded from the log.

`redis` is imported only when a limiter is started: a gateway without `state.redis`
runs without the package installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from gateway import limits_redis_lua as lua
from gateway.config import Limits, State
from gateway.errors import ServiceUnavailable
from gateway.limits import (
    CONCURRENCY,
    CONCURRENCY_RETRY,
    QUOTA,
    RPM,
    TPM,
    WINDOW,
    Admission,
    Peek,
    month_index,
    next_month_start,
    peek_of,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

LEASE_TTL: Final = 30.0  # seconds a concurrency slot outlives a process that stopped renewing it
WARN_EVERY: Final = 10.0  # seconds between two WARNINGs about Redis failing
BACKGROUND_TIMEOUT: Final = 1.0  # renewals and seeding are off the request path: they may wait longer
RENEW_BATCH: Final = 1000  # leases per renewal call (a script's KEYS must fit Lua's stack)

Reseed = Callable[[], Awaitable[Mapping[str, int]]]  # this month's tokens per key name, from the usage log


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a failed or slow Redis call raises (`redis` imported only when used)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


def _no_script_error() -> type[BaseException]:
    from redis.exceptions import NoScriptError

    return NoScriptError


def connect(url: str, timeout: float) -> Redis:
    """An asyncio client that never retries by itself (the caller decides what a
    failure means) and connects lazily: a Redis down at start is no start failure."""
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise RuntimeError(
            "state.redis is set but the redis package is missing: pip install 'gateway[redis]'"
        ) from None
    # socket_timeout stays None: every call is bounded by asyncio.timeout, one timer, not two
    return Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=None, retry=Retry(NoBackoff(), 0))


@dataclass(frozen=True, slots=True)
class Script:
    text: str
    sha: str

    @classmethod
    def of(cls, text: str) -> Script:
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


ADMIT, RELEASE, RENEW, SEED = (Script.of(s) for s in (lua.ADMIT, lua.RELEASE, lua.RENEW, lua.SEED))

# `peek`: the counters ADMIT would see, read only (no pruning, no lease lapsing, no writes),
# on Redis's clock.  KEYS: w, tk, c, q; ARGV: now ('' = TIME).  -> 'requests|tokens|in_flight|
# month|used': the month is compared in Python (month_index), which has a calendar.
PEEK = Script.of("""
local w, tk, c, q = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local horizon = '(' .. string.format('%.17g', now - 60)
local n = redis.call('ZCOUNT', w, horizon, '+inf')
local tokens, start = 0, 0
while true do  -- in pages: unpack() of thousands of ids would overflow Lua's stack
  local ids = redis.call('ZRANGEBYSCORE', w, horizon, '+inf', 'LIMIT', start, 500)
  if #ids == 0 then break end
  for _, v in ipairs(redis.call('HMGET', tk, unpack(ids))) do tokens = tokens + (tonumber(v) or 0) end
  if #ids < 500 then break end
  start = start + 500
end
local live = redis.call('ZCOUNT', c, '(' .. string.format('%.17g', now), '+inf')
local q_now = redis.call('HMGET', q, 'month', 'used')
return n .. '|' .. tokens .. '|' .. live .. '|' .. (q_now[1] or '') .. '|' .. (q_now[2] or '0') .. '|' ..
  string.format('%.17g', now)
""")


@dataclass(slots=True)
class RedisAdmission(Admission):
    """An `Admission` and what its release must settle in Redis."""

    lease: str | None = None  # the admission id (window member, lease member); None: nothing charged
    keys: tuple[str, ...] = ()  # w, tk, c, q of the key name


class RedisLimiter:
    def __init__(
        self,
        client: Redis | None = None,
        *,
        url: str | None = None,
        prefix: str = "gateway:",
        on_error: str = "open",
        timeout: float = 0.05,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        """Give a `client`, or a `url` to connect to when started."""
        self.client, self.url = client, url
        self._owns_client = client is None  # a client given is closed by whoever gave it
        self.prefix, self.on_error, self.timeout, self.lease_ttl = prefix, on_error, timeout, lease_ttl
        self.errors_total = 0  # failed or timed-out Redis calls, all operations
        self.open_admissions_total = 0  # requests admitted uncounted because Redis failed (on_error: open)
        self._lease_ms = max(1, round(lease_ttl * 1000))
        self._live: dict[str, str] = {}  # admission id -> its lease set, for the renewal task
        self._names: dict[str, tuple[str, str, str, str]] = {}  # key name -> its Redis keys
        self._reseed: Reseed | None = None
        self._pending_seed: Mapping[str, int] | None = None  # a seed Redis has not taken yet
        self._keeper: asyncio.Task[None] | None = None
        self._warned_at = -WARN_EVERY
        self._unwarned = 0

    @classmethod
    def from_state(cls, state: State) -> RedisLimiter:
        """From the YAML's `state:`.  GATEWAY_REDIS_PREFIX and GATEWAY_REDIS_LEASE_TTL (seconds)
        override the key prefix and the lease (tests run several gateways on one Redis)."""
        return cls(
            url=state.redis,
            prefix=os.environ.get("GATEWAY_REDIS_PREFIX", "gateway:"),
            on_error=state.on_error,
            timeout=state.timeout_ms / 1000,
            lease_ttl=float(os.environ.get("GATEWAY_REDIS_LEASE_TTL", LEASE_TTL)),
        )

    # -- the Limiter interface ---------------------------------------------------------

    async def admit(self, key: str, limits: Limits, estimated_tokens: int, now: float | None = None) -> Admission:
        est = max(0, int(estimated_tokens))
        keys = self._keys(key)
        lease = _new_id()
        args = (lease, est, _arg(limits.rpm), _arg(limits.tpm), _arg(limits.concurrency),
                _arg(limits.tokens_per_month), self._lease_ms, "" if now is None else repr(float(now)))  # fmt: skip
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self.run_script(ADMIT, keys, args)
        except redis_errors() as exc:
            self.failed("admission", exc)
            if self.on_error == "closed":
                raise ServiceUnavailable(
                    "Rate limits cannot be checked right now; retry shortly.",
                    code="limits_unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            self.open_admissions_total += 1
            at = time.time() if now is None else now
            return RedisAdmission(key=key, limits=limits, estimate=est, at=at, month=month_index(at))
        rejected, ref, n, newest, tokens, used, month, at_text = reply.split(b"|")
        at = float(at_text)
        adm = RedisAdmission(key=key, limits=limits, estimate=est, at=at, month=int(month))
        if rejected:
            adm.rejected = rejected.decode()
            adm.retry_after = _retry_after(adm.rejected, ref, at)
        else:
            adm.lease, adm.keys = lease, keys
            self._live[lease] = keys[2]
        # as InProcessLimiter._describe, from the counters as the script left them
        reset = float(newest) + WINDOW - at if newest else 0.0
        if limits.rpm is not None:
            adm.remaining_requests, adm.reset_requests = max(0, limits.rpm - int(n)), reset
        if limits.tpm is not None:
            adm.remaining_tokens, adm.reset_tokens = max(0, limits.tpm - int(tokens)), reset
        if limits.tokens_per_month is not None:
            adm.remaining_month = max(0, limits.tokens_per_month - int(used))
        return adm

    async def release(self, admission: Admission, actual_tokens: int, now: float | None = None) -> None:
        """Free the slot and settle the estimate to `actual_tokens` (the pipeline passes the
        real usage, or an estimate of it: never a refund for unknown usage)."""
        if not isinstance(admission, RedisAdmission) or admission.lease is None:
            return  # refused, admitted while Redis was down, or released already
        lease, admission.lease = admission.lease, None
        self._live.pop(lease, None)
        args = (lease, admission.estimate, max(0, int(actual_tokens)), admission.month)
        try:
            async with asyncio.timeout(self.timeout):
                await self.run_script(RELEASE, admission.keys, args)
        except redis_errors() as exc:  # the lease lapses on its own; the estimate stays charged
            self.failed("release", exc)

    async def seed_month(self, used: Mapping[str, int], now: float | None = None) -> None:
        """Tokens each key name used this month, from the usage log: taken only where Redis
        has no counter for this month (a counter there is live, newer than any log).  When
        Redis cannot be reached, the renewal task keeps trying."""
        if not await self._seed(used, "nx", now):
            self._pending_seed = dict(used)

    async def peek(self, key: str, limits: Limits, now: float | None = None) -> Peek:
        """The key's counters in Redis now, read only (one script, nothing written).
        Raises what a failed Redis call raises: a dashboard says so, it decides nothing."""
        async with asyncio.timeout(max(self.timeout, BACKGROUND_TIMEOUT)):
            reply = await self.run_script(PEEK, self._keys(key), ["" if now is None else repr(float(now))])
        requests, tokens, live, month, used, at = reply.split(b"|")
        # a counter of an earlier month is stale: ADMIT would start this month at zero
        month_used = int(used) if month and int(month) >= month_index(float(at)) else 0
        return peek_of(limits, int(requests), int(tokens), int(live), month_used)

    # -- lifetime ---------------------------------------------------------------------

    async def start(self, reseed: Reseed | None = None) -> None:
        """Connect (a Redis down now is a WARNING, not a failure: on_error applies per
        request) and start the renewal task.  `reseed` reads the usage log again when
        Redis has lost its data."""
        if self.client is None:
            assert self.url is not None, "RedisLimiter needs a client or a url"
            self.client = connect(self.url, self.timeout)
        self._reseed = reseed
        try:
            async with asyncio.timeout(max(self.timeout, BACKGROUND_TIMEOUT)):
                await self.client.ping()
        except redis_errors() as exc:
            log.warning(
                "state.redis: Redis does not answer at start (%s); starting anyway, on_error=%s applies to each "
                "request until it does", _describe(exc), self.on_error,
            )  # fmt: skip
        self._keeper = asyncio.create_task(self._keep(), name="redis-limits-keeper")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self.client is not None and self._owns_client:
            await self.client.aclose()

    # -- internals ---------------------------------------------------------------------

    def _keys(self, name: str) -> tuple[str, str, str, str]:
        keys = self._names.get(name)
        if keys is None:  # names come from the configuration: the cache stays small
            # one hash tag per key name: a Redis Cluster would keep a name's counters on one node
            base = f"{self.prefix}{{{name}}}:"
            keys = self._names[name] = (base + "w", base + "tk", base + "c", base + "q")
        return keys

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self.client
        if client is None:
            raise ConnectionError("the Redis limiter was not started")
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except Exception as exc:
            if not isinstance(exc, _no_script_error()):
                raise
        # a restarted Redis lost its script cache: EVAL runs the script and caches it again
        return await client.eval(script.text, len(keys), *keys, *args)  # type: ignore[misc]

    async def _seed(self, used: Mapping[str, int], mode: str, now: float | None = None) -> bool:
        keys = [f"{self.prefix}seeded", *(self._keys(name)[3] for name in used)]
        args = [mode, "" if now is None else repr(float(now)), *(int(v) for v in used.values())]
        try:
            async with asyncio.timeout(max(self.timeout, BACKGROUND_TIMEOUT)):
                await self.run_script(SEED, keys, args)
        except redis_errors() as exc:
            self.failed("seeding the monthly quota", exc)
            return False
        return True

    async def _keep(self) -> None:
        """Every lease_ttl / 3: renew the leases of this process's running requests (one
        call), and re-seed the monthly quota if Redis lost it (or never got it)."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                await self._renew()
            except Exception:  # the task must outlive any one failure
                log.warning("Redis limits: lease renewal failed", exc_info=True)

    async def _renew(self) -> None:
        sentinel = f"{self.prefix}seeded"
        live = list(self._live.items())
        seeded = True
        for i in range(0, max(1, len(live)), RENEW_BATCH):
            batch = live[i : i + RENEW_BATCH]
            keys = [sentinel, *(c for _, c in batch)]
            try:
                async with asyncio.timeout(max(self.timeout, BACKGROUND_TIMEOUT)):
                    seeded = bool(await self.run_script(RENEW, keys, [self._lease_ms, *(lease for lease, _ in batch)]))
            except redis_errors() as exc:
                self.failed("lease renewal", exc)
                return
        if seeded:
            self._pending_seed = None  # some process seeded this Redis: a counter is there
            return
        if self._pending_seed is not None:
            used, mode = self._pending_seed, "max"
        elif self._reseed is not None:
            log.warning("Redis limits: Redis lost its counters (a restart?); re-seeding the monthly quota from the log")
            used, mode = await self._reseed(), "max"
        else:
            return
        if await self._seed(used, mode):
            self._pending_seed = None

    def failed(self, what: str, exc: BaseException) -> None:
        self.errors_total += 1
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more failures since the last warning)" if self._unwarned else ""
        self._warned_at, self._unwarned = now, 0
        policy = "admitted uncounted" if self.on_error == "open" else "answered 503"
        log.warning("Redis limits: %s failed: %s; requests are %s meanwhile%s", what, _describe(exc), policy, more)


# Admission ids: a random part per process (forked workers draw again), then a counter
_ids = itertools.count()
_id_prefix = os.urandom(6).hex() + ":"


def _new_process() -> None:
    global _ids, _id_prefix
    _ids, _id_prefix = itertools.count(), os.urandom(6).hex() + ":"


os.register_at_fork(after_in_child=_new_process)


def _new_id() -> str:
    return _id_prefix + format(next(_ids), "x")


def _arg(limit: int | None) -> int | str:
    return "" if limit is None else limit


def _retry_after(rejected: str, ref: bytes, at: float) -> float | None:
    """Seconds until the refused request would be admitted, as InProcessLimiter says it."""
    if rejected == QUOTA:
        return next_month_start(at) - at
    if rejected == CONCURRENCY:
        return CONCURRENCY_RETRY
    if rejected == RPM:
        return float(ref) + WINDOW - at
    if rejected == TPM:
        return (float(ref) + WINDOW if ref else 0.0) - at
    return None  # too large: waiting will not help


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
