"""The built-in load generator, used by run.py when `wrk` is not installed.

Closed loop like wrk: N keep-alive connections, each sending its next POST as soon
as the previous answer is complete, for a fixed time.  It speaks just enough
HTTP/1.1 on raw asyncio protocols (Content-Length or chunked bodies) to stay much
cheaper than a full client, yet it is Python: near the top of the table it is the
generator, not the target, that runs out of CPU.  Prints one line, like post.lua:

    BENCH_RESULT {"requests": ..., "duration_us": ..., "p50": ..., ...}   (latencies in us)

    python scripts/bench/loadgen.py --url http://127.0.0.1:8080/v1/chat/completions \\
        --bodies bodies.jsonl --auth sk-bench --conns 64 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from urllib.parse import urlsplit


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.bytes = 0
        self.status_errors = 0
        self.read_errors = 0
        self.connect_errors = 0


class Connection(asyncio.Protocol):
    """One keep-alive connection sending requests back to back."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.started = 0.0
        self.state = "idle"
        self.remaining = 0
        self.closed = gen.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != "idle":
            self.gen.stats.read_errors += 1
        self.state = "idle"
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self) -> None:
        assert self.transport is not None
        if self.gen.stopping:
            self.state = "idle"
            self.transport.close()
            return
        self.state, self.buf = "head", bytearray()
        self.started = time.perf_counter()
        self.transport.write(self.gen.next_request())

    def data_received(self, data: bytes) -> None:
        self.gen.stats.bytes += len(data)
        self.buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        buf = self.buf
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if int(head[9:12]) >= 400:
                self.gen.stats.status_errors += 1
            fields = dict(line.partition(b":")[::2] for line in head.split(b"\r\n")[1:])
            if b"chunked" in fields.get(b"transfer-encoding", b""):
                self.state = "size"
            else:
                self.remaining = int(fields.get(b"content-length", b"0"))
                self.state = "body"
            return True
        if self.state == "body":
            if len(buf) < self.remaining:
                return False
            del buf[: self.remaining]
            self._finished()
            return False
        if self.state == "size":
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(buf[:end]).split(b";")[0], 16)
            if len(buf) < end + 2 + size + 2:
                return False
            del buf[: end + 2 + size + 2]  # no trailers expected after the last chunk
            if size == 0:
                self._finished()
                return False
            return True
        return False

    def _finished(self) -> None:
        now = time.perf_counter()
        if not self.gen.stopping:
            self.gen.stats.latencies.append(now - self.started)
        self.send()


class Generator:
    def __init__(self, url: str, bodies: list[bytes], auth: str | None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.requests = [self._format(path, body, auth) for body in bodies]
        self.index = 0
        self.stats = Stats()
        self.stopping = False
        self.loop = asyncio.get_running_loop()

    def _format(self, path: str, body: bytes, auth: str | None) -> bytes:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        if auth:
            head.append(f"Authorization: Bearer {auth}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def next_request(self) -> bytes:
        self.index = (self.index + 1) % len(self.requests)
        return self.requests[self.index]

    async def run(self, conns: int, duration: float) -> float:
        connections: list[Connection] = []
        started = time.perf_counter()
        for _ in range(conns):
            try:
                _, proto = await self.loop.create_connection(lambda: Connection(self), self.host, self.port)
            except OSError:
                self.stats.connect_errors += 1
                continue
            connections.append(proto)
        await asyncio.sleep(max(0.0, duration - (time.perf_counter() - started)))
        self.stopping = True
        elapsed = time.perf_counter() - started
        for conn in connections:
            if conn.state == "idle" and conn.transport is not None:
                conn.transport.close()
        await asyncio.wait([c.closed for c in connections], timeout=5)
        for conn in connections:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.abort()
        return elapsed


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _main(args: argparse.Namespace) -> dict[str, float]:
    with open(args.bodies, "rb") as file:
        bodies = [line.strip() for line in file if line.strip()]
    gen = Generator(args.url, bodies, args.auth)
    elapsed = await gen.run(args.conns, args.duration)
    lat = sorted(gen.stats.latencies)
    us = 1e6
    return {
        "requests": len(lat),
        "duration_us": int(elapsed * us),
        "bytes": gen.stats.bytes,
        "connect": gen.stats.connect_errors,
        "read": gen.stats.read_errors,
        "write": 0,
        "status": gen.stats.status_errors,
        "timeout": 0,
        "p50": int(percentile(lat, 50) * us),
        "p90": int(percentile(lat, 90) * us),
        "p99": int(percentile(lat, 99) * us),
        "mean": round(sum(lat) / len(lat) * us, 1) if lat else 0.0,
        "max": int(lat[-1] * us) if lat else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="file with one JSON body per line (several: round-robin)")
    parser.add_argument("--auth", help="bearer token")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_main(args))
    else:
        result = uvloop.run(_main(args))
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
