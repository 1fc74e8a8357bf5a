"""Tier capacity: requests and tokens per rolling minute, requests in flight, and a
monthly token quota, per API key.

The state lives behind `Limiter`, a small interface with one implementation here
(`InProcessLimiter`, one gateway process).  A shared backend for several processes
(Redis with one Lua script per call, say) implements the same three methods; the
methods are coroutines for that reason, but the in-process one never suspends, so
between its check and its count no other request can run: of 50 requests arriving
at once, no request over a limit is admitted.

The limiter is kept on the application, not in the reloadable `Runtime`: a reload
brings new limits (each call passes the limits in force) and keeps the counters.

Token accounting.  At admission the prompt is *estimated* offline with
`estimate_chat_tokens` / `estimate_embedding_tokens`: ceil(characters / 4) over the
text the model reads (OpenAI's own rule of thumb for English; no tokenizer is
downloaded, nothing blocks the loop).  When the answer ends, `release` replaces the
estimate by the real `total_tokens` the provider reported (prompt + completion), the
same number the usage log stores, so the monthly quota counted live and the one
recounted from the log after a restart agree.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import aiosqlite

from gateway.config import Limits, is_postgres

WINDOW: Final = 60.0  # seconds: rpm and tpm are per rolling minute
CONCURRENCY_RETRY: Final = 1.0  # a slot frees when some request in flight ends: unknowable, so a polling hint

# Why a request was refused (the `Admission.rejected` values)
QUOTA: Final = "tokens_per_month"
RPM: Final = "rpm"
TPM: Final = "tpm"
CONCURRENCY: Final = "concurrency"
TOO_LARGE: Final = "too_large"  # the prompt alone is over tpm: waiting will not help


@dataclass(slots=True)
class _Charge:
    ts: float
    tokens: int
    live: bool = True  # still inside the window (False once pruned)


@dataclass(slots=True)
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[_Charge] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: int = 0
    month_used: int = 0


@dataclass(slots=True)
class Admission:
    """The decision for one request, and what the client is told about its limits.

    `remaining_*` are after this request was counted; `reset_*` are seconds until
    the window is back to its full allowance (OpenAI's meaning of the header)."""

    key: str
    limits: Limits
    estimate: int
    at: float
    month: int
    rejected: str | None = None
    retry_after: float | None = None  # seconds until the refused request would be admitted
    remaining_requests: int | None = None
    reset_requests: float = 0.0
    remaining_tokens: int | None = None
    reset_tokens: float = 0.0
    remaining_month: int | None = None
    charge: _Charge | None = None  # the in-process token charge to reconcile


@dataclass(frozen=True, slots=True)
class Peek:
    """A key's counters as they stand, read without charging anything (`Limiter.peek`):
    what the dashboard shows next to each limit.  `remaining_*` are None when unlimited."""

    requests: int  # admissions in the rolling minute
    tokens: int  # tokens charged in the rolling minute
    in_flight: int
    month_used: int  # tokens this calendar month (UTC)
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    remaining_concurrency: int | None = None
    remaining_month: int | None = None


def peek_of(limits: Limits, requests: int, tokens: int, in_flight: int, month_used: int) -> Peek:
    """The `Peek` both limiters return, from their raw counters (one rule, two backends)."""

    def left(limit: int | None, used: int) -> int | None:
        return None if limit is None else max(0, limit - used)

    return Peek(requests, tokens, in_flight, month_used, left(limits.rpm, requests), left(limits.tpm, tokens),
                left(limits.concurrency, in_flight), left(limits.tokens_per_month, month_used))  # fmt: skip


class Limiter(Protocol):
    async def admit(self, key: str, limits: Limits, estimated_tokens: int, now: float | None = None) -> Admission:
        """Check every limit and, when all pass, count the request (atomically)."""
        ...

    async def release(self, admission: Admission, actual_tokens: int, now: float | None = None) -> None:
        """The request ended: free its concurrency slot; its estimate becomes `actual_tokens`."""
        ...

    async def seed_month(self, used: Mapping[str, int], now: float | None = None) -> None:
        """Tokens each key already used this calendar month (from the usage log, at start)."""
        ...

    async def peek(self, key: str, limits: Limits, now: float | None = None) -> Peek:
        """The key's counters now, read only: nothing is charged, pruned or created."""
        ...


def month_index(ts: float) -> int:
    when = datetime.fromtimestamp(ts, UTC)
    return when.year * 12 + when.month - 1


def month_start(ts: float) -> float:
    when = datetime.fromtimestamp(ts, UTC)
    return datetime(when.year, when.month, 1, tzinfo=UTC).timestamp()


def next_month_start(ts: float) -> float:
    when = datetime.fromtimestamp(ts, UTC)
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


class InProcessLimiter:
    """Every counter in this process's memory.  `clock` is wall time (the quota
    follows the UTC calendar); tests replace it to move time without sleeping."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._month: int | None = None

    async def seed_month(self, used: Mapping[str, int], now: float | None = None) -> None:
        self._roll_month(self.clock() if now is None else now)
        for key, tokens in used.items():
            self._state(key).month_used = int(tokens)

    async def admit(self, key: str, limits: Limits, estimated_tokens: int, now: float | None = None) -> Admission:
        now = self.clock() if now is None else now
        month = self._roll_month(now)
        st = self._state(key)
        self._prune(st, now)
        est = max(0, int(estimated_tokens))
        adm = Admission(key=key, limits=limits, estimate=est, at=now, month=month)

        quota = limits.tokens_per_month
        if quota is not None and st.month_used + est > quota:
            adm.rejected, adm.retry_after = QUOTA, next_month_start(now) - now
        elif limits.concurrency is not None and st.in_flight >= limits.concurrency:
            adm.rejected, adm.retry_after = CONCURRENCY, CONCURRENCY_RETRY
        elif limits.rpm is not None and len(st.requests) >= limits.rpm:
            adm.rejected = RPM  # the oldest request leaving the window frees a slot
            adm.retry_after = st.requests[len(st.requests) - limits.rpm] + WINDOW - now
        elif limits.tpm is not None and est > limits.tpm:
            adm.rejected = TOO_LARGE
        elif limits.tpm is not None and st.token_sum + est > limits.tpm:
            adm.rejected, adm.retry_after = TPM, self._tokens_free_at(st, est, limits.tpm) - now
        else:
            st.requests.append(now)
            adm.charge = _Charge(now, est)
            st.tokens.append(adm.charge)
            st.token_sum += est
            st.in_flight += 1
            st.month_used += est
        self._describe(adm, st, now)
        return adm

    async def release(self, admission: Admission, actual_tokens: int, now: float | None = None) -> None:
        charge = admission.charge
        if charge is None:  # refused: nothing was counted
            return
        admission.charge = None  # releasing twice is harmless
        st = self._state(admission.key)
        st.in_flight -= 1
        actual = max(0, int(actual_tokens))
        if charge.live:
            st.token_sum += actual - charge.tokens
        charge.tokens = actual
        if admission.month == self._month:  # a request from last month counts in last month only
            st.month_used += actual - admission.estimate

    async def peek(self, key: str, limits: Limits, now: float | None = None) -> Peek:
        now = self.clock() if now is None else now
        st = self._keys.get(key)  # never _state(): a look must not create a key's counters
        if st is None:
            return peek_of(limits, 0, 0, 0, 0)
        horizon = now - WINDOW  # counted as _prune would, without pruning: admit() does that
        requests = sum(1 for ts in st.requests if ts > horizon)
        tokens = sum(c.tokens for c in st.tokens if c.ts > horizon)
        # a month rolled since the last admission: its counter is stale until admit() rolls it
        month_used = 0 if self._month is not None and month_index(now) > self._month else st.month_used
        return peek_of(limits, requests, tokens, st.in_flight, month_used)

    # -- internals ---------------------------------------------------------------------

    def _state(self, key: str) -> _KeyState:
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _KeyState()
        return st

    def _roll_month(self, now: float) -> int:
        month = month_index(now)
        if month != self._month:
            if self._month is not None and month > self._month:
                for st in self._keys.values():
                    st.month_used = 0
            self._month = max(month, self._month or month)
        return self._month

    @staticmethod
    def _prune(st: _KeyState, now: float) -> None:
        horizon = now - WINDOW
        while st.requests and st.requests[0] <= horizon:
            st.requests.popleft()
        while st.tokens and st.tokens[0].ts <= horizon:
            charge = st.tokens.popleft()
            charge.live = False
            st.token_sum -= charge.tokens

    @staticmethod
    def _tokens_free_at(st: _KeyState, est: int, tpm: int) -> float:
        """When enough charges will have left the window for `est` more tokens to fit."""
        excess = st.token_sum + est - tpm
        for charge in st.tokens:
            excess -= charge.tokens
            if excess <= 0:
                return charge.ts + WINDOW
        return st.tokens[-1].ts + WINDOW if st.tokens else 0.0

    @staticmethod
    def _describe(adm: Admission, st: _KeyState, now: float) -> None:
        limits = adm.limits
        if limits.rpm is not None:
            adm.remaining_requests = max(0, limits.rpm - len(st.requests))
            adm.reset_requests = st.requests[-1] + WINDOW - now if st.requests else 0.0
        if limits.tpm is not None:
            adm.remaining_tokens = max(0, limits.tpm - st.token_sum)
            adm.reset_tokens = st.tokens[-1].ts + WINDOW - now if st.tokens else 0.0
        if limits.tokens_per_month is not None:
            adm.remaining_month = max(0, limits.tokens_per_month - st.month_used)


# -- headers -------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms', '1s', '6m0s', '1h2m3s'."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds * 1000) / 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def rate_headers(adm: Admission) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits that are set (an unset limit,
    being unlimited, has no header)."""
    out: dict[str, str] = {}
    limits = adm.limits
    if limits.rpm is not None and adm.remaining_requests is not None:
        out["x-ratelimit-limit-requests"] = str(limits.rpm)
        out["x-ratelimit-remaining-requests"] = str(adm.remaining_requests)
        out["x-ratelimit-reset-requests"] = duration(adm.reset_requests)
    if limits.tpm is not None and adm.remaining_tokens is not None:
        out["x-ratelimit-limit-tokens"] = str(limits.tpm)
        out["x-ratelimit-remaining-tokens"] = str(adm.remaining_tokens)
        out["x-ratelimit-reset-tokens"] = duration(adm.reset_tokens)
    if limits.tokens_per_month is not None and adm.remaining_month is not None:
        out["x-ratelimit-limit-tokens-month"] = str(limits.tokens_per_month)  # the gateway's own addition
        out["x-ratelimit-remaining-tokens-month"] = str(adm.remaining_month)
    return out


# -- prompt estimates ------------------------------------------------------------------------

_SKIP: Final = frozenset({"image_url", "input_audio", "file", "file_data", "url", "data"})  # base64, links


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for k, v in value.items() if k not in _SKIP)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0


def estimate_text_tokens(chars: int) -> int:
    """The rule every estimate uses: ceil(characters / 4)."""
    return math.ceil(chars / 4)


def estimate_chat_tokens(body: Mapping[str, Any]) -> int:
    """ceil(characters / 4) over the messages' text (roles, names, contents, tool
    calls) and the tool definitions; images, audio and files are not counted."""
    return math.ceil((_chars(body.get("messages")) + _chars(body.get("tools"))) / 4)


def estimate_embedding_tokens(body: Mapping[str, Any]) -> int:
    """ceil(characters / 4) over text inputs; token-array inputs count exactly."""
    value = body.get("input")
    items: Iterable[Any] = value if isinstance(value, list) else [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return len(value)  # one pre-tokenized input
    total = 0
    for item in items:
        if isinstance(item, str):
            total += math.ceil(len(item) / 4)
        elif isinstance(item, list):
            total += len(item)
    return total


# -- the monthly quota across restarts -------------------------------------------------------


async def load_month_usage(database: str, now: float | None = None) -> dict[str, int]:
    """Tokens per key name logged since the start of this calendar month (UTC), from
    either backend.  PostgreSQL: raises UsageLogError (naming the database) when it
    cannot be read: a quota silently seeded with zero would let keys overspend."""
    since = month_start(time.time() if now is None else now)
    if is_postgres(database):
        from gateway.usage_postgres import month_usage  # asyncpg only when PostgreSQL is used

        return await month_usage(database, since)
    try:
        async with aiosqlite.connect(database) as db:
            async with db.execute(
                "SELECT key_name, sum(total_tokens) FROM usage WHERE ts >= ? AND key_name IS NOT NULL GROUP BY 1",
                (since,),
            ) as cur:
                return {name: int(total or 0) for name, total in await cur.fetchall()}
    except sqlite3.Error:  # no usage table (a fresh in-memory database): nothing used yet
        return {}
