"""Shared by the dashboard tests: usage rows with known totals, written straight into
the SQLite or PostgreSQL log (with their per-hour totals, as the sinks write them), and
signing in the way a browser does (the form's CSRF token, the session cookie)."""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

import aiohttp

from gateway import usage_hourly as hourly
from gateway.usage_record import COLUMNS, UsageRecord

ADMIN_KEY = "sk-test-admin-0123456789"
NOW = time.time()


def rows(now: float = NOW) -> list[UsageRecord]:
    """alice (pro) and bob (free).  Last 24 h: alice oai-large 100+200+300 (one 502),
    oai-small 50+70; bob oai-small 1000+2000 and a 429, plus 5 tokens on a model only
    he used.  Older: alice 5000 three days ago (in 7d and 30d), 99999 forty days ago
    (in no period the pages show but 90d)."""

    def r(ago: float, key: str, tier: str, model: str, tokens: int, status: int = 200, code: str | None = None,
          latency: float = 120.0) -> UsageRecord:  # fmt: skip
        return UsageRecord(ts=now - ago, request_id=f"req-{key}-{ago:g}", endpoint="/v1/chat/completions",
                           key_name=key, tier=tier, model=model, provider="oai", status=status,
                           prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2, total_tokens=tokens,
                           latency_ms=latency, ttfb_ms=latency / 4, error_code=code)  # fmt: skip

    return [
        r(60, "alice", "pro", "oai-large", 100, latency=100),
        r(120, "alice", "pro", "oai-large", 200, latency=200),
        r(180, "alice", "pro", "oai-large", 300, status=502, code="upstream_error", latency=1000),
        r(240, "alice", "pro", "oai-small", 50),
        r(300, "alice", "pro", "oai-small", 70),
        r(360, "bob", "free", "oai-small", 1000),
        r(420, "bob", "free", "oai-small", 2000),
        r(480, "bob", "free", "oai-small", 0, status=429, code="rate_limit_exceeded"),
        r(540, "bob", "free", "bob-only-model", 5),
        r(3 * 86400, "alice", "pro", "oai-small", 5000),
        r(40 * 86400, "alice", "pro", "oai-small", 99999),
    ]


def as_tuple(record: UsageRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, c) for c in COLUMNS)


def insert_sqlite(path: str, records: list[UsageRecord]) -> None:
    db = sqlite3.connect(path)
    try:
        db.executemany(f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
                       [as_tuple(r) for r in records])  # fmt: skip
        db.executemany(hourly.SQLITE_UPSERT, hourly.fold(as_tuple(r) for r in records))  # as the sink does
        db.commit()
    finally:
        db.close()


async def insert_postgres(url: str, records: list[UsageRecord]) -> None:
    from gateway.usage_postgres import open_db

    conn = await open_db(url)  # creates the table as the gateway does
    try:
        await conn.copy_records_to_table("usage", records=[as_tuple(r) for r in records], columns=COLUMNS)
        await conn.executemany(hourly.POSTGRES_UPSERT, hourly.fold(as_tuple(r) for r in records))
    finally:
        await conn.close()


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def sign_in(http: aiohttp.ClientSession, base: str, key: str) -> aiohttp.ClientResponse:
    """GET the form (its token and pre-session cookie), POST the key; follows the redirect."""
    async with http.get(f"{base}/dashboard/signin") as form:
        token = csrf_of(await form.text())
    async with http.post(f"{base}/dashboard/signin", data={"key": key, "csrf": token}) as answer:
        await answer.read()
        return answer


def cell_numbers(page: str, table_class: str, row_label: str) -> list[int]:
    """The numbers of the row labelled `row_label` in table `table_class`."""
    table = re.search(rf'<table class="{table_class}">(.*?)</table>', page, re.S)
    assert table, f"no table {table_class}"
    for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        if cells and cells[0] == row_label:
            return [int(c.replace(",", "")) for c in cells[1:] if re.fullmatch(r"[\d,]+", c)]
    raise AssertionError(f"no row {row_label!r} in {table_class}")
