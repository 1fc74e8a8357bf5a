"""The YAML configuration: loaded once, validated strictly, then frozen.

`load_config(path)` reads the file, expands `${VAR}` / `${VAR:-default}` from the
environment, checks every field and returns a `Config`.  Every problem found is
reported at once, each prefixed with the exact place in the file
(`tiers.pro.models[2]: unknown model 'gpt-5'`), as one `ConfigError`.  Nothing
here is read again per request: tiers are resolved to model sets at load time.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import yaml

PROVIDER_KINDS: Final = ("openai", "anthropic", "gemini")
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


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
    timeout_ms: float = 50.0  # one Redis round trip may take this long before on_error applies


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
    responses_ttl_seconds: float = 30 * 86400.0  # stored Responses (`store: true`) live this long (responses.ttl_days)


_CONFIG_DEFAULTS: Final = {f.name: f.default for f in fields(Config)}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate `path`; raise `ConfigError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: {where}invalid YAML: {problem}"]) from None
    created = int(path.stat().st_mtime)
    return parse_config(raw, os.environ if environ is None else environ, created=created)


def parse_config(raw: Any, environ: Mapping[str, str], created: int = 0) -> Config:
    """Validate an already-parsed YAML document (tests build these in code)."""
    return _Parser(environ, created).parse(raw)


# --------------------------------------------------------------------------------------
# Validation.  `_Parser` accumulates errors instead of stopping at the first one, so an
# operator fixes a file in one round.


class _Parser:
    def __init__(self, environ: Mapping[str, str], created: int) -> None:
        self.env = environ
        self.created = created
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # -- generic field readers ---------------------------------------------------------

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.error(f"{where}.{key}", f"unknown field (allowed: {', '.join(allowed)})")
        return value

    def string(self, obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.error(f"{where}.{key}", "required")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            self.error(f"{where}.{key}", f"must be a non-empty string, got {_kind(value)}")
            return None
        return value

    def number(
        self, obj: dict[str, Any], key: str, where: str, default: float, *, integer: bool = False, zero: bool = False
    ) -> float:
        value = obj.get(key, default)
        if isinstance(value, str):
            try:
                value = float(value) if not integer else int(value)
            except ValueError:
                pass
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or value < 0 or (value == 0 and not zero):
            kind = ("a non-negative " if zero else "a positive ") + ("integer" if integer else "number")
            self.error(f"{where}.{key}", f"must be {kind}, got {value!r}")
            return default
        return value

    def expand(self, value: str, where: str) -> tuple[str | None, str | None]:
        """Expand `${VAR}` references.  Returns (value, unset variable name); the value
        is None when a referenced variable has no value and no default."""
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            got = self.env.get(name)
            if got:
                return got
            if default is not None:
                return default
            missing.append(name)
            return ""

        if "${" in value and not _ENV_REF.search(value):
            self.error(where, "malformed ${...} reference (use ${VAR} or ${VAR:-default})")
        result = _ENV_REF.sub(substitute, value)
        if missing:
            return None, missing[0]
        return result, None

    # -- sections ----------------------------------------------------------------------

    def parse(self, raw: Any) -> Config:
        top = self.mapping(
            raw,
            "(top level)",
            ("server", "database", "providers", "models", "tiers", "keys", "routing", "metrics", "responses", "state"),
        )
        responses = self.mapping(top.get("responses"), "responses", ("ttl_days",))
        ttl_days = self.number(responses, "ttl_days", "responses", 30.0)
        metrics = self.mapping(top.get("metrics"), "metrics", ("admin_key",))
        metrics_key = None
        if metrics.get("admin_key") is not None:
            value, unset = self.expand(str(metrics["admin_key"]), "metrics.admin_key")
            if value is None:
                self.error("metrics.admin_key", f"environment variable {unset} is not set")
            else:
                metrics_key = hash_key(value)
        if raw is None:
            self.error("(top level)", "the file is empty")
        server = self.mapping(top.get("server"), "server", SERVER_FIELDS)
        host = self.string(server, "host", "server") or "127.0.0.1"
        port = int(self.number(server, "port", "server", 8080, integer=True))
        max_body = int(self.number(server, "max_body_bytes", "server", 32 * 1024 * 1024, integer=True))
        shutdown_timeout = self.number(server, "shutdown_timeout", "server", 30.0)
        workers = int(self.number(server, "workers", "server", 1, integer=True))
        connections = self.connections(server)
        routing = self.routing(top.get("routing"))
        database = self.database(top.get("database", "data/gateway.db"))
        state = self.state(top.get("state"))

        providers = dict(self.providers(top.get("providers")))
        models = self.models(top.get("models"), providers)
        tiers = self.tiers(top.get("tiers"), models)
        keys = self.keys(top.get("keys"), tiers)
        if workers > 1 and any(k.limits != Limits() for k in keys.values()):
            self.warnings.append(
                f"server.workers is {workers}: tier and key limits are counted per worker process, "
                f"so a key may get up to {workers} times its limit"
            )
        if self.errors:
            raise ConfigError(self.errors)
        return Config(
            host=host,
            port=port,
            database=database,
            max_body_bytes=max_body,
            providers=providers,
            models=models,
            tiers=tiers,
            keys=keys,
            warnings=tuple(self.warnings),
            routing=routing,
            shutdown_timeout=shutdown_timeout,
            workers=workers,
            metrics_key_sha256=metrics_key,
            responses_ttl_seconds=ttl_days * 86400.0,
            state=state,
            **connections,
        )

    def database(self, raw: Any) -> str:
        """An SQLite file path, or a `postgresql://` URL (`${VAR}` allowed: it holds a password)."""
        if not isinstance(raw, str) or not raw:
            self.error("database", "must be a file path or a postgresql:// URL")
            return "data/gateway.db"
        value, unset = self.expand(raw, "database")
        if value is None:
            self.error("database", f"environment variable {unset} is not set")
            return "data/gateway.db"
        return value

    def state(self, raw: Any) -> State:
        spec = self.mapping(raw, "state", ("redis", "on_error", "timeout_ms"))
        d = State()
        redis = None
        if spec.get("redis") is not None:
            value, unset = self.expand(str(spec["redis"]), "state.redis")
            if value is None:
                self.error("state.redis", f"environment variable {unset} is not set")
            elif not value.startswith(("redis://", "rediss://", "unix://")):
                self.error(
                    "state.redis", f"must be a redis:// (or rediss://, unix://) URL, got {value.split(':')[0]!r}"
                )
            else:
                redis = value
        on_error = spec.get("on_error", d.on_error)
        if on_error not in ("open", "closed"):
            self.error("state.on_error", f"must be 'open' or 'closed', got {on_error!r}")
            on_error = d.on_error
        return State(redis=redis, on_error=on_error, timeout_ms=self.number(spec, "timeout_ms", "state", d.timeout_ms))

    def connections(self, server: dict[str, Any]) -> dict[str, Any]:
        """The `server.*` limits on client connections and bodies (Config's defaults)."""
        d = _CONFIG_DEFAULTS  # kept in one place: the dataclass
        out: dict[str, Any] = {
            name: self.number(server, name, "server", d[name])
            for name in ("header_timeout", "body_timeout", "keepalive_timeout")
        }
        out["max_upstream_body_bytes"] = int(
            self.number(server, "max_upstream_body_bytes", "server", d["max_upstream_body_bytes"], integer=True)
        )
        if server.get("max_connections") is not None:
            out["max_connections"] = int(self.number(server, "max_connections", "server", 1, integer=True))
        return out

    def routing(self, raw: Any) -> Routing:
        fields_ = ("attempts", "backoff", "max_retry_after", "failures_before_cooldown", "cooldown")
        spec = self.mapping(raw, "routing", fields_)
        d = Routing()
        return Routing(
            attempts=int(self.number(spec, "attempts", "routing", d.attempts, integer=True)),
            backoff=self.number(spec, "backoff", "routing", d.backoff, zero=True),
            max_retry_after=self.number(spec, "max_retry_after", "routing", d.max_retry_after, zero=True),
            failures_before_cooldown=int(
                self.number(spec, "failures_before_cooldown", "routing", d.failures_before_cooldown, integer=True)
            ),
            cooldown=self.number(spec, "cooldown", "routing", d.cooldown, zero=True),
        )

    def providers(self, raw: Any) -> Iterator[tuple[str, Provider]]:
        where = "providers"
        if raw is None:
            self.error(where, "required: at least one provider")
            return
        section = self.mapping(raw, where, tuple(raw) if isinstance(raw, dict) else ())
        allowed = (
            "kind", "base_url", "api_key", "api_keys", "headers", "timeouts", "max_tokens", "max_concurrency",
            "queue_timeout", "responses",
        )  # fmt: skip
        for name, spec in section.items():
            here = f"{where}.{name}"
            spec = self.mapping(spec, here, allowed)
            kind = self.string(spec, "kind", here, required=True)
            if kind is not None and kind not in PROVIDER_KINDS:
                self.error(f"{here}.kind", f"unknown kind {kind!r} (expected one of: {', '.join(PROVIDER_KINDS)})")
            base_url = self.string(spec, "base_url", here, required=True) or ""
            expanded, unset = self.expand(base_url, f"{here}.base_url")
            if expanded is None:
                self.error(f"{here}.base_url", f"environment variable {unset} is not set")
            base_url = expanded or ""
            if base_url and not base_url.startswith(("http://", "https://")):
                self.error(f"{here}.base_url", "must start with http:// or https://")
            api_keys, api_key_env = self.api_keys(spec, here)
            api_key = api_keys[0] if api_keys else None
            headers = self.headers(spec.get("headers"), f"{here}.headers")
            tmap = self.mapping(spec.get("timeouts"), f"{here}.timeouts", ("connect", "first_byte", "read", "total"))
            defaults = Timeouts()
            timeouts = Timeouts(
                connect=self.number(tmap, "connect", f"{here}.timeouts", defaults.connect),
                first_byte=self.number(tmap, "first_byte", f"{here}.timeouts", defaults.first_byte),
                read=self.number(tmap, "read", f"{here}.timeouts", defaults.read),
                total=self.number(tmap, "total", f"{here}.timeouts", defaults.total),
            )
            max_concurrency = None
            if spec.get("max_concurrency") is not None:
                max_concurrency = int(self.number(spec, "max_concurrency", here, 1, integer=True))
            max_tokens = None
            if "max_tokens" in spec:
                max_tokens = int(self.number(spec, "max_tokens", here, 4096, integer=True))
            responses = spec.get("responses", "translate")
            if responses not in ("native", "translate"):
                self.error(f"{here}.responses", f"must be 'native' or 'translate', got {responses!r}")
            elif responses == "native" and kind not in (None, "openai"):
                self.error(f"{here}.responses", "'native' is for kind openai (servers that speak the Responses API)")
            yield (
                str(name),
                Provider(
                    name=str(name),
                    kind=kind or "openai",
                    base_url=base_url.rstrip("/"),
                    api_key=api_key,
                    api_key_env=api_key_env,
                    headers=headers,
                    timeouts=timeouts,
                    max_tokens=max_tokens,
                    api_keys=api_keys,
                    max_concurrency=max_concurrency,
                    queue_timeout=self.number(spec, "queue_timeout", here, 10.0, zero=True),
                    responses="native" if responses == "native" else "translate",
                ),
            )

    def api_keys(self, spec: dict[str, Any], here: str) -> tuple[tuple[str, ...], str | None]:
        """The provider's usable keys, and the first unset variable (for the 503 message)."""
        if "api_key" in spec and "api_keys" in spec:
            self.error(here, "give 'api_key' or 'api_keys', not both")
        raw = spec.get("api_keys", [spec["api_key"]] if spec.get("api_key") is not None else [])
        if not isinstance(raw, list):
            self.error(f"{here}.api_keys", f"must be a list, got {_kind(raw)}")
            return (), None
        keys: list[str] = []
        first_unset: str | None = None
        for j, item in enumerate(raw):
            where = f"{here}.api_keys[{j}]" if "api_keys" in spec else f"{here}.api_key"
            if not isinstance(item, str) or not item:
                self.error(where, f"must be a non-empty string, got {_kind(item)}")
                continue
            value, unset = self.expand(item, where)
            if value is None:
                first_unset = first_unset or unset
                consequence = "this key is skipped" if len(raw) > 1 else "requests to this provider will answer 503"
                self.warnings.append(f"{where}: environment variable {unset} is not set; {consequence}")
            else:
                keys.append(value)
        return tuple(keys), first_unset

    def headers(self, raw: Any, where: str) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.error(where, f"must be a mapping of header names to values, got {_kind(raw)}")
            return {}
        out: dict[str, str] = {}
        for name, value in raw.items():
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                self.error(f"{where}.{name}", "must be a string")
                continue
            expanded, unset = self.expand(str(value), f"{where}.{name}")
            if expanded is None:
                self.error(f"{where}.{name}", f"environment variable {unset} is not set")
                continue
            out[str(name)] = expanded
        return out

    def models(self, raw: Any, providers: dict[str, Provider]) -> dict[str, Model]:
        out: dict[str, Model] = {}
        first_seen: dict[str, int] = {}
        if raw is None:
            self.error("models", "required: at least one model")
            return out
        if not isinstance(raw, list):
            self.error("models", f"must be a list, got {_kind(raw)}")
            return out
        for i, spec in enumerate(raw):
            here = f"models[{i}]"
            spec = self.mapping(
                spec, here, ("id", "provider", "upstream", "owned_by", "created", "max_tokens", "deployments")
            )
            model_id = self.string(spec, "id", here, required=True)
            deployments = self.deployments(spec, here, providers, model_id or "")
            provider = deployments[0].provider if deployments else None
            if model_id is None:
                continue
            if model_id in first_seen:
                self.error(f"{here}.id", f"duplicate model id {model_id!r} (first at models[{first_seen[model_id]}])")
                continue
            first_seen[model_id] = i
            max_tokens = None
            if "max_tokens" in spec:
                max_tokens = int(self.number(spec, "max_tokens", here, 4096, integer=True))
            created = int(self.number(spec, "created", here, self.created or 1, integer=True))
            out[model_id] = Model(
                id=model_id,
                provider=provider or "",
                upstream=deployments[0].upstream if deployments else model_id,
                owned_by=self.string(spec, "owned_by", here) or (provider or "gateway"),
                created=created,
                max_tokens=max_tokens,
                deployments=tuple(deployments),
            )
        return out

    def deployments(
        self, spec: dict[str, Any], here: str, providers: dict[str, Provider], model_id: str
    ) -> list[Deployment]:
        """`provider` + `upstream` is shorthand for a single deployment."""
        if "deployments" in spec:
            if "provider" in spec or "upstream" in spec:
                self.error(here, "give either 'provider' (and 'upstream') or 'deployments', not both")
            raw = spec["deployments"]
            if not isinstance(raw, list) or not raw:
                self.error(f"{here}.deployments", "must be a non-empty list")
                return []
        else:
            raw = [{"provider": spec.get("provider"), "upstream": spec.get("upstream")}]
        out = []
        for j, item in enumerate(raw):
            where = f"{here}.deployments[{j}]" if "deployments" in spec else here
            item = self.mapping(item, where, ("provider", "upstream", "weight", "priority"))
            provider = self.string(item, "provider", where, required=True)
            if provider is not None and provider not in providers:
                self.error(f"{where}.provider", f"unknown provider {provider!r}")
                provider = None
            weight = self.number(item, "weight", where, 1.0)
            priority = int(self.number(item, "priority", where, 0, integer=True, zero=True))
            if provider is not None:
                upstream = self.string(item, "upstream", where) or model_id
                out.append(Deployment(provider=provider, upstream=upstream, weight=weight, priority=priority))
        return out

    def tiers(self, raw: Any, models: dict[str, Model]) -> dict[str, Tier]:
        if raw is None:
            self.error("tiers", "required: at least one tier")
            return {}
        section = self.mapping(raw, "tiers", tuple(raw) if isinstance(raw, dict) else ())
        own: dict[str, list[str]] = {}
        own_limits: dict[str, Limits] = {}
        parent: dict[str, str] = {}
        for name, spec in section.items():
            here = f"tiers.{name}"
            spec = self.mapping(spec, here, ("models", "extends", "limits"))
            own_limits[str(name)] = self.limits(spec.get("limits"), f"{here}.limits")
            listed = spec.get("models", [])
            if not isinstance(listed, list):
                self.error(f"{here}.models", f"must be a list of model ids, got {_kind(listed)}")
                listed = []
            for j, model_id in enumerate(listed):
                if model_id not in models:
                    self.error(f"{here}.models[{j}]", f"unknown model {model_id!r}")
            own[str(name)] = [m for m in listed if m in models]
            ext = spec.get("extends")
            if ext is not None:
                if ext not in section:
                    self.error(f"{here}.extends", f"tier {ext!r} is not defined")
                else:
                    parent[str(name)] = str(ext)

        tiers: dict[str, Tier] = {}
        for name in own:
            chain = [name]
            while chain[-1] in parent:
                nxt = parent[chain[-1]]
                if nxt in chain:
                    cycle = " -> ".join([*chain[chain.index(nxt) :], nxt])
                    self.error(f"tiers.{name}.extends", f"cycle: {cycle}")
                    break
                chain.append(nxt)
            allowed = frozenset(m for t in chain for m in own[t])
            limits = Limits()
            for t in reversed(chain):  # the root first; each child replaces what it sets
                limits = own_limits[t].over(limits)
            tiers[name] = Tier(name=name, models=allowed, limits=limits)
        return tiers

    def limits(self, raw: Any, where: str) -> Limits:
        spec = self.mapping(raw, where, LIMIT_FIELDS)
        values: dict[str, int | None] = {}
        for name in LIMIT_FIELDS:
            value = spec.get(name)
            if value is None:
                values[name] = None
            elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                self.error(f"{where}.{name}", f"must be a positive integer, got {value!r}")
                values[name] = None
            else:
                values[name] = value
        return Limits(**values)

    def keys(self, raw: Any, tiers: dict[str, Tier]) -> dict[str, ApiKey]:
        out: dict[str, ApiKey] = {}
        where_of: dict[str, str] = {}
        names: dict[str, int] = {}
        if raw is None:
            self.warnings.append("keys: none configured; every request will answer 401")
            return out
        if not isinstance(raw, list):
            self.error("keys", f"must be a list, got {_kind(raw)}")
            return out
        for i, spec in enumerate(raw):
            here = f"keys[{i}]"
            spec = self.mapping(spec, here, ("name", "key", "key_sha256", "tier", "limits"))
            own_limits = self.limits(spec.get("limits"), f"{here}.limits")
            name = self.string(spec, "name", here, required=True)
            tier = self.string(spec, "tier", here, required=True)
            if tier is not None and tier not in tiers:
                self.error(here, f"tier {tier!r} is not defined")
            if name is not None:
                if name in names:
                    self.error(f"{here}.name", f"duplicate key name {name!r} (first at keys[{names[name]}])")
                names[name] = i
            has_plain, has_hash = "key" in spec, "key_sha256" in spec
            if has_plain == has_hash:
                self.error(here, "give exactly one of 'key' or 'key_sha256'")
                continue
            digest: str | None = None
            if has_plain:
                plain = self.string(spec, "key", here)
                if plain is None:
                    continue
                value, unset = self.expand(plain, f"{here}.key")
                if value is None:
                    self.warnings.append(
                        f"{here}.key: environment variable {unset} is not set; key {name!r} is disabled"
                    )
                    continue
                digest = hash_key(value)
            else:
                hashed = self.string(spec, "key_sha256", here)
                if hashed is None:
                    continue
                hashed = hashed.lower()
                if not _SHA256_HEX.match(hashed):
                    self.error(f"{here}.key_sha256", "must be 64 hexadecimal characters (sha256 of the key)")
                    continue
                digest = hashed
            if digest in where_of:
                self.error(here, f"duplicate key: same secret as {where_of[digest]}")
                continue
            where_of[digest] = here
            if name is not None and tier is not None:
                base = tiers[tier].limits if tier in tiers else Limits()
                out[digest] = ApiKey(name=name, key_sha256=digest, tier=tier, limits=own_limits.over(base))
        return out


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "nothing"
    return kinds.get(type(value), type(value).__name__)
