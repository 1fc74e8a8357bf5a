"""Real `gateway serve` processes for tests: started on a free port, output to a file."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from conftest import ENV

ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid`, sorted (read from /proc: Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_own_fd_limit() -> None:
    """Tests that hold thousands of sockets need more than a default soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    port: int
    config: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for_output(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if text in out:
                return out
            await asyncio.sleep(0.05)
        raise AssertionError(f"{text!r} not in the gateway's output:\n{self.output()}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def write_config(tmp_path: Path, doc: dict[str, Any], name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


async def launch(
    tmp_path: Path, config: Path, *, port: int | None = None, open_files: int | None = None, ready: bool = True
) -> Served:
    """Start `gateway serve --config config`; with `ready`, wait until it answers HTTP.
    `open_files` caps the process's descriptors (soft and hard), as `ulimit -n` would."""
    port = port or free_port()
    log = tmp_path / f"gateway-{port}.log"
    preexec: Callable[[], None] | None = None
    if open_files is not None:

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port),
            cwd=ROOT, env={**ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdout=out, stderr=asyncio.subprocess.STDOUT, preexec_fn=preexec,
        )  # fmt: skip
    served = Served(proc, port, config, log)
    if ready:
        await wait_until_serving(served)
    return served


async def wait_until_serving(served: Served, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.proc.returncode is not None:
            break
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        # any answer will do (a 404 here): the server is up, whatever the handlers say
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = await reader.readline()
        writer.close()
        if status.startswith(b"HTTP/1.1 "):
            return
        await asyncio.sleep(0.05)
    await served.stop()
    raise AssertionError("gateway did not start:\n" + served.output())
