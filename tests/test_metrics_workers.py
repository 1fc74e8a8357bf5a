"""`/metrics` with `server.workers: N`: one scrape shows the sum over every worker.

A real `gateway serve` with two workers (tests/processes.py): requests on fresh
connections reach both; every scrape, whichever worker answers it, shows the total;
a worker killed by SIGKILL is replaced and the totals do not go backwards; the
snapshot directory is private and gone after the stop.  Then the merging itself
(gateway/metrics.py) on files, and the Redis limiter's counters."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import PRO_KEY, base_config
from fakes import fixture_bytes, fixture_json, json_reply, sse_reply
from processes import Served, children, launch, write_config
from test_metrics import samples

from gateway.metrics import RETIRED, Counts, Metrics, read_others, retire
from gateway.usage import UsageRecord
from gateway.workers import metrics_base

MESSAGES = [{"role": "user", "content": "Hello"}]
OK = ("gateway_requests_total", (("model", "oai-small"), ("provider", "oai"), ("status", "200")))
LATENCY_COUNT = ("gateway_request_latency_seconds_count", (("model", "oai-small"),))
TTFT_COUNT = ("gateway_time_to_first_token_seconds_count", (("model", "oai-small"),))
WRITTEN = ("gateway_usage_log_rows_written_total", ())
INFLIGHT = ("gateway_inflight_streams", ())


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its reaping is left


async def _calls(port: int, n: int, stream: bool = False) -> None:
    """`n` calls, each on a new connection: the kernel spreads new connections over the
    workers (SO_REUSEPORT)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

        async def one(i: int) -> None:
            body = {"model": "oai-small", "messages": MESSAGES, "stream": stream}
            headers = {"Authorization": f"Bearer {PRO_KEY}"}
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                await r.read()

        await asyncio.gather(*(one(i) for i in range(n)))


async def _scrape(port: int) -> dict[Any, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            return samples(await resp.text())


async def _until_total(served: Served, key: Any, want: float, within: float = 15.0) -> dict[Any, float]:
    """Scrape until `key` reaches `want` (a worker's snapshot is up to a second old, and a
    request is counted when it ends, just after its answer went out)."""
    deadline = time.monotonic() + within
    while True:
        got = await _scrape(served.port)
        if got.get(key) == want or time.monotonic() > deadline:
            assert got.get(key) == want, f"{key}: {got.get(key)} != {want}"
            return got
        await asyncio.sleep(0.1)


def _snapshot_dir(supervisor: int) -> Path:
    found = glob.glob(os.path.join(metrics_base() or tempfile.gettempdir(), f"gateway-metrics-{supervisor}-*"))
    assert len(found) == 1, found
    return Path(found[0])


def _per_worker_requests(directory: Path) -> dict[str, int]:
    out = {}
    for path in directory.glob("w*.json"):
        doc = orjson.loads(path.read_bytes())
        out[path.stem] = sum(value for labels, value in doc["requests"] if labels[2] == "200")
    return out


async def test_every_scrape_sums_both_workers_and_a_killed_worker_stays_counted(
    fake_server: Any, tmp_path: Path
) -> None:
    fake, url = await fake_server()
    text = fixture_json("openai_chat_completion_text.json")
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db"), server={"workers": 2})
    served = await launch(tmp_path, write_config(tmp_path, doc))
    try:
        workers = children(served.proc.pid)
        assert len(workers) == 2
        directory = _snapshot_dir(served.proc.pid)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # private: other users cannot read or plant files

        # replies go out in arrival order: one kind of call at a time
        fake.script(*(json_reply(text) for _ in range(160)))
        await _calls(served.port, 160)
        fake.script(*(sse_reply(fixture_bytes("openai_chunks_text_usage.sse")) for _ in range(80)))
        await _calls(served.port, 80, stream=True)
        await _until_total(served, OK, 240)
        per_worker = await _settled(directory, 240)
        assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker  # both served some
        # so a worker alone cannot show 240: every scrape below (new connections, so both
        # workers answer some) shows the sum, histograms included
        for _ in range(20):
            got = await _scrape(served.port)
            assert (got[OK], got[LATENCY_COUNT], got[INFLIGHT]) == (240, 240, 0)
            assert got[TTFT_COUNT] == 240
        await _until_total(served, WRITTEN, 240)  # the usage log's counters sum too

        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (now := children(served.proc.pid)) == workers or len(now) != 2:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # the new worker's first snapshots
        for _ in range(20):  # never less than before: the dead worker's counters stay
            assert (await _scrape(served.port))[OK] == 240
        assert orjson.loads((directory / RETIRED).read_bytes())["folded"]  # by the supervisor, counters only

        fake.script(*(json_reply(text) for _ in range(60)))
        await _calls(served.port, 60)
        await _until_total(served, OK, 300)
        for _ in range(10):
            assert (await _scrape(served.port))[OK] == 300

        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 20) == 0
        assert not directory.exists(), "the supervisor removes the snapshot directory"
    finally:
        await served.stop()


async def _settled(directory: Path, total: int) -> dict[str, int]:
    """The workers' own files, once they add up to `total` (written every second)."""
    deadline = time.monotonic() + 5
    while True:
        per_worker = _per_worker_requests(directory)
        if sum(per_worker.values()) == total or time.monotonic() > deadline:
            return per_worker
        await asyncio.sleep(0.1)


async def test_a_single_process_has_no_snapshot_directory(fake_server: Any, tmp_path: Path) -> None:
    _, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    served = await launch(tmp_path, write_config(tmp_path, doc))
    try:
        assert INFLIGHT in await _scrape(served.port)
        base = metrics_base() or tempfile.gettempdir()
        assert glob.glob(os.path.join(base, f"gateway-metrics-{served.proc.pid}-*")) == []
    finally:
        await served.stop()


async def test_no_directory_outlives_a_supervisor_killed_by_sigkill(fake_server: Any, tmp_path: Path) -> None:
    """On a tmpfs a left directory holds memory until a reboot: its workers remove it
    when their supervisor is killed, and a starting supervisor removes those whose
    supervisor and workers were all killed (here: a pid that has exited)."""
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    base = Path(metrics_base() or tempfile.gettempdir())
    stale = base / f"gateway-metrics-{gone.pid}-test"
    stale.mkdir(mode=0o700)
    (stale / "w1.json").write_bytes(b"{}")
    _, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db"), server={"workers": 2})
    served = await launch(tmp_path, write_config(tmp_path, doc))
    workers: list[int] = []
    try:
        assert not stale.exists(), "a stale directory is removed at start"
        directory = _snapshot_dir(served.proc.pid)
        workers = children(served.proc.pid)
        assert len(workers) == 2
        served.proc.kill()
        await served.proc.wait()
        deadline = time.monotonic() + 15
        while any(map(_running, workers)) or directory.exists():
            assert time.monotonic() < deadline, f"workers alive or {directory} left behind"
            await asyncio.sleep(0.05)
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        await served.stop()


# -- the merging, on files ---------------------------------------------------------------------


def _metrics(n: int, latency_ms: float, status: int = 200) -> Metrics:
    m = Metrics()
    for _ in range(n):
        m.observe(UsageRecord(ts=0, model="m", provider="p", status=status, latency_ms=latency_ms,
                              prompt_tokens=2), {"m"})  # fmt: skip
    return m


def _write(directory: Path, name: str, m: Metrics, inflight: int = 0) -> None:
    m.inflight_streams.value = inflight
    (directory / f"{name}.json").write_bytes(m.counts().to_json())


def _sum(directory: Path) -> Counts:
    total = Counts()
    for counts, alive in read_others(directory):
        total.add(counts, gauges=alive)
    return total


def test_histograms_sum_bucket_by_bucket_and_retired_workers_keep_counters_only(tmp_path: Path) -> None:
    _write(tmp_path, "w1", _metrics(3, 20), inflight=2)
    _write(tmp_path, "w2", _metrics(4, 2000), inflight=5)
    total = _sum(tmp_path)
    assert total.requests == {("m", "p", "200"): 7} and total.tokens == {("-", "in"): 14}
    counts, seconds = total.latency["m"]
    assert counts[2] == 3 and counts[8] == 4 and sum(counts) == 7  # 0.025 s and 2.5 s buckets
    assert seconds == pytest.approx(3 * 0.02 + 4 * 2.0)
    assert total.gauges["inflight_streams"] == 7

    retire(tmp_path, "w1")  # w1 died: its counters stay, its streams in flight leave the sum
    assert not (tmp_path / "w1.json").exists()
    total = _sum(tmp_path)
    assert total.requests == {("m", "p", "200"): 7} and total.gauges["inflight_streams"] == 5
    _write(tmp_path, "w3", _metrics(1, 20))  # its replacement starts from zero
    retire(tmp_path, "w2")
    total = _sum(tmp_path)
    assert total.requests == {("m", "p", "200"): 8} and total.gauges["inflight_streams"] == 0
    assert sum(total.latency["m"][0]) == 8


def test_a_worker_file_still_listed_after_its_fold_is_not_counted_twice(tmp_path: Path) -> None:
    """The supervisor writes the retired sum before deleting the worker's file: a reader
    between the two sees both, and must count the worker once."""
    _write(tmp_path, "w1", _metrics(3, 20))
    _write(tmp_path, "w2", _metrics(1, 20))
    kept = (tmp_path / "w1.json").read_bytes()
    retire(tmp_path, "w1")
    (tmp_path / "w1.json").write_bytes(kept)  # as if the delete had not happened yet
    assert _sum(tmp_path).requests == {("m", "p", "200"): 4}


# -- the Redis limiter's counters -------------------------------------------------------------


async def test_redis_limiter_failures_are_counted(start_gateway: Any, openai_upstream: Any, tmp_path: Path) -> None:
    pytest.importorskip("redis")
    from processes import free_port

    fake, url = openai_upstream
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["tiers"]["pro"]["limits"] = {"rpm": 1000}
    doc["state"] = {"redis": f"redis://127.0.0.1:{free_port()}/0", "on_error": "open", "timeout_ms": 200}
    gw = await start_gateway(doc)  # nobody listens on that port: every admission fails open
    fake.script(*(json_reply(fixture_json("openai_chat_completion_text.json")) for _ in range(3)))
    client = gw.client()
    for _ in range(3):
        await client.chat.completions.create(model="oai-small", messages=MESSAGES)
    async with aiohttp.ClientSession() as http:
        async with http.get(str(gw.server.make_url("/metrics"))) as resp:
            got = samples(await resp.text())
    assert got[("gateway_redis_limiter_open_admissions_total", ())] == 3
    assert got[("gateway_redis_limiter_errors_total", ())] >= 3  # admissions, and the ping at start


async def test_the_in_process_limiter_has_no_redis_counters(gateway: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(str(gateway.server.make_url("/metrics"))) as resp:
            text = await resp.text()
    assert "gateway_inflight_streams" in text and "gateway_redis_limiter" not in text
