"""The per-hour totals (`usage_hourly`) on SQLite and PostgreSQL: written by the sinks
with the rows, they give the operator's page the numbers the rows give; a batch that
fails and is retried, or is spilled and replayed, counts once; the migration fills the
table from a log written before it existed."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pg_support import connect, fetch, fresh_schema, require_asyncpg

from gateway import usage_hourly as hourly
from gateway.dashboard import queries
from gateway.dashboard.queries import UsageReader, bucket_value
from gateway.postgres import migrate
from gateway.usage import UsageStore
from gateway.usage_postgres import _LOCK, PostgresSink
from gateway.usage_postgres import _MIGRATIONS as PG_MIGRATIONS
from gateway.usage_record import COLUMNS, ROW, Row, UsageRecord
from gateway.usage_sqlite import _MIGRATIONS as SQLITE_MIGRATIONS
from gateway.usage_sqlite import SqliteSink

NOW = time.time()
DAYS = 9


def _records(n: int, seed: int = 7) -> list[UsageRecord]:
    """n rows over the last DAYS days: 6 keys (one unauthenticated), 3 models (one NULL),
    errors of several statuses and codes, latencies from 1 ms to 20 s, some unmeasured."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        status = rnd.choice([200] * 12 + [429, 502, 499, 400])
        code = {429: "rate_limit_exceeded", 502: "upstream_error", 400: None, 499: "client_closed"}.get(status)
        key = rnd.choice(["alice", "bob", "carol", "dave", "erin", None])
        prompt, completion = rnd.randrange(0, 2000), rnd.randrange(0, 800)
        out.append(UsageRecord(
            ts=NOW - rnd.uniform(0, DAYS * 86400), request_id=f"r{i}", endpoint="/v1/chat/completions",
            key_name=key, tier=None if key is None else ("pro" if key < "c" else "free"),
            model=rnd.choice(["large", "small", None]), provider=rnd.choice(["oai", "ant"]), status=status,
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
            latency_ms=None if i % 17 == 0 else math.exp(rnd.uniform(0, math.log(20000))),
            ttfb_ms=None if i % 5 == 0 else rnd.uniform(5, 900), error_code=code,
        ))  # fmt: skip
    return out


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: Any, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """(database, a function opening its sink) for each backend."""
    if request.param == "sqlite":
        path = str(tmp_path / "usage.db")
        yield path, lambda: SqliteSink.open(path)
    else:
        require_asyncpg()
        async with fresh_schema() as url:
            yield url, lambda: PostgresSink.open(url, spill_dir=tmp_path / "spill")


async def _rows_of(database: str, sql: str) -> list[tuple[Any, ...]]:
    if database.startswith("postgresql"):
        return await fetch(database, sql)
    db = sqlite3.connect(database)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


_TABLE = f"SELECT {', '.join(hourly.ALL)} FROM usage_hourly ORDER BY {', '.join(hourly.KEY)}"
_TOTALS = "SELECT count(*), sum(total_tokens) FROM usage"
_HOURLY_TOTALS = "SELECT sum(requests), sum(total_tokens) FROM usage_hourly"


def _expected(rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in hourly.fold(rows)]


async def test_the_operator_page_reads_the_same_numbers_from_the_hourly_totals(
    backend: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, open_sink = backend
    records = _records(6000)
    store = await UsageStore.start(await open_sink())
    for record in records:
        store.record(record)
    await store.close()
    # the table holds exactly the rows' totals, group by group
    assert [tuple(int(v) if isinstance(v, int) else v for v in r) for r in await _rows_of(database, _TABLE)] == \
        _expected([ROW(r) for r in records])  # fmt: skip
    reader = UsageReader(database)
    for days in (1, 7, 30):
        start, end = NOW - days * 86400, NOW + 1
        mixed = await reader.operator(start, end)
        with monkeypatch.context() as m:
            m.setattr(queries, "HOURLY_FROM", float("inf"))  # every row read one by one
            exact = await reader.operator(start, end)
        assert sorted(mixed.groups) == sorted(exact.groups) and sum(g[3] for g in mixed.groups) > 500
        assert mixed.daily == exact.daily
        assert mixed.errors == exact.errors and {e[0] for e in mixed.errors} == {400, 429, 499, 502}
        assert mixed.latency == exact.latency and mixed.ttfb == exact.ttfb  # the same buckets
        # and each percentile within the stated 10 % of the exact value
        inside = [r for r in records if start <= r.ts < end and r.latency_ms is not None]
        for model in ("large", "small"):
            values = sorted(r.latency_ms for r in inside if r.model == model)  # type: ignore[misc]
            assert mixed.latency[model]["n"] == len(values)
            for q in (0.5, 0.95, 0.99):
                true = values[max(1, math.ceil(q * len(values))) - 1]
                assert abs(mixed.latency[model][f"p{round(q * 100)}"] - true) <= 0.1 * true
        assert "-" in mixed.latency and ("-", "(unauthenticated)", "-") in {g[:3] for g in mixed.groups}


class _Failing:
    """A sink whose next `fail` writes fail inside the transaction, after the rows went in
    (the hourly upsert hits a table that does not exist): the whole batch is rolled back."""

    def __init__(self, sink: Any, fail: int) -> None:
        self.sink, self.fail = sink, fail
        self.target, self.spill_base = sink.target, sink.spill_base

    async def write(self, rows: Sequence[Row], mark: tuple[str, int] | None = None) -> None:
        if self.fail:
            self.fail -= 1
            with pytest.MonkeyPatch.context() as m:
                for name in ("SQLITE_UPSERT", "POSTGRES_UPSERT"):
                    m.setattr(hourly, name, "INSERT INTO no_such_table VALUES (1)")
                await self.sink.write(rows, mark)
        await self.sink.write(rows, mark)

    async def replayed(self, spill_id: str) -> int:
        return int(await self.sink.replayed(spill_id))

    async def close(self) -> None:
        await self.sink.close()


async def test_a_batch_retried_counts_once(backend: tuple[str, Any]) -> None:
    database, open_sink = backend
    records = _records(700, seed=3)
    sink = _Failing(await open_sink(), fail=2)
    store = await UsageStore.start(sink)
    for record in records:
        store.record(record)
    for _ in range(100):  # not flush(): with the database failing, it would spill the rows
        if store.stats()["rows_written_total"] == 700:
            break
        await asyncio.sleep(0.05)
    assert sink.fail == 0 and store.stats()["write_failures_total"] == 2 and store.stats()["rows_spilled_total"] == 0
    await store.close()
    total = sum(r.total_tokens for r in records)
    assert [tuple(map(int, r)) for r in await _rows_of(database, _TOTALS)] == [(700, total)]
    assert [tuple(map(int, r)) for r in await _rows_of(database, _HOURLY_TOTALS)] == [(700, total)]


async def test_a_batch_spilled_then_replayed_counts_once(backend: tuple[str, Any]) -> None:
    database, open_sink = backend
    records = _records(900, seed=4)
    store = await UsageStore.start(_Failing(await open_sink(), fail=10**6))
    for record in records:
        store.record(record)
    await store.close()  # the database fails: every row goes to the spill file
    assert store.stats()["rows_spilled_total"] == 900
    store = await UsageStore.start(await open_sink())  # replays the spill before it returns
    assert store.stats()["rows_replayed_total"] == 900
    await store.close()
    assert [tuple(int(v) if isinstance(v, int) else v for v in r) for r in await _rows_of(database, _TABLE)] == \
        _expected([ROW(r) for r in records])  # fmt: skip


async def test_the_migration_fills_the_hourly_totals_from_an_existing_log(backend: tuple[str, Any]) -> None:
    database, open_sink = backend
    rows = [ROW(r) for r in _records(3000, seed=5)]
    insert = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES "
    if database.startswith("postgresql"):  # the schema as the version before the hourly totals made it
        conn = await connect(database)
        try:
            await migrate(conn, lock=_LOCK, table="usage_schema", migrations=PG_MIGRATIONS[:1])
            await conn.copy_records_to_table("usage", records=rows, columns=COLUMNS)
        finally:
            await conn.close()
    else:
        db = sqlite3.connect(database)
        before = len(SQLITE_MIGRATIONS) - 1
        db.executescript("".join(SQLITE_MIGRATIONS[:before]) + f"PRAGMA user_version = {before};")
        db.executemany(insert + f"({', '.join('?' for _ in COLUMNS)})", rows)
        db.commit()
        db.close()
    await (await open_sink()).close()  # the gateway's next start migrates
    assert [tuple(int(v) if isinstance(v, int) else v for v in r) for r in await _rows_of(database, _TABLE)] == \
        _expected(rows)  # fmt: skip
    data = await UsageReader(database).operator(NOW - 7 * 86400, NOW + 1)
    assert sum(g[3] for g in data.groups) == sum(1 for r in rows if r[0] >= NOW - 7 * 86400)


def test_the_buckets_are_the_percentiles_buckets() -> None:
    for ms in (0.0, 0.99, 1.0, 1.2, 57.3, 1000.0, 5e6):
        k = hourly.bucket(ms)
        assert k == 0 or hourly.BOUNDS[k - 1] <= ms
        assert k == len(hourly.BOUNDS) or ms < hourly.BOUNDS[k]
        assert k == 0 or k == len(hourly.BOUNDS) or abs(bucket_value(k) - ms) <= 0.1 * ms
