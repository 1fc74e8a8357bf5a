"""What `gateway usage` prints, read from either usage-log backend.

`read_report(database, start, month_since)` gives the totals per key and model and
per tier since `start`, and each key's tokens since `month_since` (the monthly
quota), or None when nothing was ever logged there.  SQLite is read here through a
read-only `sqlite3` connection (the command is synchronous and never writes);
PostgreSQL through `gateway.usage_postgres.report`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from gateway.config import is_postgres


class Report(NamedTuple):
    by_key: list[tuple[Any, ...]]  # key, model, requests, errors, prompt, completion, total, estimated
    by_tier: list[tuple[Any, ...]]  # tier, requests, errors, prompt, completion, total
    month: dict[str, int]  # tokens per key name since month_since


def read_report(database: str, start: float, month_since: float) -> Report | None:
    """Raises UsageLogError (PostgreSQL) or sqlite3.Error when the log cannot be read."""
    if is_postgres(database):
        from gateway.usage_postgres import report  # asyncpg only when PostgreSQL is used

        return asyncio.run(report(database, start, month_since))
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
    finally:
        db.close()
    return Report(by_key, by_tier, {name: int(total or 0) for name, total in month})
