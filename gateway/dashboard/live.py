"""What the operator sees of the configuration in force and of the live routing state.

The configuration is shown by name only: providers (kind, host, how many upstream
keys are set), models and their deployments, tiers and their limits, client keys by
name and tier.  Never a key, a hash, an environment variable's value, or a URL's
credentials, path or query.

The balancer keeps its health and concurrency gates private; they are read here
without changing anything (a public read-only snapshot on `Balancer` would be the
tidier home for this, see the report of issue 16)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.balancer import Balancer
from gateway.config import Config, Limits


def _host(url: str) -> str:
    """scheme://host[:port] only: userinfo, path and query may hold secrets."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}"
    except ValueError:
        return "(unparsable URL)"


def _limits(limits: Limits) -> str:
    set_ = [f"{f}={getattr(limits, f)}" for f in ("rpm", "tpm", "concurrency", "tokens_per_month")
            if getattr(limits, f) is not None]  # fmt: skip
    return ", ".join(set_) or "unlimited"


def providers(config: Config) -> list[tuple[object, ...]]:
    return [
        (p.name, p.kind, _host(p.base_url), f"{len(p.api_keys)} set" if p.api_keys else f"unset (${p.api_key_env})",
         p.max_concurrency or "unlimited")
        for p in config.providers.values()
    ]  # fmt: skip


def models(config: Config) -> list[tuple[object, ...]]:
    rows = []
    for m in config.models.values():
        deps = m.deployments or ()
        where = "; ".join(f"{d.provider}/{d.upstream} (weight {d.weight:g}, priority {d.priority})" for d in deps)
        rows.append((m.id, where or f"{m.provider}/{m.upstream}"))
    return rows


def tiers(config: Config) -> list[tuple[object, ...]]:
    order = list(config.models)
    return [(t.name, ", ".join(sorted(t.models, key=order.index)), _limits(t.limits)) for t in config.tiers.values()]


def keys(config: Config) -> list[tuple[object, ...]]:
    return sorted((k.name, k.tier, _limits(k.limits)) for k in config.keys.values())


def deployments(balancer: Balancer) -> list[tuple[object, ...]]:
    """(target, consecutive failures, seconds of cool-down left) per target label."""
    health: dict[str, Any] = getattr(balancer, "_health", {})
    now = balancer.clock()
    rows = []
    for label in balancer.labels:
        h = health.get(label)
        left = max(0.0, h.cool_until - now) if h is not None else 0.0
        rows.append((label, h.failures if h is not None else 0, round(left, 1)))
    return rows


def provider_slots(config: Config, balancer: Balancer) -> list[tuple[object, ...]]:
    """(provider, in flight, limit, waiting) for providers with `max_concurrency`."""
    gates: dict[str, Any] = getattr(balancer, "_gates", {})
    rows = []
    for name, gate in gates.items():
        limit = config.providers[name].max_concurrency or 0
        sem = getattr(gate, "_sem", None)
        free = getattr(sem, "_value", limit)
        waiting = len(getattr(sem, "_waiters", None) or ())
        rows.append((name, limit - free, limit, waiting))
    return rows
