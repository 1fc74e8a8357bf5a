"""Bounded soak test: many mixed requests with random client hang-ups and upstream faults
against running `gateway serve` processes, then checks that nothing leaked.

    python scripts/soak.py --requests 5000 --concurrency 32
    python scripts/soak.py --instances 2 --database postgresql://postgres@127.0.0.1:5432/test \
        --redis redis://127.0.0.1:6379/0

Starts (on 127.0.0.1 only) a fault-injecting OpenAI-compatible upstream in this
process and the gateway as subprocesses (`--instances` of them, on ports of their
own, sharing the usage database and, with `--redis`, the tier limits), spreads the
requests over them, waits for the usage log to settle, and reports: exactly one
usage row per request (counted by this run's own key name, so a shared database may
hold other rows); every request counted by some instance's `/metrics`; each
gateway's open file descriptors back at their starting level; RSS growth between
the first tenth and the end.  With `--redis`, the key has (generous) limits, so
every request is admitted and released through Redis: no Redis call may fail, no
concurrency slot may stay held, and Redis's monthly token counter must equal the
tokens of the usage rows (the two stores agree).  Redis keys go under a prefix of
the run's own, deleted at the end.  Exit status 1 when a check fails.
`tests/test_soak.py` and `tests/test_soak_instances.py` run short versions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-soak-key"
# with --redis: limits no soak reaches, so that every request goes through Redis
GENEROUS = {"rpm": 1_000_000_000, "concurrency": 1_000_000, "tokens_per_month": 10**15}


def _chunk(i: int, delta: dict, finish: str | None = None) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def faulty_upstream(request: web.Request) -> web.StreamResponse:
    """Mostly good answers; sometimes a 500, a 429, or a stream that dies halfway."""
    body = await request.json()
    roll = random.random()
    if roll < 0.05:
        return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
    if roll < 0.08:
        headers = {"Retry-After": "30"}
        return web.json_response({"error": {"message": "slow down"}}, status=429, headers=headers)
    if not body.get("stream"):
        message = {"role": "assistant", "content": "ok", "refusal": None}
        return web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }  # fmt: skip
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    try:
        return await _write_stream(request, resp, roll)
    except ConnectionResetError:  # the gateway hung up because its client did: expected here
        return resp


async def _write_stream(request: web.Request, resp: web.StreamResponse, roll: float) -> web.StreamResponse:
    await resp.prepare(request)
    await resp.write(_chunk(0, {"role": "assistant", "content": ""}))
    for i in range(10):
        await resp.write(_chunk(i, {"content": f"w{i} "}))
        await asyncio.sleep(0.001)
        if roll < 0.12 and i == 4:
            if request.transport is not None:  # else the gateway hung up already (its client did)
                request.transport.close()  # dies mid-stream
            return resp
    await resp.write(_chunk(11, {}, "stop"))
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
             "usage": {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}}  # fmt: skip
    await resp.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
    return resp


@dataclass
class Instance:
    """One `gateway serve` process and what was measured of it."""

    proc: asyncio.subprocess.Process
    port: int
    sent: int = 0
    counted: int = 0  # requests its /metrics counted
    fds_before: int = 0
    fds_early: int = 0  # after the first tenth: the upstream keep-alive pool has filled by then
    fds_after: int = 0
    rss_early_kb: int = 0
    rss_end_kb: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rss_growth(self) -> float:
        return self.rss_end_kb / self.rss_early_kb if self.rss_early_kb else 0.0


@dataclass
class Report:
    sent: int = 0
    hung_up: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    rows: int = 0
    distinct_ids: int = 0
    seconds: float = 0.0
    instances: list[Instance] = field(default_factory=list)
    redis: str = ""  # what Redis said at the end, with --redis
    failures: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)  # Redis against the usage rows (also in failures)

    def lines(self) -> list[str]:
        out = [
            f"requests sent: {self.sent} in {self.seconds:.1f} s (client hang-ups: {self.hung_up}); "
            f"statuses: {dict(sorted(self.statuses.items()))}",
            f"usage rows: {self.rows} ({self.distinct_ids} distinct request ids)",
        ]
        for i, one in enumerate(self.instances):
            name = f"gateway {i + 1}" if len(self.instances) > 1 else "gateway"
            out += [
                f"{name}: {one.sent} sent, {one.counted} counted by its /metrics",
                f"{name} fds: {one.fds_before} before, {one.fds_early} after the first tenth, {one.fds_after} after",
                f"{name} RSS: {one.rss_early_kb} kB after the first tenth, {one.rss_end_kb} kB at the end "
                f"({one.rss_growth:.2f}x)",
            ]
        if self.redis:
            out.append(f"redis: {self.redis}")
        out.append("OK" if not self.failures else "FAILED: " + "; ".join(self.failures))
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _one(session: aiohttp.ClientSession, url: str, report: Report) -> None:
    stream = random.random() < 0.6
    hang_up = random.random() < 0.1
    body = {"model": "soak", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    report.sent += 1
    try:
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            if hang_up:
                await resp.content.read(random.randint(1, 200))
                report.hung_up += 1
                resp.close()
                return
            await resp.read()
            report.statuses[resp.status] = report.statuses.get(resp.status, 0) + 1
    except aiohttp.ClientError as exc:
        report.failures.append(f"client error {type(exc).__name__}")


def _is_postgres(database: str) -> bool:
    return database.startswith(("postgres://", "postgresql://"))


async def run_soak(
    requests: int,
    concurrency: int,
    python: str = sys.executable,
    *,
    instances: int = 1,
    database: str | None = None,
    redis: str | None = None,
) -> Report:
    """`instances` gateways on one usage `database` (an SQLite file in a temp dir when
    None; or a PostgreSQL URL) and, with `redis`, one Redis for their limits."""
    report = Report()
    run = secrets.token_hex(4)
    key_name, prefix = f"soak-{run}", f"soak:{run}:"  # this run's rows and Redis keys, whatever else is there
    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", faulty_upstream)
    runner = web.AppRunner(upstream, access_log=None)
    await runner.setup()
    up_port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    with tempfile.TemporaryDirectory() as tmp:
        db = database or str(Path(tmp) / "usage.db")
        doc: dict[str, Any] = {
            "database": db,
            "providers": {"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "api_key": "x"}},
            "models": [{"id": "soak", "provider": "up"}],
            "tiers": {"t": {"models": ["soak"]}},
            "keys": [{"name": key_name, "key": KEY, "tier": "t"}],
            "routing": {"backoff": 0.001},
        }
        if redis:
            doc["tiers"]["t"]["limits"] = GENEROUS
            # a loaded machine may be slow to read a reply: a generous timeout, so that a
            # failure counted below is Redis failing, not the soak's own load
            doc["state"] = {"redis": redis, "on_error": "open", "timeout_ms": 2000}
        config = Path(tmp) / "soak.yaml"
        config.write_text(yaml.safe_dump(doc))
        env = {**os.environ, "GATEWAY_REDIS_PREFIX": prefix}
        try:
            for _ in range(instances):
                port = _free_port()
                proc = await asyncio.create_subprocess_exec(
                    python, "-m", "gateway", "serve", "--config", str(config), "--port", str(port),
                    "--log-level", "WARNING", cwd=ROOT, env=env,
                )  # fmt: skip
                report.instances.append(Instance(proc, port))
            await _drive(report, requests, concurrency)
        finally:
            for one in report.instances:
                if one.proc.returncode is None:
                    one.proc.terminate()  # a graceful stop: queued usage rows are written
            for one in report.instances:
                await one.proc.wait()
            await runner.cleanup()
        report.rows, report.distinct_ids, tokens = await _count_rows(db, key_name)
    if redis:
        await _check_redis(report, redis, prefix, key_name, tokens)
    _judge(report, concurrency)
    return report


async def _drive(report: Report, requests: int, concurrency: int) -> None:
    """Fire the requests, spread over the instances in turn, then measure each."""
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for one in report.instances:
            await _wait_up(session, f"{one.url}/healthz", one.proc)
            one.fds_before = _fds(one.proc.pid)
        queue = iter(range(requests))
        early = max(1, requests // 10)

        async def worker() -> None:
            for i in queue:
                one = report.instances[i % len(report.instances)]
                one.sent += 1
                await _one(session, f"{one.url}/v1/chat/completions", report)
                if early <= i < early + len(report.instances):  # each instance, once
                    one.rss_early_kb, one.fds_early = _rss_kb(one.proc.pid), _fds(one.proc.pid)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.monotonic() - started
        await asyncio.sleep(1.0)  # let hang-ups be noticed and the usage writers catch up
        for one in report.instances:
            one.fds_after, one.rss_end_kb = _fds(one.proc.pid), _rss_kb(one.proc.pid)
            one.counted, errors = await _scrape(session, one)
            if errors:
                report.failures.append(f"{errors} Redis calls failed at {one.url} (see its log)")


async def _scrape(session: aiohttp.ClientSession, one: Instance) -> tuple[int, int]:
    """(requests counted, Redis limiter failures) from the instance's /metrics, once it
    has counted every request sent to it (a request is counted when it ends; a few
    seconds at most)."""
    deadline = time.monotonic() + 10
    while True:
        async with session.get(f"{one.url}/metrics") as resp:
            text = await resp.text()
        counted = errors = 0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gateway_requests_total":
                    counted += int(sample.value)
                elif sample.name in (
                    "gateway_redis_limiter_errors_total",
                    "gateway_redis_limiter_open_admissions_total",
                ):
                    errors += int(sample.value)
        if counted >= one.sent or time.monotonic() > deadline:
            return counted, errors
        await asyncio.sleep(0.2)


async def _count_rows(database: str, key_name: str) -> tuple[int, int, int]:
    """(rows, distinct request ids, tokens) of this run's key in the usage log."""
    query = "SELECT count(*), count(DISTINCT request_id), coalesce(sum(total_tokens), 0) FROM usage WHERE key_name = "
    if _is_postgres(database):
        import asyncpg  # the gateway's own driver (extra 'postgres')

        conn = await asyncpg.connect(database, timeout=10)
        try:
            row = await conn.fetchrow(query + "$1", key_name)
        finally:
            await conn.close()
    else:
        with sqlite3.connect(database) as conn:
            row = conn.execute(query + "?", (key_name,)).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


async def _check_redis(report: Report, url: str, prefix: str, key_name: str, tokens: int) -> None:
    """Both stores agree: Redis's monthly counter holds the tokens the rows hold, and no
    concurrency slot is left held.  This run's keys are deleted afterwards."""
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_timeout=10)
    base = f"{prefix}{{{key_name}}}:"  # as gateway/limits_redis.py names them
    try:
        held = await client.zcard(base + "c")
        used = int(await client.hget(base + "q", "used") or 0)
        window = await client.zcard(base + "w")
        report.redis = f"month tokens {used} (usage rows: {tokens}), slots held {held}, rolling minute {window}"
        if held:
            report.disagreements.append(f"{held} concurrency slots still held in Redis")
        if used != tokens:
            report.disagreements.append(f"Redis counted {used} tokens this month, the usage rows {tokens}")
        report.failures += report.disagreements
        if report.seconds < 50 and window != report.sent:  # all inside one rolling minute
            report.failures.append(f"Redis's rolling minute holds {window} admissions for {report.sent} requests")
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _judge(report: Report, concurrency: int) -> None:
    if report.rows != report.sent or report.distinct_ids != report.sent:
        report.failures.append(
            f"{report.sent} requests but {report.rows} usage rows ({report.distinct_ids} distinct request ids)"
        )
    counted = sum(one.counted for one in report.instances)
    if counted != report.sent:
        report.failures.append(f"{report.sent} requests but /metrics counted {counted}")
    for one in report.instances:
        # keep-alive connections may stay open: at most one from the client and one to the
        # upstream per concurrent request (all of them may have gone to one instance);
        # anything beyond is a leak
        if one.fds_after > max(one.fds_early, one.fds_before + 2 * concurrency) + 2:
            report.failures.append(f"file descriptors of :{one.port} grew from {one.fds_early} to {one.fds_after}")
        if one.proc.returncode != 0:
            report.failures.append(f"gateway :{one.port} exited with {one.proc.returncode}")


async def _wait_up(session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.returncode is None:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    raise RuntimeError("gateway did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-rss-growth", type=float, default=1.10, help="fail when end RSS / early RSS exceeds this")
    parser.add_argument("--instances", type=int, default=1, help="gateway processes sharing the stores")
    parser.add_argument("--database", help="usage database for every instance: a PostgreSQL URL or an SQLite "
                        "file (default: a new SQLite file in a temp dir)")  # fmt: skip
    parser.add_argument("--redis", help="redis://... shared by every instance for the tier limits")
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances: at least 1")
    report = asyncio.run(
        run_soak(args.requests, args.concurrency, instances=args.instances, database=args.database, redis=args.redis)
    )
    for one in report.instances:
        if one.rss_growth > args.max_rss_growth:
            report.failures.append(f"RSS of :{one.port} grew more than {args.max_rss_growth}x")
    print("\n".join(report.lines()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
