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
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    provider: str
    upstream: str  # the name sent to the provider
    owned_by: str
    created: int
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    models: frozenset[str]  # parents' models included


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key_sha256: str
    tier: str


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

    def number(self, obj: dict[str, Any], key: str, where: str, default: float, *, integer: bool = False) -> float:
        value = obj.get(key, default)
        if isinstance(value, str):
            try:
                value = float(value) if not integer else int(value)
            except ValueError:
                pass
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or value <= 0:
            kind = "a positive integer" if integer else "a positive number"
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
        top = self.mapping(raw, "(top level)", ("server", "database", "providers", "models", "tiers", "keys"))
        if raw is None:
            self.error("(top level)", "the file is empty")
        server = self.mapping(top.get("server"), "server", ("host", "port", "max_body_bytes"))
        host = self.string(server, "host", "server") or "127.0.0.1"
        port = int(self.number(server, "port", "server", 8080, integer=True))
        max_body = int(self.number(server, "max_body_bytes", "server", 32 * 1024 * 1024, integer=True))
        database = top.get("database", "data/gateway.db")
        if not isinstance(database, str) or not database:
            self.error("database", "must be a file path")
            database = "data/gateway.db"

        providers = dict(self.providers(top.get("providers")))
        models = self.models(top.get("models"), providers)
        tiers = self.tiers(top.get("tiers"), models)
        keys = self.keys(top.get("keys"), tiers)
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
        )

    def providers(self, raw: Any) -> Iterator[tuple[str, Provider]]:
        where = "providers"
        if raw is None:
            self.error(where, "required: at least one provider")
            return
        section = self.mapping(raw, where, tuple(raw) if isinstance(raw, dict) else ())
        allowed = ("kind", "base_url", "api_key", "headers", "timeouts", "max_tokens")
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
            api_key, api_key_env = None, None
            raw_key = self.string(spec, "api_key", here)
            if raw_key is not None:
                api_key, api_key_env = self.expand(raw_key, f"{here}.api_key")
                if api_key is None:
                    self.warnings.append(
                        f"{here}.api_key: environment variable {api_key_env} is not set; "
                        f"requests to this provider will answer 503 until it is"
                    )
            headers = self.headers(spec.get("headers"), f"{here}.headers")
            tmap = self.mapping(spec.get("timeouts"), f"{here}.timeouts", ("connect", "read", "total"))
            defaults = Timeouts()
            timeouts = Timeouts(
                connect=self.number(tmap, "connect", f"{here}.timeouts", defaults.connect),
                read=self.number(tmap, "read", f"{here}.timeouts", defaults.read),
                total=self.number(tmap, "total", f"{here}.timeouts", defaults.total),
            )
            max_tokens = None
            if "max_tokens" in spec:
                max_tokens = int(self.number(spec, "max_tokens", here, 4096, integer=True))
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
                ),
            )

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
            spec = self.mapping(spec, here, ("id", "provider", "upstream", "owned_by", "created", "max_tokens"))
            model_id = self.string(spec, "id", here, required=True)
            provider = self.string(spec, "provider", here, required=True)
            if provider is not None and provider not in providers:
                self.error(f"{here}.provider", f"unknown provider {provider!r}")
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
                upstream=self.string(spec, "upstream", here) or model_id,
                owned_by=self.string(spec, "owned_by", here) or (provider or "gateway"),
                created=created,
                max_tokens=max_tokens,
            )
        return out

    def tiers(self, raw: Any, models: dict[str, Model]) -> dict[str, Tier]:
        if raw is None:
            self.error("tiers", "required: at least one tier")
            return {}
        section = self.mapping(raw, "tiers", tuple(raw) if isinstance(raw, dict) else ())
        own: dict[str, list[str]] = {}
        parent: dict[str, str] = {}
        for name, spec in section.items():
            here = f"tiers.{name}"
            spec = self.mapping(spec, here, ("models", "extends"))
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
            tiers[name] = Tier(name=name, models=allowed)
        return tiers

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
            spec = self.mapping(spec, here, ("name", "key", "key_sha256", "tier"))
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
                out[digest] = ApiKey(name=name, key_sha256=digest, tier=tier)
        return out


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "nothing"
    return kinds.get(type(value), type(value).__name__)
