"""What `gateway usage` prints, read from either usage-log backend.

`read_report(database, start, month_since)` gives the totals per key and model and
per tier since `start`, the failed calls by key, model, error code and status since
`start`, and each key's tokens since `month_since` (the monthly quota), or None when
nothing was ever logged there.  SQLite is read here through a read-only `sqlite3`
connection (the command is synchronous and never writes); PostgreSQL through
`gateway.usage_postgres`, all four queries in one read-only snapshot.

`as_json` is the `--json` output: every table, with stable field names.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

from gateway.config import is_postgres


class Report(NamedTuple):
    by_key: list[tuple[Any, ...]]  # key, model, requests, errors, prompt, completion, total, estimated
    by_tier: list[tuple[Any, ...]]  # tier, requests, errors, prompt, completion, total
    month: dict[str, int]  # tokens per key name since month_since
    errors: list[tuple[Any, ...]] = []  # key, model, error code, status, requests (status >= 400)


# Failed calls by cause, the same on both backends: the key and model as the totals
# show them, '-' for a row without an error code (a 4xx/5xx relayed from upstream as is)
_ERRORS_SQLITE: Final = """
    SELECT coalesce(key_name, '(unauthenticated)'), coalesce(model, '-'), coalesce(error_code, '-'), status, count(*)
    FROM usage WHERE ts >= ? AND status >= 400 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
# text ordered byte-wise ("C") as SQLite orders it, so both print the same report
_ERRORS_POSTGRES: Final = """
    SELECT coalesce(key_name, '(unauthenticated)') COLLATE "C", coalesce(model, '-') COLLATE "C",
           coalesce(error_code, '-') COLLATE "C", status, count(*)
    FROM usage WHERE ts >= $1 AND status >= 400 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""


def read_report(database: str, start: float, month_since: float) -> Report | None:
    """Raises UsageLogError (PostgreSQL) or sqlite3.Error when the log cannot be read."""
    if is_postgres(database):
        return asyncio.run(_read_postgres(database, start, month_since))
    if not Path(database).exists():
        return None
    return _read_sqlite(database, start, month_since)


def nothing_logged(database: str) -> str:
    """Why there is no report: the line `gateway usage` prints."""
    if is_postgres(database):
        from gateway.postgres import describe

        return f"no usage recorded yet ({describe(database)} has no usage table)"
    return f"no usage recorded yet ({database} does not exist)"


def _read_sqlite(path: str, start: float, month_since: float) -> Report:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
        # tokens the gateway estimated (the upstream's usage never came: hang-up, cut stream)
        estimated = "tokens_estimated * total_tokens" if "tokens_estimated" in columns else "0"
        by_key = db.execute(
            f"""SELECT coalesce(key_name, '(unauthenticated)'), coalesce(model, '-'), count(*),
                      sum(status >= 400), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
                      sum({estimated})
               FROM usage WHERE ts >= ? GROUP BY 1, 2 ORDER BY 1, 2""",
            (start,),
        ).fetchall()
        by_tier = db.execute(
            """SELECT coalesce(tier, '-'), count(*), sum(status >= 400), sum(prompt_tokens),
                      sum(completion_tokens), sum(total_tokens)
               FROM usage WHERE ts >= ? GROUP BY 1 ORDER BY 1""",
            (start,),
        ).fetchall()
        month = db.execute(
            "SELECT key_name, sum(total_tokens) FROM usage WHERE ts >= ? AND key_name IS NOT NULL GROUP BY 1",
            (month_since,),
        ).fetchall()
        errors = db.execute(_ERRORS_SQLITE, (start,)).fetchall()
    finally:
        db.close()
    return Report(by_key, by_tier, {name: int(total or 0) for name, total in month}, errors)


async def _read_postgres(url: str, start: float, month_since: float) -> Report | None:
    # asyncpg only when PostgreSQL is used; the totals' queries stay beside the writer
    # that defines the table, read here with the errors' in the same snapshot
    from gateway.usage_postgres import _BY_KEY, _BY_TIER, _MONTH, _read

    found = await _read(url, [(_BY_KEY, start), (_BY_TIER, start), (_MONTH, month_since), (_ERRORS_POSTGRES, start)])
    if found is None:
        return None
    by_key, by_tier, month, errors = found
    return Report(
        [tuple(r) for r in by_key],
        [tuple(r) for r in by_tier],
        {name: int(total or 0) for name, total in month},
        [tuple(r) for r in errors],
    )


# -- --json ---------------------------------------------------------------------------------

# field names of each table's rows in --json, in the text tables' column order
BY_KEY_FIELDS: Final = (
    "key", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_tokens",
)  # fmt: skip
BY_TIER_FIELDS: Final = ("tier", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
ERRORS_FIELDS: Final = ("key", "model", "error_code", "status", "requests")
QUOTA_FIELDS: Final = ("key", "tier", "month_quota", "used", "remaining")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _objects(fields: tuple[str, ...], rows: list[tuple[Any, ...]], text: int) -> list[dict[str, Any]]:
    """Rows as objects; the numbers as integers (a SUM over no value is NULL: 0)."""
    return [
        {f: (v if i < text else int(v or 0)) for i, (f, v) in enumerate(zip(fields, row, strict=True))} for row in rows
    ]


def as_json(
    report: Report | None, since: float | None, month_since: float, quotas: list[tuple[str, str, int, int]]
) -> dict[str, Any]:
    """`gateway usage --json`: every table, whatever --tiers and --errors say, so a script
    reads one shape.  `quotas`: (key, tier, quota, used) per key with a monthly quota.
    `logged` is false when the database holds no usage log yet (every table then empty)."""
    found = report or Report([], [], {}, [])
    return {
        "since": _iso(since),
        "month_start": _iso(month_since),
        "logged": report is not None,
        "by_key": _objects(BY_KEY_FIELDS, found.by_key, 2),
        "by_tier": _objects(BY_TIER_FIELDS, found.by_tier, 1),
        "errors": _objects(ERRORS_FIELDS, found.errors, 3),
        "quotas": _objects(QUOTA_FIELDS, [(k, t, q, u, max(0, q - u)) for k, t, q, u in quotas], 2),
    }
