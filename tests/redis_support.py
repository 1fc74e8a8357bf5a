"""Real Redis for tests: the shared server (REDIS_URL, default redis://127.0.0.1:6379/0)
under a key prefix of the test's own, and private `redis-server` processes that a test
may stop, freeze and restart.  A missing server or binary fails the test under CI
(env CI set) and skips it, saying why, elsewhere."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from processes import free_port

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(why: str, *, module: bool = False) -> None:
    """Fail under CI (the server is part of the test environment), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: Redis tests must run)")
    pytest.skip(why, allow_module_level=module)


def require_redis_package() -> None:
    """At a test module's top: the client library the tests talk to Redis with."""
    try:
        import redis  # noqa: F401
    except ImportError:
        unavailable("the redis package is not installed (pip install -e '.[dev]')", module=True)


def new_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


async def shared_client() -> Any:
    """A client of the shared server, or skip/fail when it does not answer."""
    from gateway.limits_redis import connect

    client = connect(REDIS_URL, 2.0)
    try:
        async with asyncio.timeout(3):
            await client.ping()
    except Exception as exc:
        await client.aclose()
        unavailable(f"no Redis at {REDIS_URL} ({type(exc).__name__}: {exc})")
    return client


async def delete_prefix(client: Any, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)


@asynccontextmanager
async def shared_redis() -> AsyncIterator[tuple[Any, str]]:
    """(client, prefix): the shared server, and a prefix no other test uses; its keys are
    deleted afterwards."""
    client = await shared_client()
    prefix = new_prefix()
    try:
        yield client, prefix
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


class OwnRedis:
    """A private redis-server on a free port, keeping nothing on disk: a restart loses
    every key, as a real restart without persistence does."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.tmp = binary, tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        with (self.tmp / f"redis-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.tmp)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                out = subprocess.run(
                    ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True, timeout=2
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            if "PONG" in out:
                return
            time.sleep(0.05)
        raise AssertionError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGKILL's successor otherwise
            proc.kill()
            proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (a hung or overloaded Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
