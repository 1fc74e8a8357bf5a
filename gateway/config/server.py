"""The process-wide sections: `database`, `state`, the `server.*` connection limits
and `routing`."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Final

from gateway.config import database as sqlite_path
from gateway.config.model import Config, Routing, State
from gateway.config.reader import FieldReader

_CONFIG_DEFAULTS: Final = {f.name: f.default for f in fields(Config)}


class ServerSections(FieldReader):
    def database(self, raw: Any) -> str:
        """An SQLite file path, or a `postgresql://` URL (`${VAR}` allowed: it holds a password)."""
        if not isinstance(raw, str) or not raw:
            self.error("database", "must be a file path or a postgresql:// URL")
            return "data/gateway.db"
        value, unset = self.expand(raw, "database")
        if value is None:
            self.error("database", f"environment variable {unset} is not set")
            return "data/gateway.db"
        if self.folder is None:  # a document built in code: nothing on disk to check
            return value
        value = sqlite_path.resolve(value, self.folder)
        error, note = sqlite_path.folder_problem(value)
        if error is None and self.probe_database:
            error = sqlite_path.file_problem(value)
        if error is not None:
            self.error("database", error)
        if note is not None:
            self.warn("database", note)
        return value

    def spill_dir(self, raw: Any) -> str | None:
        """`usage_spill_dir`: a folder, relative to the configuration file's like `database`;
        unset, `data/` beside the configuration file (from a file) or in the working directory."""
        if raw is None:
            return str(self.folder / "data") if self.folder is not None else None
        if not isinstance(raw, str) or not raw:
            self.error("usage_spill_dir", "must be a folder path")
            return None
        value, unset = self.expand(raw, "usage_spill_dir")
        if value is None:
            self.error("usage_spill_dir", f"environment variable {unset} is not set")
            return None
        return str(self.folder / value) if self.folder is not None else value

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
