"""Bounded soak test: many mixed requests with random client hang-ups and upstream faults
against a running `gateway serve` process, then checks that nothing leaked.

    python scripts/soak.py --requests 5000 --concurrency 32

Starts (on 127.0.0.1 only) a fault-injecting OpenAI-compatible upstream in this
process and the gateway as a subprocess, fires the requests, waits for the usage
log to settle, and reports: exactly one usage row per request; the gateway's open
file descriptors back at their starting level; RSS growth between the first tenth
and the end.  Exit status 1 when a check fails.  `tests/test_soak.py` runs a short
version of the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-soak-key"


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
            assert request.transport is not None
            request.transport.close()  # dies mid-stream
            return resp
    await resp.write(_chunk(11, {}, "stop"))
    usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
             "usage": {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}}  # fmt: skip
    await resp.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
    return resp


@dataclass
class Report:
    sent: int = 0
    hung_up: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    rows: int = 0
    fds_before: int = 0
    fds_early: int = 0  # after the first tenth: the upstream keep-alive pool has filled by then
    fds_after: int = 0
    rss_early_kb: int = 0
    rss_end_kb: int = 0
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        growth = self.rss_end_kb / self.rss_early_kb if self.rss_early_kb else 0
        return [
            f"requests sent: {self.sent} (client hang-ups: {self.hung_up}); "
            f"statuses: {dict(sorted(self.statuses.items()))}",
            f"usage rows: {self.rows}",
            f"gateway fds: {self.fds_before} before, {self.fds_early} after the first tenth, {self.fds_after} after",
            f"gateway RSS: {self.rss_early_kb} kB after the first tenth, "
            f"{self.rss_end_kb} kB at the end ({growth:.2f}x)",
            "OK" if not self.failures else "FAILED: " + "; ".join(self.failures),
        ]


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


async def run_soak(requests: int, concurrency: int, python: str = sys.executable) -> Report:
    report = Report()
    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", faulty_upstream)
    runner = web.AppRunner(upstream, access_log=None)
    await runner.setup()
    up_port, gw_port = _free_port(), _free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "usage.db"
        config = Path(tmp) / "soak.yaml"
        config.write_text(yaml.safe_dump({
            "database": str(db),
            "providers": {"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{up_port}/v1", "api_key": "x"}},
            "models": [{"id": "soak", "provider": "up"}],
            "tiers": {"t": {"models": ["soak"]}},
            "keys": [{"name": "soak", "key": KEY, "tier": "t"}],
            "routing": {"backoff": 0.001},
        }))  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            python, "-m", "gateway", "serve", "--config", str(config), "--port", str(gw_port),
            "--log-level", "WARNING", cwd=ROOT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
                await _wait_up(session, f"http://127.0.0.1:{gw_port}/healthz")
                report.fds_before = _fds(proc.pid)
                queue = iter(range(requests))
                early = max(1, requests // 10)

                async def worker() -> None:
                    for i in queue:
                        await _one(session, url, report)
                        if i == early:
                            report.rss_early_kb, report.fds_early = _rss_kb(proc.pid), _fds(proc.pid)

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            await asyncio.sleep(1.0)  # let hang-ups be noticed and the usage writer catch up
            report.fds_after = _fds(proc.pid)
            report.rss_end_kb = _rss_kb(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
            await runner.cleanup()
        with sqlite3.connect(db) as conn:
            report.rows = conn.execute("SELECT count(*) FROM usage").fetchone()[0]
    if report.rows != report.sent:
        report.failures.append(f"{report.sent} requests but {report.rows} usage rows")
    # keep-alive connections (at most one per concurrent request) may stay open; anything beyond is a leak
    if report.fds_after > max(report.fds_early, report.fds_before + concurrency) + 2:
        report.failures.append(f"file descriptors grew from {report.fds_early} to {report.fds_after}")
    if proc.returncode != 0:
        report.failures.append(f"gateway exited with {proc.returncode}")
    return report


async def _wait_up(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
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
    args = parser.parse_args()
    report = asyncio.run(run_soak(args.requests, args.concurrency))
    if report.rss_early_kb and report.rss_end_kb / report.rss_early_kb > args.max_rss_growth:
        report.failures.append(f"RSS grew more than {args.max_rss_growth}x")
    print("\n".join(report.lines()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
