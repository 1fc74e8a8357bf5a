"""Shared fixtures: fake upstreams on loopback, a running gateway, an official SDK client."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeUpstream  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.appkeys import USAGE  # noqa: E402
from gateway.config import Config, parse_config  # noqa: E402

PRO_KEY = "sk-test-pro-0123456789"
FREE_KEY = "sk-test-free-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-abcdef"


def base_config(upstreams: dict[str, tuple[str, str]], db: str, **extra: Any) -> dict[str, Any]:
    """A gateway YAML document (as data) pointing each provider at a fake URL.

    `upstreams` maps provider name -> (kind, base_url)."""
    providers = {
        name: {"kind": kind, "base_url": url, "api_key": "${UPSTREAM_KEY}"} for name, (kind, url) in upstreams.items()
    }
    models = []
    for name in upstreams:
        models.append({"id": f"{name}-small", "provider": name, "upstream": f"{name}-small-2024"})
        models.append({"id": f"{name}-large", "provider": name})
    doc = {
        "database": db,
        "providers": providers,
        "models": models,
        "tiers": {
            "free": {"models": [f"{n}-small" for n in upstreams]},
            "pro": {"extends": "free", "models": [f"{n}-large" for n in upstreams]},
        },
        "routing": {"backoff": 0.01},  # retries stay, the waiting goes: tests must be fast
        "keys": [
            {"name": "alice", "key": "${PRO_KEY}", "tier": "pro"},
            {"name": "bob", "key": "${FREE_KEY}", "tier": "free"},
        ],
    }
    doc.update(extra)
    return doc


ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "PRO_KEY": PRO_KEY, "FREE_KEY": FREE_KEY}
SECRETS = (UPSTREAM_KEY, PRO_KEY, FREE_KEY)
SEEN: list[str] = []  # every log line and every JSON answer the gateway produced during the run


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        SEEN.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_secret_ever_leaks() -> Iterator[None]:
    """After the whole run: no configured secret in any log line or response body."""
    handler = _Capture(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(exc_text)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(old_level)
    assert SEEN, "the capture saw nothing: the check would be vacuous"
    leaks = [(secret, line[:200]) for line in SEEN for secret in SECRETS if secret in line]
    assert not leaks, f"secrets leaked: {leaks[:5]}"


@web.middleware
async def _capture_bodies(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    if isinstance(response, web.Response) and response.body is not None:
        SEEN.append(bytes(response.body).decode("utf-8", "replace"))
    return response


@dataclass
class Gateway:
    server: TestServer
    app: web.Application
    config: Config
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/v1"))

    def client(self, key: str = PRO_KEY, **kw: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, **kw)
        self.clients.append(client)  # closed at teardown, so no socket outlives its test
        return client

    async def usage_rows(self) -> list[dict[str, Any]]:
        """Every usage row written so far (waits for the writer to catch up)."""
        store = self.app[USAGE]
        await store.flush()
        async with store._db.execute("SELECT * FROM usage ORDER BY id") as cur:
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


@pytest.fixture
async def fake_server(aiohttp_server: Any) -> Callable[..., Awaitable[tuple[FakeUpstream, str]]]:
    async def start(check: Any = None) -> tuple[FakeUpstream, str]:
        fake = FakeUpstream(check)
        server = await aiohttp_server(fake.app, host="127.0.0.1")
        return fake, str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def start_gateway(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    started: list[Gateway] = []

    async def start(doc: dict[str, Any], env: dict[str, str] | None = None) -> Gateway:
        config = parse_config(doc, ENV if env is None else env, created=1_700_000_000)
        app = create_app(config)
        app.middlewares.insert(0, _capture_bodies)
        server = await aiohttp_server(app, host="127.0.0.1")  # TestServer cancels handlers on hang-up, as `serve` does
        started.append(Gateway(server, app, config))
        return started[-1]

    yield start
    for gw in started:
        for client in gw.clients:
            await client.close()


@pytest.fixture
async def openai_upstream(fake_server: Any) -> tuple[FakeUpstream, str]:
    return await fake_server()


@pytest.fixture
async def gateway(start_gateway: Any, openai_upstream: tuple[FakeUpstream, str], tmp_path: Path) -> Gateway:
    """A gateway with one OpenAI-compatible provider `oai` (models oai-small, oai-large)."""
    _, url = openai_upstream
    return await start_gateway(base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db")))


@pytest.fixture
def upstream(openai_upstream: tuple[FakeUpstream, str]) -> FakeUpstream:
    return openai_upstream[0]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
