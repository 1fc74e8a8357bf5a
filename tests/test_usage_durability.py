"""No usage row is ever lost: writes that fail are retried, then spilled beside the
database and replayed (once) when it takes rows again or at the next start.

Every failure here is a real SQLite or file-system condition: another connection
holding `BEGIN EXCLUSIVE` (what a second process does), `PRAGMA max_page_count` (a
full database, SQLITE_FULL), RLIMIT_FSIZE (a file that cannot grow: the disk is full
for the spill too), a garbage file, a directory."""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import FREE_KEY, base_config
from fakes import fixture_bytes, fixture_json, json_reply, sse_reply

from gateway.appkeys import USAGE
from gateway.limits import load_month_usage
from gateway.usage import UsageLogError, UsageRecord, UsageStore

MESSAGES = [{"role": "user", "content": "Hello"}]


def _row(i: int, key: str = "alice", tokens: int = 10) -> UsageRecord:
    return UsageRecord(ts=time.time(), request_id=f"r{i}", key_name=key, model="m", status=200, total_tokens=tokens)


@contextmanager
def _locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write lock on the database, held until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield other
    finally:
        other.execute("COMMIT")
        other.close()


async def _until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _count(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        count, tokens = db.execute("SELECT count(*), coalesce(sum(total_tokens), 0) FROM usage").fetchone()
    return count, tokens


def _spills(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.spill.*.jsonl"))


# -- (a) a lock held by another process: rows wait and land -----------------------------


async def test_rows_wait_out_a_locked_database(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db))
    with _locked(db):
        for i in range(100):
            store.record(_row(i))
        await _until(lambda: store.degraded() is not None)
        reason = store.degraded()
        assert reason == f"usage log: cannot write to {db}: database is locked"
        stats = store.stats()
        assert stats["queue_depth"] == 100 and stats["write_failures_total"] >= 1
        assert stats["rows_written_total"] == stats["rows_dropped_total"] == 0
    await _until(lambda: store.stats()["rows_written_total"] == 100)
    assert store.degraded() is None
    await store.close()
    assert _count(db) == (100, 1000)
    assert not _spills(db)


# -- (b) spill while the database fails; replay on recovery and at the next start -----------


async def test_full_database_spills_then_next_start_replays(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db), max_queued=500)
    async with store._sink.db.execute("PRAGMA page_count") as cur:  # type: ignore[attr-defined]
        (pages,) = await cur.fetchone()
    await store._sink.db.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]
    for i in range(1200):  # past the memory bound: spilled while running
        store.record(_row(i))
    await _until(lambda: store.stats()["spilled_pending"] == 1200)
    assert "database or disk is full" in (store.degraded() or "")
    assert store.stats()["queue_depth"] == 0 and store.stats()["rows_spilled_total"] == 1200
    store.record(_row(1200))
    await store.close()  # the database still full: the last row goes to the spill file too
    assert _count(db) == (0, 0)
    assert sum(p.read_bytes().count(b"\n") for p in _spills(db)) == 1201

    month_before = await load_month_usage(str(db))
    store = await UsageStore.open(str(db))  # a new connection: no page limit
    assert store.stats()["rows_replayed_total"] == 1201 and store.stats()["spilled_pending"] == 0
    # (c) the quota recount at start sees the replayed rows: a lost row is an undercharge
    assert month_before == {} and await load_month_usage(str(db)) == {"alice": 12010}
    await store.close()
    assert _count(db) == (1201, 12010)
    assert not _spills(db)


async def test_spilled_rows_replay_when_the_lock_goes(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db), max_queued=500)
    with _locked(db):
        for i in range(700):
            store.record(_row(i))
        await _until(lambda: store.stats()["spilled_pending"] == 700)
        await store.flush()  # while failing, flush means "on disk": these go to the spill too
        store.record(_row(700))
        await store.flush()
        assert store.stats()["spilled_pending"] == 701 and store.degraded() is not None
    await _until(lambda: store.stats()["spilled_pending"] == 0)
    assert store.degraded() is None and store.stats()["rows_replayed_total"] == 701
    await store.close()
    assert _count(db) == (701, 7010)
    assert not _spills(db)


async def test_close_with_the_database_locked_spills_within_budget(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db))
    with _locked(db):
        for i in range(50):
            store.record(_row(i))
        await _until(lambda: store.degraded() is not None)
        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < 3.0  # graceful stop keeps its budget
    assert _count(db) == (0, 0) and sum(p.read_bytes().count(b"\n") for p in _spills(db)) == 50
    store = await UsageStore.open(str(db))
    await store.close()
    assert _count(db) == (50, 500)


async def test_a_removed_database_file_is_opened_again(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db))
    store.record(_row(0))
    await store.flush()
    for suffix in ("", "-wal", "-shm"):  # an operator moved the log away
        (tmp_path / f"u.db{suffix}").unlink(missing_ok=True)
    for i in range(1, 11):
        store.record(_row(i))
    await store.flush()
    assert _count(db) == (10, 100)  # not written into the unlinked file
    await store.close()


async def test_a_row_the_database_refuses_is_coerced_not_lost(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db))
    store.record(_row(0))
    junk = UsageRecord(ts=time.time(), status=None, model={"a": 1}, total_tokens=2**70)  # type: ignore[arg-type]
    store.record(junk)
    store.record(_row(2))
    await store.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT request_id, status, model, total_tokens FROM usage ORDER BY id").fetchall()
    assert rows == [("r0", 200, "m", 10), (None, 0, "{'a': 1}", 0), ("r2", 200, "m", 10)]


# -- replay is exactly once, and respects other processes' files ---------------------------


async def test_replay_cut_by_a_crash_inserts_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db))
    with _locked(db):
        for i in range(30):
            store.record(_row(i))
        await _until(lambda: store.degraded() is not None)
        await store.close()
    (spill,) = _spills(db)
    kept = tmp_path / "copy"
    shutil.copy(spill, kept)
    store = await UsageStore.open(str(db))  # replays and deletes the file
    await store.close()
    assert _count(db) == (30, 300)
    shutil.copy(kept, spill)  # as if the process died after the commit, before the delete
    store = await UsageStore.open(str(db))
    assert store.stats()["rows_replayed_total"] == 0
    await store.close()
    assert _count(db) == (30, 300) and not _spills(db)


async def test_a_live_process_spill_file_is_left_to_it(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db))
    with _locked(db):
        for i in range(10):
            store.record(_row(i))
        await _until(lambda: store.degraded() is not None)
        await store.close()
    (spill,) = _spills(db)
    fd = os.open(spill, os.O_RDONLY)  # another worker, still running, holds its file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        store = await UsageStore.open(str(db))
        await store.close()
        assert _count(db) == (0, 0) and spill.exists()
    finally:
        os.close(fd)  # that worker stopped
    store = await UsageStore.open(str(db))
    await store.close()
    assert _count(db) == (10, 100) and not spill.exists()


# -- only a spill that cannot be written drops rows, and they are counted -------------------


@contextmanager
def _files_cannot_grow_past(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE: a write past `limit` bytes fails with EFBIG, as on a full disk."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


async def test_rows_dropped_only_when_the_spill_cannot_be_written(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db), max_queued=500)
    with _locked(db), _files_cannot_grow_past(16 * 1024):
        for i in range(1200):
            store.record(_row(i))
        await _until(lambda: store.stats()["rows_dropped_total"] > 0)
        stats = store.stats()  # memory keeps what its bound allows, the rest is dropped and counted
        assert stats["rows_dropped_total"] == 700 and stats["queue_depth"] == 500
        assert stats["spilled_pending"] == 0
        store.record(_row(1200))
    await _until(lambda: store.stats()["rows_written_total"] == 501)
    assert store.degraded() is None
    with _locked(db), _files_cannot_grow_past(16 * 1024):
        for i in range(100):
            store.record(_row(i))
        await _until(lambda: store.degraded() is not None)
        await store.close()  # nowhere to go: dropped, counted, logged; close still ends
    assert store.stats()["rows_dropped_total"] == 800
    assert _count(db) == (501, 5010)


# -- a database that cannot be opened: one line, no thread left behind ------------------------


@pytest.mark.parametrize("kind", ["garbage", "directory"])
async def test_unopenable_database_raises_one_line_and_leaves_no_thread(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "usage.db"
    if kind == "garbage":
        path.write_bytes(b"this is not an SQLite file, " * 100)
    else:
        path.mkdir()
    before = set(threading.enumerate())
    started = time.monotonic()
    with pytest.raises(UsageLogError) as caught:
        await UsageStore.open(str(path))
    assert time.monotonic() - started < 5.0
    message = str(caught.value)
    assert message.startswith(f"usage database {path}: ") and "\n" not in message
    assert ("file is not a database" if kind == "garbage" else "unable to open database file") in message
    await _until(lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()], 2.0)


# -- (d) through the gateway: every request still ends up with exactly one row ---------------


def _reply(i: int) -> Any:
    if i % 2:
        return sse_reply(fixture_bytes("openai_chunks_text_usage.sse"))
    return json_reply(fixture_json("openai_chat_completion_text.json"))


async def _ask(client: Any, i: int) -> None:
    rid = {"x-request-id": f"dur-{i}"}
    if i % 2:
        stream = await client.chat.completions.create(
            model="oai-small", messages=MESSAGES, stream=True, extra_headers=rid
        )
        async for _ in stream:
            pass
    else:
        await client.chat.completions.create(model="oai-small", messages=MESSAGES, extra_headers=rid)


async def test_gateway_requests_while_the_database_is_locked(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    db = tmp_path / "usage.db"
    gw = await start_gateway(base_config({"oai": ("openai", url)}, str(db)))
    store = gw.app[USAGE]
    client = gw.client(FREE_KEY)
    with _locked(db):
        for parity in (0, 1):  # replies go out in arrival order: one kind at a time
            upstream.script(*(_reply(i) for i in range(parity, 20, 2)))
            async with asyncio.timeout(5):  # answers never wait for the log
                await asyncio.gather(*(_ask(client, i) for i in range(parity, 20, 2)))
        await _until(lambda: store.degraded() is not None)
    await _until(lambda: store.stats()["rows_written_total"] == 20)
    rows = await gw.usage_rows()
    assert sorted(r["request_id"] for r in rows) == sorted(f"dur-{i}" for i in range(20))
    assert all(r["status"] == 200 and r["total_tokens"] > 0 for r in rows)


async def test_gateway_restart_replays_spilled_rows_before_the_quota_is_seeded(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path
) -> None:
    upstream, url = openai_upstream
    db = tmp_path / "usage.db"
    gw = await start_gateway(base_config({"oai": ("openai", url)}, str(db)))
    client = gw.client(FREE_KEY)
    with _locked(db):
        upstream.script(*(_reply(i) for i in range(4)))
        for i in range(4):
            await _ask(client, i)
        await _until(lambda: gw.app[USAGE].degraded() is not None)
        await gw.server.close()  # graceful stop with the database down: the rows spill
    assert _count(db) == (0, 0) and _spills(db)

    doc = base_config({"oai": ("openai", url)}, str(db))
    doc["tiers"]["free"]["limits"] = {"tokens_per_month": 800}  # the 4 answers used 846
    gw = await start_gateway(doc)
    with pytest.raises(Exception) as caught:
        await gw.client(FREE_KEY).chat.completions.create(model="oai-small", messages=MESSAGES)
    assert getattr(caught.value, "status_code", None) == 429
    rows = await gw.usage_rows()
    assert sorted(r["request_id"] for r in rows if r["status"] == 200) == [f"dur-{i}" for i in range(4)]
    assert [r["status"] for r in rows].count(429) == 1 and not _spills(db)


async def test_a_worker_waits_out_a_long_migration_of_another(tmp_path: Path) -> None:
    """The first start after an upgrade may hold the write lock while it fills a new
    table from the whole log (about 10 s per million rows): a worker starting beside
    it must wait, not fail (it used to give up after 5 s)."""
    path = tmp_path / "usage.db"
    first = await UsageStore.open(str(path))
    await first.close()
    held = threading.Event()

    def hold() -> None:  # another process migrating: BEGIN IMMEDIATE held for 6 s
        db = sqlite3.connect(path, timeout=0)
        db.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(6)
        db.rollback()
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    started = time.monotonic()
    store = await UsageStore.open(str(path))  # waits for the lock instead of failing
    waited = time.monotonic() - started
    await store.close()
    holder.join()
    assert waited > 5
