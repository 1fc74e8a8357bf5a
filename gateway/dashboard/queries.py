"""The dashboard's reads of the usage log, on SQLite and PostgreSQL alike.

Every query is bounded so a page stays fast on a log of millions of rows:
- a key holder's queries always filter on `key_name = ?` and a `ts` range (or a
  `ts` cursor), so they walk the (key_name, ts) index and nothing of another key is
  ever read;
- the operator's queries are limited to one period (`ts >= ? AND ts < ?`, the ts
  index), at most MAX_PERIOD long, and return grouped rows only;
- lists are pages of at most PAGE rows, fetched by a (ts, id) cursor, not OFFSET;
- on PostgreSQL each page's queries run in one read-only snapshot; on SQLite in
  parallel, one connection each; either way cut off after QUERY_TIMEOUT.

Periods of HOURLY_FROM or more read the whole hours from `usage_hourly` (per-hour
totals the sinks keep, `gateway.usage_hourly`) and only the part hours at either end
from the rows: the same numbers from one row per group and hour instead of one per request.

Latency and time-to-first-byte percentiles come from a histogram computed in SQL
(buckets growing by BUCKET_RATIO, `gateway.usage_hourly`, found by a nested CASE:
about 7 comparisons per row, no sort of the period's rows), so each percentile is the geometric middle of
its bucket: within about 10 % of the exact value, the same on both backends.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.config import is_postgres
from gateway.usage_hourly import BOUNDS, HOUR, LAT, TTFB
from gateway.usage_hourly import bucket_sql as _bucket_sql
from gateway.usage_record import UsageLogError

DAY: Final = 86400
MAX_PERIOD: Final = 90 * DAY
PAGE: Final = 50  # recent requests per page
QUERY_TIMEOUT: Final = 10.0  # seconds one page's queries may take, all together

Rows = list[tuple[Any, ...]]


def bucket_value(k: int) -> float:
    """What a value in bucket k is shown as: the bucket's geometric middle (ms)."""
    if k == 0:
        return BOUNDS[0] / 2
    if k >= len(BOUNDS):
        return BOUNDS[-1]
    return math.sqrt(BOUNDS[k - 1] * BOUNDS[k])


# `day` is a UTC day number (ts // 86400); both backends floor a positive float alike
_DAY_SQLITE: Final = "CAST(ts / 86400 AS INTEGER)"
_DAY_POSTGRES: Final = "CAST(floor(ts / 86400) AS BIGINT)"
_ERR: Final = "CAST(sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT)"


def _sum(column: str) -> str:
    return f"CAST(coalesce(sum({column}), 0) AS BIGINT)"


# -- the key holder's page (always one key name) ---------------------------------------------

HOLDER_DAILY: Final = f"""
    SELECT {{day}}, coalesce(model, '-'), count(*), {_ERR}, {_sum("total_tokens")}
    FROM usage WHERE key_name = ? AND ts >= ? AND ts < ? GROUP BY 1, 2 ORDER BY 1, 2
"""
# a page of the newest rows before the cursor (ts, id): the (key_name, ts) index, backwards
HOLDER_RECENT: Final = """
    SELECT id, ts, coalesce(endpoint, '-'), coalesce(model, '-'), status, coalesce(error_code, ''),
           total_tokens, latency_ms, ttfb_ms, stream
    FROM usage WHERE key_name = ? AND (ts < ? OR (ts = ? AND id < ?))
    ORDER BY ts DESC, id DESC LIMIT ?
"""

# -- the operator's page (one period) -----------------------------------------------------------
# a NULL and an empty text show alike (usage_hourly holds '' for NULL)
_TIER: Final = "coalesce(nullif(tier, ''), '-')"
_KEY: Final = "coalesce(nullif(key_name, ''), '(unauthenticated)')"
_MODEL: Final = "coalesce(nullif(model, ''), '-')"
_CODE: Final = "coalesce(nullif(error_code, ''), '-')"

# the same from usage_hourly, over whole hours (hour >= ? AND hour < ?: its primary key)
_SPAN: Final = "FROM usage_hourly WHERE hour >= ? AND hour < ?"
HOURLY_GROUPS: Final = f"""
    SELECT {_TIER}, {_KEY}, {_MODEL}, {_sum("requests")},
           {_sum("CASE WHEN status >= 400 THEN requests ELSE 0 END")},
           {_sum("prompt_tokens")}, {_sum("completion_tokens")}, {_sum("total_tokens")}
    {_SPAN} GROUP BY 1, 2, 3
"""
HOURLY_DAILY: Final = f"""
    SELECT hour / 86400, {_TIER}, {_sum("total_tokens")} {_SPAN} GROUP BY 1, 2 ORDER BY 1, 2
"""
HOURLY_ERRORS: Final = f"""
    SELECT status, {_CODE}, {_sum("requests")} {_SPAN} AND status >= 400 GROUP BY 1, 2
"""
HOURLY_LATENCY: Final = f"SELECT {_MODEL}, {', '.join(_sum(c) for c in LAT)} {_SPAN} GROUP BY 1"
HOURLY_TTFB: Final = f"SELECT {_MODEL}, {', '.join(_sum(c) for c in TTFB)} {_SPAN} GROUP BY 1"
HOURLY_FROM: Final = 2 * HOUR  # periods at least this long read usage_hourly for their whole hours

OP_GROUPS: Final = f"""
    SELECT {_TIER}, {_KEY}, {_MODEL}, count(*), {_ERR},
           {_sum("prompt_tokens")}, {_sum("completion_tokens")}, {_sum("total_tokens")}
    FROM usage WHERE ts >= ? AND ts < ? GROUP BY 1, 2, 3
"""
OP_DAILY: Final = f"""
    SELECT {{day}}, {_TIER}, {_sum("total_tokens")}
    FROM usage WHERE ts >= ? AND ts < ? GROUP BY 1, 2 ORDER BY 1, 2
"""
OP_ERRORS: Final = f"""
    SELECT status, {_CODE}, count(*)
    FROM usage WHERE ts >= ? AND ts < ? AND status >= 400 GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 100
"""
OP_LATENCY: Final = f"""
    SELECT {_MODEL}, {_bucket_sql("latency_ms")}, count(*)
    FROM usage WHERE ts >= ? AND ts < ? AND latency_ms IS NOT NULL GROUP BY 1, 2
"""
OP_TTFB: Final = f"""
    SELECT {_MODEL}, {_bucket_sql("ttfb_ms")}, count(*)
    FROM usage WHERE ts >= ? AND ts < ? AND ttfb_ms IS NOT NULL GROUP BY 1, 2
"""


@dataclass(slots=True)
class HolderData:
    daily: Rows  # day, model, requests, errors, total tokens
    recent: Rows  # id, ts, endpoint, model, status, error code, tokens, latency, ttfb, stream
    more: bool  # another page follows the last row


@dataclass(slots=True)
class OperatorData:
    groups: Rows  # tier, key, model, requests, errors, prompt, completion, total
    daily: Rows  # day, tier, total tokens
    errors: Rows  # status, error code, requests
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> p50/p95/p99 (ms)
    ttfb: dict[str, dict[str, float]] = field(default_factory=dict)


def percentiles(histogram: Rows, qs: Sequence[float] = (0.5, 0.95, 0.99)) -> dict[str, dict[str, float]]:
    """model -> {"p50": ms, ...} from (model, bucket, count) rows."""
    by_model: dict[str, list[tuple[int, int]]] = {}
    for model, k, n in histogram:
        by_model.setdefault(model, []).append((int(k), int(n)))
    out: dict[str, dict[str, float]] = {}
    for model, buckets in by_model.items():
        buckets.sort()
        total = sum(n for _, n in buckets)
        values: dict[str, float] = {"n": float(total)}
        for q in qs:
            rank, seen = max(1, math.ceil(q * total)), 0
            for k, n in buckets:
                seen += n
                if seen >= rank:
                    values[f"p{round(q * 100)}"] = bucket_value(k)
                    break
        out[model] = values
    return out


class UsageReader:
    """Reads `database` (an SQLite path or a postgresql:// URL) for the dashboard."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.postgres = is_postgres(database)
        self._day = _DAY_POSTGRES if self.postgres else _DAY_SQLITE

    async def holder(self, key_name: str, start: float, end: float,
                     cursor: tuple[float, int] | None = None) -> HolderData:  # fmt: skip
        before_ts, before_id = cursor or (float("inf"), 2**62)  # no cursor: from the newest row
        daily, recent = await self._run([
            (HOLDER_DAILY.format(day=self._day), (key_name, start, end)),
            (HOLDER_RECENT, (key_name, before_ts, before_ts, before_id, PAGE + 1)),
        ])  # fmt: skip
        return HolderData(daily, recent[:PAGE], len(recent) > PAGE)

    async def operator(self, start: float, end: float) -> OperatorData:
        first, last = math.ceil(start / HOUR) * HOUR, math.floor(end / HOUR) * HOUR
        raw = [OP_GROUPS, OP_DAILY.format(day=self._day), OP_ERRORS, OP_LATENCY, OP_TTFB]
        if end - start < HOURLY_FROM or last <= first:
            span = (start, end)
            groups, daily, errors, latency, ttfb = await self._run([(sql, span) for sql in raw])
            return OperatorData(groups, daily, errors, percentiles(latency), percentiles(ttfb))
        # whole hours from usage_hourly, the part hours at either end from the rows
        edges, hours = (start, first, last, end), (first, last)
        found = await self._run(
            [(sql.replace("ts >= ? AND ts < ?", _EDGES), edges) for sql in raw]
            + [(sql, hours) for sql in (HOURLY_GROUPS, HOURLY_DAILY, HOURLY_ERRORS, HOURLY_LATENCY, HOURLY_TTFB)]
        )
        groups, daily, errors = (_added(found[i] + found[i + 5], width) for i, width in ((0, 3), (1, 2), (2, 2)))
        errors.sort(key=lambda r: (-r[2], r[0], r[1]))
        latency, ttfb = (found[i] + _unfolded(found[i + 5]) for i in (3, 4))
        return OperatorData(groups, sorted(daily), errors[:100], percentiles(latency), percentiles(ttfb))

    async def _run(self, queries: list[tuple[str, tuple[Any, ...]]]) -> list[Rows]:
        if self.postgres:
            return await self._postgres(queries)
        # one thread and connection per query, run together: SQLite releases the GIL while it
        # aggregates, so a page costs its slowest query, not their sum (WAL readers do not block).
        # Each query sees its own snapshot; rows landing in between may show in one table only.
        found = await asyncio.gather(*(asyncio.to_thread(self._sqlite, [query]) for query in queries))
        return [rows[0] for rows in found]

    def _sqlite(self, queries: list[tuple[str, tuple[Any, ...]]]) -> list[Rows]:
        if not Path(self.database).exists():
            return [[] for _ in queries]  # nothing logged yet
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, isolation_level=None)
        deadline = time.monotonic() + QUERY_TIMEOUT
        db.set_progress_handler(lambda: time.monotonic() > deadline, 100_000)  # returns true: interrupt
        try:
            db.execute("BEGIN")  # one snapshot for the queries given (WAL)
            try:
                return [db.execute(sql, args).fetchall() for sql, args in queries]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return [[] for _ in queries]
                raise
        finally:
            db.close()

    async def _postgres(self, queries: list[tuple[str, tuple[Any, ...]]]) -> list[Rows]:
        from gateway.postgres import connect, describe, one_line  # asyncpg only when used

        conn = None
        try:
            conn = await connect(self.database)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT * 1000)}")
                if await conn.fetchval("SELECT to_regclass('usage') IS NULL"):
                    return [[] for _ in queries]
                return [[tuple(r) for r in await conn.fetch(_numbered(sql), *args)] for sql, args in queries]
        except Exception as exc:
            raise UsageLogError(f"usage database {describe(self.database)}: {one_line(exc, self.database)}") from exc
        finally:
            if conn is not None:
                await conn.close(timeout=2.0)


_EDGES: Final = "(ts >= ? AND ts < ? OR ts >= ? AND ts < ?)"


def _added(rows: Rows, width: int) -> Rows:
    """Rows whose first `width` values are equal, as one row with the rest added up."""
    sums: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        acc = sums.setdefault(tuple(row[:width]), [0] * (len(row) - width))
        for i, v in enumerate(row[width:]):
            acc[i] += int(v or 0)
    return [(*key, *acc) for key, acc in sums.items()]


def _unfolded(rows: Rows) -> Rows:
    """(model, count of bucket 0, count of bucket 1, ...) rows as (model, bucket, count) rows."""
    return [(row[0], k, int(n)) for row in rows for k, n in enumerate(row[1:]) if n]


def _numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's $1, $2, ... (no query here has a '?' in a string)."""
    parts = sql.split("?")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, start=1))
