"""Real PostgreSQL for tests: the shared server (POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test) in a schema of the test's own (the URL's
`search_path`, dropped afterwards), and a private server (initdb + pg_ctl in a temp
dir, on a free port) that a test may stop and start.  A missing server, driver or
binary fails the test under CI (env CI set) and skips it, saying why, elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from processes import free_port

POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
_PREFIX = "gateway-pg-"  # private servers' directories under the temp dir


def unavailable(why: str, *, module: bool = False) -> None:
    """Fail under CI (the server is part of the test environment), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: PostgreSQL tests must run)")
    pytest.skip(why, allow_module_level=module)


def require_asyncpg() -> None:
    """At a test module's top: the driver the gateway and the tests use."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        unavailable("asyncpg is not installed (pip install -e '.[dev]')", module=True)


def with_settings(url: str, **settings: str) -> str:
    """`url` with session settings added to its query (asyncpg sends unknown query
    parameters as server settings)."""
    parts = urlsplit(url)
    extra = "&".join(f"{k}={v}" for k, v in settings.items())
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


async def connect(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url, timeout=5)


@asynccontextmanager
async def fresh_schema(url: str = POSTGRES_URL) -> AsyncIterator[str]:
    """A URL whose tables live in a new schema of their own; the schema is dropped after
    (over a new connection: the test may have restarted the server meanwhile)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = await connect(url)
    except Exception as exc:
        unavailable(f"no PostgreSQL at {url} ({type(exc).__name__}: {exc})")
    try:
        await admin.execute(f"CREATE SCHEMA {name}")
    finally:
        await admin.close()
    try:
        yield with_settings(url, search_path=name)
    finally:
        admin = await connect(url)
        try:
            await admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await admin.close()


# Fixtures are registered under the name given here; a test module imports the
# `*_fixture` functions, so a test's parameter never shadows the import.


@pytest.fixture(name="pg_url")
async def pg_url_fixture() -> AsyncIterator[str]:
    """The shared server, in a schema of this test's own."""
    async with fresh_schema() as url:
        yield url


async def fetch(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


class OwnPostgres:
    """A private PostgreSQL server (no fsync: tests only) that tests stop and start."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists() or shutil.which("pg_ctl") is None and not (PG_BIN / "pg_ctl").exists():
            unavailable(f"no initdb/pg_ctl in {PG_BIN} or on PATH")
        self._ctl = shutil.which("pg_ctl") or str(PG_BIN / "pg_ctl")
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no 'postgres' user to run a private server as")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._remove_orphans()
        self.dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (self.dir / "owner").write_text(str(os.getpid()))
        if self._as:
            shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def _remove_orphans(self) -> None:
        """Stop and delete the private servers of test runs that were killed before
        their teardown (their owner process is gone): they would run forever."""
        for directory in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
            try:
                owner = int((directory / "owner").read_text())
                os.kill(owner, 0)
                continue  # its run is still going
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue  # not ours to judge
            if (directory / "data" / "postmaster.pid").exists():
                with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                    self._run(self._ctl, "-D", str(directory / "data"), "-m", "immediate", "-w", "stop")
            shutil.rmtree(directory, ignore_errors=True)

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self._ctl, "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, new connections refused."""
        self._run(self._ctl, "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def running(self) -> bool:
        done = subprocess.run(
            [*self._as, self._ctl, "-D", str(self.dir / "data"), "status"], capture_output=True, check=False
        )
        return done.returncode == 0

    def remove(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(name="own_postgres_server", scope="session")
def own_postgres_server_fixture() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    server.start()
    yield server
    server.remove()


@pytest.fixture(name="own_postgres")
async def own_postgres_fixture(own_postgres_server: OwnPostgres) -> AsyncIterator[tuple[OwnPostgres, str]]:
    """(the private server, a URL to a schema of this test's own on it); the server is
    running again after the test, whatever the test did to it."""
    server = own_postgres_server
    if not server.running():
        await server.astart()
    async with fresh_schema(server.url) as url:
        yield server, url
        if not server.running():
            await server.astart()
