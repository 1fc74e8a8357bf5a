"""Per-hour totals of the usage log (table `usage_hourly`), kept by the sinks themselves.

A row per (hour start, key_name, tier, model, provider, status, error_code) holds the
requests, the prompt, completion and total tokens, and two histograms (latency and
time to first byte) as one count column per bucket (`lat0`..`lat80`, `ttfb0`..): the
dashboard's buckets, growing by BUCKET_RATIO, so a percentile read from here is the
one read from the rows.  Text keys hold '' for NULL (a unique key must not hold NULL).

Each sink folds a batch into groups here, in Python (`fold`), and upserts one row per
group in the same transaction as the batch's rows, so totals and rows never disagree;
rows replayed from a spill file take the same path.  The migration that creates the
table fills it from the rows already logged (`backfill`)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from typing import Any, Final

from gateway.usage_record import COLUMNS, Row, coerce_row

HOUR: Final = 3600
BUCKET_RATIO: Final = 1.2
# bucket k holds BOUNDS[k-1] <= ms < BOUNDS[k]; the last one is open-ended (> 24 min)
BOUNDS: Final = tuple(BUCKET_RATIO**i for i in range(80))
BUCKETS: Final = len(BOUNDS) + 1
LAT: Final = tuple(f"lat{k}" for k in range(BUCKETS))
TTFB: Final = tuple(f"ttfb{k}" for k in range(BUCKETS))
KEY: Final = ("hour", "key_name", "tier", "model", "provider", "status", "error_code")
SUMS: Final = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
COUNTS: Final = (*SUMS, *LAT, *TTFB)
ALL: Final = (*KEY, *COUNTS)
_BIG: Final = 2**63 - 1

_AT: Final = {c: i for i, c in enumerate(COLUMNS)}
_TS, _KEY_NAME, _TIER, _MODEL, _PROVIDER, _STATUS, _ERROR = (
    _AT[c] for c in ("ts", "key_name", "tier", "model", "provider", "status", "error_code")
)
_PROMPT, _COMPLETION, _TOTAL, _LATENCY, _TTFB = (
    _AT[c] for c in ("prompt_tokens", "completion_tokens", "total_tokens", "latency_ms", "ttfb_ms")
)


def bucket(ms: float) -> int:
    """The histogram bucket of `ms`: the number of bounds at or below it."""
    return bisect.bisect_right(BOUNDS, ms)


def bucket_sql(column: str, lo: int = 0, hi: int = len(BOUNDS)) -> str:
    """`bucket(column)` in SQL, as a nested CASE (a binary search)."""
    if lo == hi:
        return str(lo)
    mid = (lo + hi) // 2
    below, above = bucket_sql(column, lo, mid), bucket_sql(column, mid + 1, hi)
    return f"CASE WHEN {column} < {BOUNDS[mid]!r} THEN {below} ELSE {above} END"


def _measured(value: Any) -> bool:
    return value is not None and isinstance(value, int | float) and not math.isnan(value)


def fold(rows: Iterable[Row]) -> list[tuple[Any, ...]]:
    """One (KEY..., COUNTS...) tuple per group of `rows`. Raises TypeError on a row whose
    values are not of their columns' types (the sinks then write coerced rows)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    lat0, ttfb0 = len(SUMS), len(SUMS) + BUCKETS
    for r in rows:
        key = (int(r[_TS] // HOUR) * HOUR, r[_KEY_NAME] or "", r[_TIER] or "", r[_MODEL] or "",
               r[_PROVIDER] or "", int(r[_STATUS]), r[_ERROR] or "")  # fmt: skip
        g = groups.get(key)
        if g is None:
            g = groups[key] = [0] * len(COUNTS)
        g[0] += 1
        g[1] += int(r[_PROMPT])
        g[2] += int(r[_COMPLETION])
        g[3] += int(r[_TOTAL])
        if _measured(latency := r[_LATENCY]):
            g[lat0 + bucket(latency)] += 1
        if _measured(ttfb := r[_TTFB]):
            g[ttfb0 + bucket(ttfb)] += 1
    for g in groups.values():
        for i in (1, 2, 3):
            g[i] = max(-_BIG, min(g[i], _BIG))
    # in key order: two PostgreSQL writers upserting the same groups lock them alike (no deadlock)
    return [(*key, *groups[key]) for key in sorted(groups)]


def create_sql(integer: str) -> str:
    """The table; `integer` is the backend's 64-bit integer type."""
    counts = ", ".join(f"{c} {integer} NOT NULL DEFAULT 0" for c in COUNTS)
    return (
        f"CREATE TABLE usage_hourly (hour {integer} NOT NULL, key_name TEXT NOT NULL, tier TEXT NOT NULL, "
        f"model TEXT NOT NULL, provider TEXT NOT NULL, status {integer} NOT NULL, error_code TEXT NOT NULL, "
        f"{counts}, PRIMARY KEY ({', '.join(KEY)}))"
    )


def upsert_sql(placeholders: list[str]) -> str:
    """Add one group's counts to its row (created when missing)."""
    adds = ", ".join(f"{c} = usage_hourly.{c} + excluded.{c}" for c in COUNTS)
    return (
        f"INSERT INTO usage_hourly ({', '.join(ALL)}) VALUES ({', '.join(placeholders)}) "
        f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {adds}"
    )


def backfill(rows: list[Row]) -> list[tuple[Any, ...]]:
    """`fold` for rows already in a log, whatever an older version let into them: a chunk
    with a value of the wrong type is folded coerced, as the sinks would have written it."""
    try:
        return fold(rows)
    except (TypeError, ValueError, OverflowError):
        return fold([coerce_row(row) for row in rows])


# the migration reads the log in chunks of this many rows (folding all of it at once
# would hold every group of every hour in memory)
BACKFILL_ROWS: Final = 20_000
SELECT_ROWS: Final = f"SELECT {', '.join(COLUMNS)} FROM usage"
SQLITE_UPSERT: Final = upsert_sql(["?"] * len(ALL))
POSTGRES_UPSERT: Final = upsert_sql([f"${i}" for i in range(1, len(ALL) + 1)])
