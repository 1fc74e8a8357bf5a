"""What a loaded configuration is: frozen dataclasses, built once by the parser and
read (never changed) by every request; plus the small helpers callers share."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

PROVIDER_KINDS: Final = ("openai", "anthropic", "gemini")


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem with its place."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds.  `read` is the idle limit between two reads of a response, so a
    long but live stream is never cut; `total` bounds non-streamed calls only."""

    connect: float = 10.0
    first_byte: float = 120.0  # until the first byte of the answer (a prompt may take a while to read)
    read: float = 300.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    kind: str
    base_url: str
    api_key: str | None  # None when its environment variable is unset
    api_key_env: str | None  # the variable named in the YAML, for the 503 message
    headers: Mapping[str, str] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_tokens: int | None = None  # default output budget where the upstream requires one
    api_keys: tuple[str, ...] = ()  # every usable key (`api_key` or `api_keys`), tried in turn
    max_concurrency: int | None = None  # upstream calls in flight at once; None = unlimited
    queue_timeout: float = 10.0  # how long a call waits for a free slot before 503
    # `native`: the server speaks the Responses API itself (OpenAI): /v1/responses passes
    # through; `translate` (default): Responses requests go through the chat translation
    responses: str = "translate"


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a model is served: a provider and the name it has there."""

    provider: str
    upstream: str
    weight: float = 1.0  # share of traffic among deployments of the same priority
    priority: int = 0  # lower first; higher priorities are fallbacks


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    provider: str
    upstream: str  # the name sent to the provider
    owned_by: str
    created: int
    max_tokens: int | None = None
    deployments: tuple[Deployment, ...] = ()  # the first is `provider`/`upstream`


LIMIT_FIELDS: Final = ("rpm", "tpm", "concurrency", "tokens_per_month")
SERVER_FIELDS: Final = (
    "host", "port", "max_body_bytes", "shutdown_timeout", "workers", "header_timeout", "body_timeout",
    "keepalive_timeout", "max_connections", "max_upstream_body_bytes",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Limits:
    """Capacity of one key; None = unlimited.  `rpm` / `tpm`: requests / tokens per
    rolling minute; `concurrency`: requests in flight; `tokens_per_month`: calendar
    month (UTC) quota, counted from the usage log."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    tokens_per_month: int | None = None

    def over(self, base: Limits) -> Limits:
        """These limits, with every field left unset taken from `base`."""
        return Limits(*(getattr(self, f) if getattr(self, f) is not None else getattr(base, f) for f in LIMIT_FIELDS))


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    models: frozenset[str]  # parents' models included
    limits: Limits = field(default_factory=Limits)  # parents' limits merged field by field


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key_sha256: str
    tier: str
    limits: Limits = field(default_factory=Limits)  # the tier's, with the key's own overrides applied


@dataclass(frozen=True, slots=True)
class Routing:
    """Retries and fallback across a model's deployments and a provider's keys."""

    attempts: int = 3  # upstream calls per request, at most
    backoff: float = 0.2  # seconds before the 2nd attempt, doubling after
    max_retry_after: float = 2.0  # wait out an upstream Retry-After up to this long; longer goes to the client
    failures_before_cooldown: int = 3  # consecutive failures that take a deployment out...
    cooldown: float = 30.0  # ...for this many seconds


@dataclass(frozen=True, slots=True)
class State:
    """Where the counters every process must share live (`state:`).  Without `redis`,
    limits, the monthly quota and cool-downs are counted in each process."""

    redis: str | None = None  # redis://host:6379/0 (or rediss://); Valkey speaks the same
    on_error: str = "open"  # Redis unreachable or slow: "open" admits (and logs), "closed" answers 503
    # one Redis round trip may take this long before on_error applies; the wait includes the
    # event loop's own delay in reaching the reply, so under load 50 ms tripped needlessly
    timeout_ms: float = 250.0


def is_postgres(database: str) -> bool:
    """`database` names a PostgreSQL server (a URL) rather than an SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True, slots=True)
class Config:
    host: str
    port: int
    database: str
    max_body_bytes: int
    providers: Mapping[str, Provider]
    models: Mapping[str, Model]  # in file order, which is the order /v1/models lists
    tiers: Mapping[str, Tier]
    keys: Mapping[str, ApiKey]  # by sha256 hex of the key
    warnings: tuple[str, ...] = ()
    routing: Routing = field(default_factory=Routing)
    shutdown_timeout: float = 30.0  # seconds the whole graceful stop may take on SIGTERM
    workers: int = 1  # processes serving the one port (SO_REUSEPORT), sharing the usage log
    metrics_key_sha256: str | None = None  # /metrics needs this key; without one, loopback callers only
    # client connections (gateway/server.py): slow or silent clients must not hold sockets
    header_timeout: float = 10.0  # seconds for a request's headers, from connect or from its first byte
    body_timeout: float = 60.0  # seconds for the whole body once the headers are in (32 MiB at ~5 Mbit/s)
    keepalive_timeout: float = 75.0  # an idle keep-alive connection is closed after this long
    max_connections: int | None = None  # per process; None = from the open-file limit (gateway/server.py)
    max_upstream_body_bytes: int = 64 * 1024 * 1024  # largest non-streamed upstream answer read
    state: State = field(default_factory=State)
    # where usage rows a PostgreSQL `database` could not take wait (an SQLite database
    # spills beside its own file); None = data/ in the working directory
    usage_spill_dir: str | None = None
    responses_ttl_seconds: float = 30 * 86400.0  # stored Responses (`store: true`) live this long (responses.ttl_days)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
