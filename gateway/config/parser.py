"""The whole document: the top-level fields, each section read by its mixin."""

from __future__ import annotations

from typing import Any

from gateway.config.access import AccessSections
from gateway.config.model import SERVER_FIELDS, Config, ConfigError, Limits, hash_key
from gateway.config.providers import ProviderSections
from gateway.config.server import ServerSections


class Parser(ServerSections, ProviderSections, AccessSections):
    def parse(self, raw: Any) -> Config:
        top = self.mapping(
            raw,
            "(top level)",
            (
                "server",
                "database",
                "providers",
                "models",
                "tiers",
                "keys",
                "routing",
                "metrics",
                "responses",
                "state",
                "usage_spill_dir",
            ),  # fmt: skip
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
        if port > 65535:  # the kernel would bind another port (the number modulo 65536) or refuse
            self.error("server.port", f"must be a port number from 1 to 65535, got {port}")
        max_body = int(self.number(server, "max_body_bytes", "server", 32 * 1024 * 1024, integer=True))
        shutdown_timeout = self.number(server, "shutdown_timeout", "server", 30.0)
        workers = int(self.number(server, "workers", "server", 1, integer=True))
        connections = self.connections(server)
        routing = self.routing(top.get("routing"))
        database = self.database(top.get("database", "data/gateway.db"))
        state = self.state(top.get("state"))
        spill_dir = self.spill_dir(top.get("usage_spill_dir"))

        providers = dict(self.providers(top.get("providers")))
        models = self.models(top.get("models"), providers)
        tiers = self.tiers(top.get("tiers"), models, self.unnamed_models)
        keys = self.keys(top.get("keys"), tiers)
        if workers > 1 and state.redis is None and any(k.limits != Limits() for k in keys.values()):
            self.warnings.append(
                f"server.workers is {workers}: tier and key limits are counted per worker process, "
                f"so a key may get up to {workers} times its limit"
            )
        if self.errors:
            raise ConfigError(self.errors_in_file_order())
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
            usage_spill_dir=spill_dir,
            **connections,
        )
