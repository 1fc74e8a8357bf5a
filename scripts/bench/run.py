"""`make bench`: the gateway against a bare aiohttp pipe, on loopback, in one command.

Starts on 127.0.0.1 only, each as its own process:
  - the mock upstream (scripts/mock_providers.py: OpenAI, Anthropic and Gemini wire
    formats; 20-chunk streams, no delay),
  - the bare pipe (scripts/bench/pipe.py: bytes in, bytes out; the floor),
  - the gateway on a generated config (providers of kind openai, anthropic and
    gemini, all pointing at the mock; one key; the usage database in a temp dir),
then drives each target with wrk (or the built-in generator when wrk is missing):
upstream direct, bare pipe, gateway OpenAI passthrough, gateway Anthropic- and
Gemini-translated, the passthrough for a key with limits counted in process and in
Redis (a second gateway with `state.redis` on a private redis-server, started when
`redis-server` is installed); non-stream and stream; 1 and 64 connections.  Every cell runs
--runs times (3; all targets back to back per cell, then the next round, so a slow
spell on a shared machine hits neighbours alike) and the run with the highest
req/s is reported.  Time to first byte is measured at 1
connection with a small aiohttp client (streamed answers, p50, lowest of the
rounds).  Prints one markdown table with ratios to the bare pipe, the issue's
targets, and the gateway's RSS; stops everything it started, also on Ctrl-C.

    .venv/bin/python scripts/bench/run.py            # ~2.5 min
    .venv/bin/python scripts/bench/run.py --quick    # ~1 min
    .venv/bin/python scripts/bench/run.py --soak 100000 --no-table     # memory growth only
    .venv/bin/python scripts/bench/run.py --quick --profile /tmp/prof  # + py-spy of the gateway

Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PYTHON = sys.executable
KEY = "sk-bench-key"
LIMITED_KEY = "sk-bench-limited"  # a key with rpm/tpm/concurrency/quota limits too high to trip
# ...high enough never to trip, so the rows measure the counting alone
BENCH_LIMITS = {"rpm": 10**9, "tpm": 10**12, "concurrency": 10**6, "tokens_per_month": 10**15}
PROMPT = "Say hello in one short sentence."
MODES = ("non-stream", "stream")


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """One child process, its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], port: int, logdir: Path) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.log = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_up(self, seconds: float = 30) -> None:
        """Up = the process lives and its port accepts a connection."""
        deadline = time.monotonic() + seconds
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not open 127.0.0.1:{self.port} in {seconds:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait(timeout=5)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in text[-lines:])


def rss_kib(pid: int) -> int:
    """VmRSS of a process and all its descendants (gateway workers included), in KiB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


# -- targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    key: str  # short name for --targets
    label: str
    service: str  # which process answers
    model: str
    dialect: str = "chat"  # what the client speaks: chat, responses (/v1/responses) or messages (/v1/messages)
    auth: str = KEY  # the client key sent


TARGETS = (
    Target("upstream", "upstream direct", "mock", "gpt-4o-mini"),
    Target("pipe", "bare aiohttp pipe", "pipe", "gpt-4o-mini"),
    Target("openai", "gateway, OpenAI passthrough", "gateway", "gpt-4o-mini"),
    Target("anthropic", "gateway, Anthropic-translated", "gateway", "claude-3-5-sonnet-20241022"),
    Target("gemini", "gateway, Gemini-translated", "gateway", "gemini-2.0-flash"),
    Target("responses", "gateway, Responses -> OpenAI chat", "gateway", "gpt-4o-mini", "responses"),
    Target("messages", "gateway, Messages passthrough", "gateway", "claude-3-5-sonnet-20241022", "messages"),
    Target("messages-openai", "gateway, Messages -> OpenAI chat", "gateway", "gpt-4o-mini", "messages"),
    # the cost of tier limits: the same passthrough for a limited key, counted in the
    # gateway process, then in Redis (a second gateway with state.redis, its own redis-server)
    Target("limits", "gateway, OpenAI passthrough, limits in process", "gateway", "gpt-4o-mini", auth=LIMITED_KEY),
    Target("redis", "gateway, OpenAI passthrough, limits in Redis", "gateway-redis", "gpt-4o-mini", auth=LIMITED_KEY),
)
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}


def body(target: Target, mode: str) -> bytes:
    message = [{"role": "user", "content": PROMPT}]
    data: dict[str, Any]
    if target.dialect == "responses":
        data = {"model": target.model, "input": message}
    elif target.dialect == "messages":
        data = {"model": target.model, "max_tokens": 256, "messages": message}
    else:
        data = {"model": target.model, "messages": message}
        if mode == "stream":  # usage on, as most clients ask (and as the gateway asks upstream anyway)
            data["stream_options"] = {"include_usage": True}
    if mode == "stream":
        data["stream"] = True
    return json.dumps(data, separators=(",", ":")).encode()


def gateway_config(mock_port: int, db: Path, workers: int, redis_url: str | None = None) -> dict[str, Any]:
    mock = f"http://127.0.0.1:{mock_port}"
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 8080}
    if workers > 1:
        server["workers"] = workers
    models = sorted({t.model for t in TARGETS if t.service.startswith("gateway")})
    config: dict[str, Any] = {
        "server": server,
        "database": str(db),
        "providers": {
            "openai": {"kind": "openai", "base_url": f"{mock}/v1", "api_key": "bench"},
            "anthropic": {"kind": "anthropic", "base_url": mock, "api_key": "bench"},
            "google": {"kind": "gemini", "base_url": mock, "api_key": "bench"},
        },
        "models": [
            {"id": "gpt-4o-mini", "provider": "openai"},
            {"id": "claude-3-5-sonnet-20241022", "provider": "anthropic"},
            {"id": "gemini-2.0-flash", "provider": "google"},
        ],
        "tiers": {"bench": {"models": models}, "limited": {"models": models, "limits": BENCH_LIMITS}},
        "keys": [
            {"name": "bench", "key": KEY, "tier": "bench"},
            {"name": "bench-limited", "key": LIMITED_KEY, "tier": "limited"},
        ],
    }
    if redis_url:
        # a loop saturated by 64 connections answers its own Redis replies late: with the
        # 50 ms default some calls time out (admitted uncounted, then a reconnect), and the
        # row would measure failures, not counting
        config["state"] = {"redis": redis_url, "timeout_ms": 1000}
    return config


class Bench:
    """The three processes and the URLs to reach each target."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp, self.args = tmp, args
        mock_port, pipe_port, gw_port = free_port(), free_port(), free_port()
        upstream_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        self.services = {
            "mock": Service(
                "mock",
                [PYTHON, str(ROOT / "scripts" / "mock_providers.py"), "--host", "127.0.0.1", "--port", str(mock_port)]
                + ["--chunks", str(args.chunks), "--delay", "0"],
                mock_port,
                tmp,
            ),
            "pipe": Service(
                "pipe",
                [PYTHON, str(HERE / "pipe.py"), "--host", "127.0.0.1", "--port", str(pipe_port)]
                + ["--upstream", upstream_url],
                pipe_port,
                tmp,
            ),
        }
        self.gateway_starts = 0
        self.mock_port, self.gw_port = mock_port, gw_port
        self.urls = {
            "mock": upstream_url,
            "pipe": f"http://127.0.0.1:{pipe_port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gw_port}",
        }
        self.missing: dict[str, str] = {}  # service -> why it cannot run here
        if any(t.service == "gateway-redis" for t in args.target_list):
            self._add_redis(tmp)

    def _add_redis(self, tmp: Path) -> None:
        """A private redis-server (nothing on disk) and a gateway counting limits in it."""
        binary = shutil.which("redis-server")
        if binary is None:
            self.missing["gateway-redis"] = "redis-server not found: `apt-get install -y redis-server`"
            return
        if importlib.util.find_spec("redis") is None:
            self.missing["gateway-redis"] = "the redis package is missing: pip install -e '.[redis]'"
            return
        redis_port, port = free_port(), free_port()
        argv = [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.services["redis"] = Service("redis", argv + ["--dir", str(tmp)], redis_port, tmp)
        config = tmp / "gateway-redis.yaml"
        doc = gateway_config(
            self.mock_port, tmp / "usage-redis.db", self.args.workers, f"redis://127.0.0.1:{redis_port}/0"
        )
        config.write_text(json.dumps(doc, indent=1))
        argv = [PYTHON, "-m", "gateway", "serve", "--config", str(config), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--log-level", self.args.log_level]
        self.services["gateway-redis"] = Service("gateway-redis", argv, port, tmp)
        self.urls["gateway-redis"] = f"http://127.0.0.1:{port}"

    def new_gateway(self) -> Service:
        """A gateway on a fresh database (the soak restarts it for a clean baseline)."""
        self.gateway_starts += 1
        n = self.gateway_starts
        config = self.tmp / f"gateway-{n}.yaml"
        config.write_text(  # JSON is YAML
            json.dumps(gateway_config(self.mock_port, self.tmp / f"usage-{n}.db", self.args.workers), indent=1)
        )
        argv = [PYTHON, "-m", "gateway", "serve", "--config", str(config), "--host", "127.0.0.1"]
        argv += ["--port", str(self.gw_port), "--log-level", self.args.log_level]
        return Service("gateway" if n == 1 else f"gateway-{n}", argv, self.gw_port, self.tmp)

    def start(self) -> None:
        self.services["gateway"] = self.new_gateway()
        for service in self.services.values():
            progress(f"starting {service.name} on 127.0.0.1:{service.port}")
            service.start()
        for service in self.services.values():
            service.wait_up()

    def restart_gateway(self) -> None:
        self.services["gateway"].stop()
        self.services["gateway"] = self.new_gateway()
        self.services["gateway"].start()
        self.services["gateway"].wait_up()

    def stop(self) -> None:
        for name in ("gateway", "gateway-redis", "redis", "pipe", "mock"):  # clients before their upstreams
            if name in self.services:
                self.services[name].stop()

    def url(self, target: Target) -> str:
        if target.service.startswith("gateway"):
            return self.urls[target.service] + PATHS[target.dialect]
        return self.urls[target.service]

    def gateway_pid(self) -> int:
        return self.services["gateway"].pid


# -- load -------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    status_errors: int
    cpu_s: float | None = None  # CPU time of the answering process(es) during the run
    redis_cpu_s: float | None = None  # CPU time of redis-server during the run (limits in Redis)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float | None:
        """CPU microseconds the target spent per request: steadier than req/s on a
        shared machine, and what an optimisation actually changes."""
        return self.cpu_s / self.requests * 1e6 if self.cpu_s is not None and self.requests else None

    @property
    def redis_cpu_us(self) -> float | None:
        return self.redis_cpu_s / self.requests * 1e6 if self.redis_cpu_s is not None and self.requests else None


def cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in the group (a service and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Loader:
    """Runs one bounded load: wrk when available (or forced), else scripts/bench/loadgen.py."""

    def __init__(self, tmp: Path, kind: str, threads: int) -> None:
        self.tmp, self.threads = tmp, threads
        wrk = shutil.which("wrk")
        if kind == "wrk" and not wrk:
            raise SystemExit("--loadgen wrk: wrk is not on PATH (install it: apt-get install -y wrk)")
        self.wrk = wrk if kind in ("auto", "wrk") else None
        self._files: dict[tuple[bytes, ...], Path] = {}

    def describe(self) -> str:
        if self.wrk:
            version = subprocess.run([self.wrk, "-v"], capture_output=True, text=True).stdout.splitlines()
            name = version[0].split(" Copyright")[0] if version else "wrk"
            return f"{name}, {self.threads} thread(s), Lua script scripts/bench/post.lua"
        why = "--loadgen builtin" if shutil.which("wrk") else "wrk not found: `apt-get install -y wrk`"
        return f"built-in asyncio generator (scripts/bench/loadgen.py; {why})"

    def _bodies(self, bodies: tuple[bytes, ...]) -> Path:
        if bodies not in self._files:
            path = self.tmp / f"bodies-{len(self._files)}.jsonl"
            path.write_bytes(b"\n".join(bodies) + b"\n")
            self._files[bodies] = path
        return self._files[bodies]

    def run(self, url: str, bodies: tuple[bytes, ...], conns: int, seconds: int, auth: str = KEY) -> Result:
        file = self._bodies(bodies)
        if self.wrk:
            threads = max(1, min(self.threads, conns))
            argv = [self.wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
            argv += ["-s", str(HERE / "post.lua"), url]
            env = {**os.environ, "BENCH_BODIES": str(file), "BENCH_AUTH": auth}
        else:
            argv = [PYTHON, str(HERE / "loadgen.py"), "--url", url, "--bodies", str(file), "--auth", auth]
            argv += ["--conns", str(conns), "--duration", str(seconds)]
            env = dict(os.environ)
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if line is None:
            raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        raw = json.loads(line.removeprefix("BENCH_RESULT "))
        errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
        return Result(
            raw["requests"], raw["duration_us"] / 1e6, raw["p50"] / 1000, raw["p99"] / 1000, errors, raw["status"]
        )


async def probe(url: str, data: bytes, mode: str, auth: str = KEY) -> str | None:
    """One request: None when the answer looks right, else why not."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {auth}"}
    try:
        async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers) as resp:
            text = await resp.text()
    except aiohttp.ClientError as exc:
        return f"{type(exc).__name__}: {exc}"
    if resp.status != 200:
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text[:120]
        return f"HTTP {resp.status}: {message}"
    ends = {"data: [DONE]", "response.completed", "message_stop"}  # chat, Responses, Messages
    if mode == "stream" and not any(end in text for end in ends):
        return "stream did not reach its end event"
    if mode == "non-stream" and not any(key in text for key in ('"choices"', '"output"', '"content"')):
        return "answer without content"
    return None


async def ttfb(url: str, data: bytes, samples: int, auth: str = KEY) -> float:
    """p50 in ms of the time from sending a streamed request to its first body byte,
    on one keep-alive connection (each answer is read to its end before the next)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {auth}"}
    times: list[float] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(samples + 20):  # the first 20 warm the connection
            started = time.perf_counter()
            async with session.post(url, data=data, headers=headers) as resp:
                first = await resp.content.readany()
                elapsed = time.perf_counter() - started
                if resp.status != 200 or not first:
                    raise RuntimeError(f"TTFB probe: HTTP {resp.status} from {url}")
                while await resp.content.readany():
                    pass
            if i >= 20:
                times.append(elapsed)
    return statistics.median(times) * 1000


# -- the table --------------------------------------------------------------------------


@dataclass
class Cell:
    target: Target
    mode: str
    conns: int
    runs: list[Result] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def best(self) -> Result | None:
        return max(self.runs, key=lambda r: r.rps) if self.runs else None

    @property
    def ttfb(self) -> float | None:
        return min(self.ttfbs) if self.ttfbs else None


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_table(bench: Bench, loader: Loader, args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    cells = {(t.key, m, c): Cell(t, m, c) for t in targets for m in MODES for c in args.conns}
    for target in targets:
        for mode in MODES:
            why = bench.missing.get(target.service) or asyncio.run(
                probe(bench.url(target), body(target, mode), mode, target.auth)
            )
            if why:
                progress(f"{target.label}, {mode}: unavailable ({why})")
                for c in args.conns:
                    cells[(target.key, mode, c)].unavailable = why
    gw_requests = 0

    def count(target: Target, n: int) -> None:
        nonlocal gw_requests
        gw_requests += n if target.service == "gateway" else 0  # the gateway whose RSS is reported

    for target in targets:  # warm pools and caches at the highest concurrency
        for mode in MODES:
            if not cells[(target.key, mode, args.conns[0])].unavailable:
                warm = loader.run(bench.url(target), (body(target, mode),), max(args.conns), 1, target.auth)
                count(target, warm.requests)
    # every target runs back to back for one cell before the next cell, and the rounds
    # repeat that: a slow spell on a shared machine hits neighbours in the table alike
    for round_no in range(args.runs):
        tag = f"round {round_no + 1}/{args.runs}"
        for mode in MODES:
            for conns in args.conns:
                for target in targets:
                    cell = cells[(target.key, mode, conns)]
                    if cell.unavailable:
                        continue
                    pid = bench.services[target.service].pid
                    redis = bench.services["redis"].pid if target.service == "gateway-redis" else None
                    cpu, redis_cpu = cpu_seconds(pid), cpu_seconds(redis) if redis else 0.0
                    result = loader.run(bench.url(target), (body(target, mode),), conns, args.duration, target.auth)
                    result.cpu_s = cpu_seconds(pid) - cpu
                    if redis:
                        result.redis_cpu_s = cpu_seconds(redis) - redis_cpu
                    cell.runs.append(result)
                    count(target, result.requests)
                    progress(
                        f"{tag} {mode}, {conns} conn, {target.label}: {result.rps:,.0f} req/s, "
                        f"p50 {result.p50_ms:.2f} ms" + (f", {result.errors} errors" if result.errors else "")
                    )
        if 1 in args.conns and args.ttfb_samples:
            for target in targets:
                cell = cells[(target.key, "stream", 1)]
                if cell.unavailable:
                    continue
                value = asyncio.run(ttfb(bench.url(target), body(target, "stream"), args.ttfb_samples, target.auth))
                cell.ttfbs.append(value)
                count(target, args.ttfb_samples + 20)
                progress(f"{tag} TTFB, {target.label}: p50 {value:.3f} ms")
    return {"cells": cells, "gw_requests": gw_requests}


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def render_table(cells: dict[tuple[str, str, int], Cell], args: argparse.Namespace) -> list[str]:
    lines = [
        "| target | mode | conns | req/s | p50 ms | p99 ms | TTFB p50 ms | CPU µs/req | vs pipe |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes: list[str] = []
    for cell in cells.values():
        best = cell.best
        pipe = cells.get(("pipe", cell.mode, cell.conns))
        pipe_best = pipe.best if pipe else None
        ratio = best.rps / pipe_best.rps if best and pipe_best and pipe_best.rps else None
        if cell.unavailable:
            rps = "n/a"
            if cell.conns == args.conns[0]:
                notes.append(f"{cell.target.label}, {cell.mode}: {cell.unavailable}")
        elif best is None:
            rps = "-"
        else:
            rps = f"{best.rps:,.0f}"
            if best.errors:
                rps += " (!)"
                notes.append(
                    f"{cell.target.label}, {cell.mode}, {cell.conns} conn: {best.errors} errors "
                    f"({best.status_errors} non-2xx) of {best.requests} requests"
                )
        lines.append(
            f"| {cell.target.label} | {cell.mode} | {cell.conns} | {rps} | {fmt(best and best.p50_ms, '.2f')} "
            f"| {fmt(best and best.p99_ms, '.2f')} | {fmt(cell.ttfb, '.2f')} | {fmt(best and best.cpu_us, '.0f')} "
            f"| {fmt(ratio, '.2f', 'x')} |"
        )
    lines += [""] + [f"- n/a or (!): {note}" for note in notes]
    return lines


def render_checks(cells: dict[tuple[str, str, int], Cell], args: argparse.Namespace) -> list[str]:
    def best(key: str, mode: str, conns: int) -> Result | None:
        cell = cells.get((key, mode, conns))
        return cell.best if cell else None

    def ttfb_of(key: str) -> float | None:
        cell = cells.get((key, "stream", 1))
        return cell.ttfb if cell else None

    out: list[str] = []
    hi = max(args.conns)

    def ratio_check(key: str, mode: str, floor: float, what: str) -> None:
        mine, pipe = best(key, mode, hi), best("pipe", mode, hi)
        if mine and pipe and pipe.rps:
            value = mine.rps / pipe.rps
            out.append(f"- {what}: {value:.2f}x the pipe (target >= {floor}x) {verdict(value >= floor)}")
        else:
            out.append(f"- {what}: not measured")

    ratio_check("openai", "non-stream", 0.7, f"non-stream throughput at {hi} conns, OpenAI passthrough")
    gw, up = best("openai", "non-stream", 1), best("upstream", "non-stream", 1)
    if gw and up:
        added = gw.p50_ms - up.p50_ms
        out.append(
            f"- p50 added over upstream-direct at 1 conn, non-stream: {added:+.2f} ms "
            f"(target <= 0.5) {verdict(added <= 0.5)}"
        )
    gw, up = best("openai", "stream", 1), best("upstream", "stream", 1)
    if gw and up:
        out.append(
            f"- p50 added over upstream-direct at 1 conn, stream (for information): {gw.p50_ms - up.p50_ms:+.2f} ms"
        )
    ratio_check("openai", "stream", 0.6, f"streamed throughput at {hi} conns, OpenAI passthrough")
    mine, pipe = ttfb_of("openai"), ttfb_of("pipe")
    if mine is not None and pipe is not None:
        out.append(
            f"- TTFB at 1 conn over the pipe's: {mine - pipe:+.2f} ms (target <= 0.5) {verdict(mine - pipe <= 0.5)}"
        )
    ratio_check("anthropic", "stream", 0.5, f"Anthropic-translated streams at {hi} conns")
    ratio_check("gemini", "stream", 0.5, f"Gemini-translated streams at {hi} conns")
    return out


def render_limit_costs(cells: dict[tuple[str, str, int], Cell], args: argparse.Namespace) -> list[str]:
    """What counting tier limits costs, in process and in Redis, against the same
    passthrough for a key without limits, in this run."""
    out: list[str] = []
    for mode in MODES:
        for conns in args.conns:
            free, local, shared = (cells.get((key, mode, conns)) for key in ("openai", "limits", "redis"))
            if not (free and local and shared and free.best and local.best and shared.best):
                continue
            f, lo, sh = free.best, local.best, shared.best
            pipe = cells.get(("pipe", mode, conns))
            ratios = ""
            if pipe and pipe.best and pipe.best.rps:
                ratios = "; vs pipe " + " / ".join(f"{r.rps / pipe.best.rps:.2f}x" for r in (f, lo, sh))
            cpu = " / ".join(fmt(r.cpu_us, ".0f") for r in (f, lo, sh))
            out.append(
                f"- {mode}, {conns} conn (no limits / in process / in Redis): CPU {cpu} µs/req "
                f"(+ redis-server {fmt(sh.redis_cpu_us, '.0f')}); p50 {f.p50_ms:.2f} / {lo.p50_ms:.2f} / "
                f"{sh.p50_ms:.2f} ms{ratios}"
            )
    return ["", "Cost of tier limits (the OpenAI passthrough, same run):", *out] if out else []


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- soak and profile -----------------------------------------------------------------------


def soak(bench: Bench, loader: Loader, args: argparse.Namespace, targets: list[Target]) -> list[str]:
    """N mixed requests on a freshly started gateway; RSS after the first 10% and at the end."""
    mix: list[bytes] = []  # one URL takes every request of the mix: the chat targets'
    for target in [t for t in targets if t.service == "gateway" and t.dialect == "chat"]:
        for mode in MODES:
            if asyncio.run(probe(bench.url(target), body(target, mode), mode)) is None:
                mix.append(body(target, mode))
    if not mix:
        return ["- soak: skipped, no gateway target answers"]
    progress(f"soak: restarting the gateway, then {args.soak:,} requests mixing {len(mix)} request kinds")
    bench.restart_gateway()
    pid, url, bodies = bench.gateway_pid(), bench.urls["gateway"] + PATHS["chat"], tuple(mix)
    start_rss = rss_kib(pid)
    done, errors, rate = 0, 0, 0.0
    marks: list[tuple[int, int]] = []
    started = time.monotonic()
    for goal in (max(1, args.soak // 10), args.soak):
        while done < goal:
            # wrk runs whole seconds only: size each slice from the rate so far, 1 s at the end
            seconds = 1 if not rate else max(1, min(10, int((goal - done) / rate)))
            result = loader.run(url, bodies, args.soak_conns, seconds)
            done, errors = done + result.requests, errors + result.errors
            rate = result.rps or 1.0
            progress(f"soak: {done:,}/{args.soak:,} requests, {rate:,.0f} req/s, RSS {mib(rss_kib(pid))}")
        marks.append((done, rss_kib(pid)))
    (first_n, first_rss), (end_n, end_rss) = marks
    ratio = end_rss / first_rss
    kinds = ", ".join(sorted({f"{json.loads(b)['model']} {'stream' if b'stream' in b else 'non-stream'}" for b in mix}))
    return [
        f"- soak: {end_n:,} requests ({kinds}; {args.soak_conns} conns, {time.monotonic() - started:.0f} s, "
        f"{errors} errors) on a fresh gateway ({mib(start_rss)} at start)",
        f"- soak: RSS after the first {first_n:,}: {mib(first_rss)}; after {end_n:,}: {mib(end_rss)}; "
        f"ratio {ratio:.3f} (target <= 1.10) {verdict(ratio <= 1.10)}",
    ]


def find_py_spy(given: str | None) -> str | None:
    if given:
        return given
    return shutil.which("py-spy") or next((str(p) for p in (Path(PYTHON).parent / "py-spy",) if p.exists()), None)


def profile(bench: Bench, loader: Loader, args: argparse.Namespace, targets: list[Target]) -> list[str]:
    """py-spy the gateway under load (64 conns) for each gateway target and mode; top functions."""
    py_spy = find_py_spy(args.py_spy)
    if py_spy is None:
        return ["- profile: py-spy not found (`pip install py-spy` somewhere, then --py-spy PATH)"]
    outdir = Path(args.profile)
    outdir.mkdir(parents=True, exist_ok=True)
    out = [
        f"Profiles (py-spy, {args.profile_seconds} s at {max(args.conns)} conns each; "
        f"raw collapsed stacks in {outdir}):"
    ]
    for target in [t for t in targets if t.service == "gateway"]:
        for mode in MODES:
            data = (body(target, mode),)
            if asyncio.run(probe(bench.url(target), data[0], mode, target.auth)):
                continue
            raw = outdir / f"{target.key}-{mode}.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "-p", str(bench.gateway_pid()), "-d", str(args.profile_seconds), "-r", "200"]
                + ["-f", "raw", "-o", str(raw), "--subprocesses"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                time.sleep(0.3)
                result = loader.run(bench.url(target), data, max(args.conns), args.profile_seconds + 1, target.auth)
                _, err = spy.communicate(timeout=60)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            if not raw.exists():
                out.append(f"- {target.label}, {mode}: py-spy failed: {err.strip()[-300:]}")
                continue
            summary = ["", f"{target.label}, {mode} ({result.rps:,.0f} req/s under py-spy):", *summarise_profile(raw)]
            raw.with_suffix(".summary").write_text("\n".join(summary) + "\n")
            out += summary
            progress(f"profiled {target.label}, {mode}")
    return out


def summarise_profile(raw: Path, top: int = 12) -> list[str]:
    """Top functions of the event-loop thread, by own and by inclusive samples.

    Other threads (aiosqlite's worker) are reported apart: py-spy counts their blocking
    `queue.get()` as busy, which would drown the loop's real costs."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    others: Counter[str] = Counter()
    loop_total = total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if not f.startswith(("process ", "thread ("))]
        if not frames:
            continue
        if "threading.py" in frames[0]:
            others[frames[-1]] += n
            continue
        loop_total += n
        functions = [_function(f) for f in frames]
        own[functions[-1]] += n
        for function in set(functions):
            inclusive[function] += n
    if not loop_total:
        return ["  (no samples of the event-loop thread)"]

    def share(n: int) -> str:
        return f"{100 * n / loop_total:5.1f}%"

    lines = [f"  event-loop thread: {loop_total} of {total} samples; own time, by function:"]
    lines += [f"    {share(n)}  {name}" for name, n in own.most_common(top)]
    ours = [
        (name, n)
        for name, n in inclusive.most_common()
        if ("gateway/" in name or "gateway." in name) and n < 0.98 * loop_total  # not the entry frames
    ]
    lines.append("  inclusive (time in the function and what it calls), gateway/ functions:")
    lines += [f"    {share(n)}  {name}" for name, n in ours[:top]]
    if others:
        lines.append("  other threads (blocking waits included), by leaf function:")
        lines += [f"    {n:5d} samples  {name}" for name, n in others.most_common(3)]
    return lines


def _function(frame: str) -> str:
    """`func (aiohttp/web.py:12)` -> `func (aiohttp/web.py)`: samples add up per function."""
    head, sep, line = frame.rpartition(":")
    return f"{head})" if sep and line.rstrip(")").isdigit() else frame


def _short(frame: str) -> str:
    """`func (/long/path/site-packages/aiohttp/web.py:12)` -> `func (aiohttp/web.py:12)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker.startswith("/lib/python3"):
                where = "stdlib/" + where.split("/", 1)[-1]
    return f"{name} ({where})" if where else name


# -- main -------------------------------------------------------------------------------


def machine_notes(loader: Loader, args: argparse.Namespace) -> list[str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # noqa: F401

        loop = "uvloop (mock, pipe and gateway pick it when installed)"
    except ImportError:
        loop = "asyncio default loop (uvloop not installed in this Python)"
    load = os.getloadavg()
    notes = [
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"load average at start {load[0]:.2f}",
        f"- Python {platform.python_version()}, aiohttp {aiohttp.__version__}, event loop: {loop}",
        f"- load generator: {loader.describe()}",
    ]
    if not args.no_table:
        notes += [
            f"- each cell: {args.runs} runs of {args.duration} s (targets back to back per cell, rounds repeated); "
            "the run with the highest req/s is reported, with its p50/p99; a 1 s warm-up per target and mode first",
            f"- TTFB: aiohttp client, 1 keep-alive connection, {args.ttfb_samples} streamed requests per round "
            "(time to the first body byte), p50, lowest of the rounds",
        ]
    notes.append(
        f"- mock upstream: scripts/mock_providers.py --chunks {args.chunks} --delay 0 (a stream = {args.chunks} "
        f"content chunks + role, finish, usage and [DONE] events); gateway --log-level {args.log_level}, "
        f"workers {args.workers}"
    )
    return notes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 runs of 1 s, fewer TTFB samples (~1 minute)")
    parser.add_argument("--duration", type=int, help="seconds per load run (default 2, --quick 1)")
    parser.add_argument("--runs", type=int, help="runs per cell, best reported (default 3, --quick 2)")
    parser.add_argument("--conns", default="1,64", help="connection counts (default 1,64)")
    parser.add_argument("--targets", default=",".join(t.key for t in TARGETS), help="subset of targets")
    parser.add_argument("--ttfb-samples", type=int, help="streamed requests per TTFB round (default 400, --quick 150)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "builtin"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: cores are for the targets)")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per mock stream (default 20)")
    parser.add_argument("--log-level", default="INFO", help="the gateway's --log-level (default INFO, its default)")
    parser.add_argument("--workers", type=int, default=1, help="server.workers in the gateway config (when > 1)")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="also N mixed requests; RSS growth")
    parser.add_argument("--soak-conns", type=int, default=64)
    parser.add_argument("--no-table", action="store_true", help="skip the table (with --soak or --profile)")
    parser.add_argument("--profile", metavar="DIR", help="also py-spy the gateway under load; stacks into DIR")
    parser.add_argument("--profile-seconds", type=int, default=5)
    parser.add_argument("--py-spy", help="path to py-spy (default: PATH, then next to this Python)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, usage db)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1 if args.quick else 2)
    args.runs = args.runs or (2 if args.quick else 3)
    args.ttfb_samples = args.ttfb_samples if args.ttfb_samples is not None else (150 if args.quick else 400)
    args.conns = sorted({int(c) for c in args.conns.split(",") if c.strip()})
    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    unknown = wanted - {t.key for t in TARGETS}
    if unknown:
        parser.error(f"--targets: unknown {', '.join(sorted(unknown))} (known: {', '.join(t.key for t in TARGETS)})")
    args.target_list = [t for t in TARGETS if t.key in wanted]
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    bench = Bench(tmp, args)
    loader = Loader(tmp, args.loadgen, args.wrk_threads)
    started = time.monotonic()
    command = " ".join(["python", "scripts/bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    ok = False
    try:
        notes = machine_notes(loader, args)
        bench.start()
        gw_pid = bench.gateway_pid()
        rss_start = rss_kib(gw_pid)
        report = [f"## `{command}`", ""]
        if not args.no_table:
            outcome = run_table(bench, loader, args, args.target_list)
            rss_end = rss_kib(gw_pid)
            report += render_table(outcome["cells"], args)
            report += [
                f"- memory: gateway RSS {mib(rss_end)} after ~{outcome['gw_requests']:,} requests "
                f"({mib(rss_start)} right after start); bare pipe {mib(rss_kib(bench.services['pipe'].pid))}; "
                f"mock {mib(rss_kib(bench.services['mock'].pid))}",
                "",
                "Targets from the issue (ratios measured in this run):",
            ]
            report += render_checks(outcome["cells"], args)
            report += render_limit_costs(outcome["cells"], args)
        if args.profile:
            report += ["", *profile(bench, loader, args, args.target_list)]
        if args.soak:
            report += ["", "Memory soak:", *soak(bench, loader, args, args.target_list)]
        report += ["", "Machine and method:", *notes, f"- wall time {time.monotonic() - started:.0f} s"]
        text = "\n".join(report)
        while "\n\n\n" in text:  # sections skipped by --no-table leave double gaps
            text = text.replace("\n\n\n", "\n\n")
        print(text, flush=True)
        ok = True
        return 0
    except KeyboardInterrupt:
        progress("interrupted; stopping everything")
        return 130
    except RuntimeError as exc:
        progress(f"failed: {exc}")
        return 1
    finally:
        bench.stop()
        if args.keep_tmp or not ok:
            progress(f"logs, configs and the usage database kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
