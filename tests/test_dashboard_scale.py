"""The dashboard on a usage log of a million rows (SQLite, one executemany over 30 days,
100 keys, 10 models, then the migration that fills `usage_hourly` from them), timed
through a real gateway's pages, and the operator's 30 days read from the rows alone; and the same reads on
PostgreSQL give the same numbers as on SQLite.  Timings are written to
tests/artifacts/dashboard/timings.txt."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ENV, base_config
from dashboard_support import ADMIN_KEY, NOW, cell_numbers, insert_postgres, insert_sqlite, rows, sign_in
from pg_support import pg_url_fixture, require_asyncpg  # noqa: F401  (the pg_url fixture)

from gateway.config import hash_key
from gateway.dashboard import queries
from gateway.dashboard.queries import UsageReader
from gateway.usage_record import COLUMNS
from gateway.usage_sqlite import _MIGRATIONS, open_db

ARTIFACTS = Path(__file__).parent / "artifacts" / "dashboard"
ROWS = 1_000_000


def _million(path: str, now: float) -> None:
    rnd = random.Random(16)
    at = {c: i for i, c in enumerate(COLUMNS)}
    template: list[Any] = [None] * len(COLUMNS)
    for column in ("stream", "tokens_estimated", "cached_tokens", "cache_write_tokens"):
        template[at[column]] = 0

    def row(i: int) -> list[Any]:
        r = template.copy()
        r[at["ts"]], r[at["endpoint"]] = now - 30 * 86400 * i / ROWS, "/v1/chat/completions"
        r[at["key_name"]], r[at["tier"]], r[at["model"]] = f"key{i % 100}", "pro" if i % 3 else "free", f"m{i % 10}"
        r[at["status"]] = 200 if i % 50 else 502
        r[at["prompt_tokens"]] = r[at["completion_tokens"]] = 5
        r[at["total_tokens"]] = 10
        r[at["latency_ms"]], r[at["ttfb_ms"]] = rnd.uniform(50, 5000), rnd.uniform(10, 500)
        return r

    db = sqlite3.connect(path)
    db.executemany(f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
                   (row(i) for i in range(ROWS)))  # fmt: skip
    db.commit()
    db.close()


async def _timed(http: aiohttp.ClientSession, url: str) -> float:
    start = time.perf_counter()
    async with http.get(url) as page:
        assert page.status == 200
        await page.read()
    return time.perf_counter() - start


async def test_pages_on_a_million_rows(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "usage.db")
    db = sqlite3.connect(path)  # the schema as it was before the per-hour totals...
    db.executescript("".join(_MIGRATIONS[:-1]) + f"PRAGMA user_version = {len(_MIGRATIONS) - 1};")
    db.close()
    _million(path, time.time())
    timings: dict[str, float] = {}
    started = time.perf_counter()
    await (await open_db(path)).close()  # ...and the migration that fills them from the rows
    timings["migration filling usage_hourly"] = time.perf_counter() - started
    doc = base_config({"oai": ("openai", openai_upstream[1])}, path, metrics={"admin_key": "${ADMIN_KEY}"})
    doc["keys"].append({"name": "key7", "key_sha256": hash_key("sk-key7-0123456789"), "tier": "pro"})
    gw = await start_gateway(doc, {**ENV, "ADMIN_KEY": ADMIN_KEY})
    base = str(gw.server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, base, "sk-key7-0123456789")
        for period in ("7d", "30d", "90d"):
            timings[f"key holder {period}"] = await _timed(http, f"{base}/dashboard/me?period={period}")
        async with http.get(f"{base}/dashboard/me?period=7d") as page:
            shown = cell_numbers(await page.text(), "totals", "all models")
    db = sqlite3.connect(path)
    week = (time.time() // 86400 - 6) * 86400  # the page's 7 days: today and the 6 before
    sql = "SELECT count(*), sum(status >= 400), sum(total_tokens) FROM usage WHERE key_name = 'key7' AND ts >= ?"
    [expected] = db.execute(sql, (week,)).fetchall()
    db.close()
    assert shown == list(expected) and shown[0] > 1000
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, base, ADMIN_KEY)
        for period in ("1h", "24h", "7d", "30d"):
            timings[f"operator {period}"] = await _timed(http, f"{base}/dashboard/ops?period={period}")
    monkeypatch.setattr(queries, "HOURLY_FROM", float("inf"))  # as before usage_hourly: every row read
    started = time.perf_counter()
    await UsageReader(path).operator(time.time() - 30 * 86400, time.time() + 1)
    timings["operator 30d read from the rows only (the reads alone)"] = time.perf_counter() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = "\n".join(f"{name}: {seconds:.3f} s" for name, seconds in timings.items())
    (ARTIFACTS / "timings.txt").write_text(f"{ROWS:,} rows over 30 days\n{report}\n")
    print(report)
    assert max(v for k, v in timings.items() if k.startswith("key holder")) < 1.0  # the (key_name, ts) index
    assert timings["operator 24h"] < 1.0 and timings["operator 30d"] < 3.0  # usage_hourly


async def test_postgres_reads_the_same_numbers_as_sqlite(pg_url: str, tmp_path: Path) -> None:
    require_asyncpg()
    path = str(tmp_path / "usage.db")
    await (await open_db(path)).close()
    insert_sqlite(path, rows())
    await insert_postgres(pg_url, rows())
    lite, pg = UsageReader(path), UsageReader(pg_url)
    start = (NOW // 86400 - 29) * 86400
    a, b = await lite.holder("alice", start, NOW + 1), await pg.holder("alice", start, NOW + 1)
    assert a.daily == b.daily and len(a.recent) == 7 and a.more is False
    assert [r[1:] for r in a.recent] == [r[1:] for r in b.recent]  # ids differ: each database numbers its own
    assert sum(r[4] for r in a.daily) == 5720 and {r[1] for r in a.daily} == {"oai-large", "oai-small"}
    for span in ((NOW - 86400, NOW + 1), (NOW - 7 * 86400, NOW + 1)):
        x, y = await lite.operator(*span), await pg.operator(*span)
        assert sorted(x.groups) == sorted(y.groups) and x.daily == y.daily and x.errors == y.errors
        assert x.latency == y.latency and x.ttfb == y.ttfb
    day = await pg.operator(NOW - 86400, NOW + 1)
    assert sum(g[7] for g in day.groups) == 3725 and day.errors == [(429, "rate_limit_exceeded", 1),
                                                                     (502, "upstream_error", 1)]  # fmt: skip
    assert day.latency["oai-large"]["n"] == 3 and 900 < day.latency["oai-large"]["p99"] < 1100  # true: 1000 ms


async def test_a_database_without_a_usage_log_shows_nothing(tmp_path: Path) -> None:
    reader = UsageReader(str(tmp_path / "never-created.db"))
    data = await reader.operator(0, NOW)
    assert data.groups == [] and data.errors == [] and data.latency == {}
