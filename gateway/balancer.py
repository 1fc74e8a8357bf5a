"""Which upstream serves a call: deployments, keys, cool-downs and per-provider capacity.

A model has one or more deployments (provider + upstream name, weight, priority),
and a provider one or more keys; each (deployment, key) pair is a `Target`, built
once per configuration.  `plan(model)` orders a model's targets for one call:
lowest priority number first, deployments of equal priority in weighted-random
order, the keys of a deployment round-robin, and targets cooling down after
repeated failures moved to the back (never dropped: a cooled target beats none).

Cool-downs are read from this process's memory, so `plan` stays synchronous and
cheap.  With several processes (`state.redis`), a `CooldownSink` set as `shared`
hears of each cool-down this process starts and tells the others; cool-downs the
others started come back through `adopt_cooldown` (gateway/cooldowns_redis.py).
Without one, nothing of this runs.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from gateway.config import Config, Model, Provider, Routing
from gateway.errors import ServiceUnavailable
from gateway.providers import ADAPTERS
from gateway.providers.base import Adapter, Route


@dataclass(frozen=True, slots=True)
class Target:
    route: Route  # the model as this deployment names it, and the provider with this key
    adapter: Adapter
    label: str  # "provider/upstream" (+ "#key" when the provider has several): safe to log and show
    deployment: int  # index among the model's deployments
    weight: float
    priority: int


@dataclass(slots=True)
class _Health:
    failures: int = 0
    cool_until: float = 0.0


class CooldownSink(Protocol):
    def publish(self, label: str, seconds: float) -> None:
        """This process benched `label` for `seconds` (must not block: `failed` is synchronous)."""
        ...


class Balancer:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.routing: Routing = config.routing
        self.clock = clock
        self.shared: CooldownSink | None = None  # other processes to tell of cool-downs (state.redis)
        # model id -> priority groups, lowest number first -> deployments -> their keys
        self._groups: dict[str, list[list[list[Target]]]] = {}
        self._health: dict[str, _Health] = {}
        self._turn = itertools.count()
        self._gates = {name: _Gate(p) for name, p in config.providers.items() if p.max_concurrency}
        for model in config.models.values():
            per_deployment = [
                self._keyed_targets(config.providers[d.provider], model, i)
                for i, d in enumerate(model.deployments or ())
            ]
            priorities = sorted({keys[0].priority for keys in per_deployment})
            self._groups[model.id] = [[k for k in per_deployment if k[0].priority == p] for p in priorities]
        # every target label, once: what a shared cool-down state is asked about
        self.labels: tuple[str, ...] = tuple(
            dict.fromkeys(t.label for groups in self._groups.values() for g in groups for keys in g for t in keys)
        )

    @staticmethod
    def _keyed_targets(provider: Provider, model: Model, index: int) -> list[Target]:
        dep = model.deployments[index]
        routed = replace(model, provider=dep.provider, upstream=dep.upstream)
        keys: tuple[str | None, ...] = provider.api_keys or (None,)
        kind = ADAPTERS.get(provider.kind)
        out = []
        for k, key in enumerate(keys):
            keyed = replace(provider, api_key=key)
            label = f"{provider.name}/{dep.upstream}" + (f"#{k}" if len(keys) > 1 else "")
            adapter = kind(keyed) if kind else None
            out.append(Target(Route(routed, keyed), adapter, label, index, dep.weight, dep.priority))  # type: ignore[arg-type]
        return out

    def plan(self, model_id: str) -> list[Target]:
        turn = next(self._turn)
        ordered: list[Target] = []
        for group in self._groups[model_id]:
            if len(group) > 1:  # weighted random order without replacement (Efraimidis-Spirakis keys)
                group = sorted(group, key=lambda keys: random.random() ** (1.0 / keys[0].weight), reverse=True)
            for keys in group:
                if len(keys) == 1:
                    ordered.append(keys[0])
                else:
                    start = turn % len(keys)
                    ordered.extend(keys[start:] + keys[:start])
        if not self._health:  # nothing has ever failed: no cool-downs to look up
            return ordered
        now = self.clock()
        healthy = [t for t in ordered if self._health.get(t.label, _Health()).cool_until <= now]
        cooling = [t for t in ordered if t not in healthy]
        return healthy + cooling

    def succeeded(self, target: Target) -> None:
        health = self._health.get(target.label)
        if health is not None:
            health.failures = 0

    def failed(self, target: Target, retry_after: float | None = None) -> None:
        health = self._health.setdefault(target.label, _Health())
        health.failures += 1
        now = self.clock()
        before = health.cool_until
        if retry_after:
            health.cool_until = max(health.cool_until, now + min(retry_after, self.routing.max_retry_after))
        if health.failures >= self.routing.failures_before_cooldown:
            health.cool_until = max(health.cool_until, now + self.routing.cooldown)
            health.failures = 0
        if self.shared is not None and health.cool_until > before:
            self.shared.publish(target.label, health.cool_until - now)

    def adopt_cooldown(self, label: str, seconds: float) -> None:
        """Another process benched `label` for `seconds` more: bench it here too (never
        shortening a cool-down of ours, never publishing it back)."""
        health = self._health.setdefault(label, _Health())
        health.cool_until = max(health.cool_until, self.clock() + seconds)

    def cooling(self, target: Target) -> bool:
        return self._health.get(target.label, _Health()).cool_until > self.clock()

    @asynccontextmanager
    async def slot(self, target: Target) -> AsyncIterator[None]:
        """Hold one of the provider's concurrency slots for the whole upstream call."""
        gate = self._gates.get(target.route.provider.name)
        if gate is None:
            yield
            return
        async with gate.hold():
            yield


class _Gate:
    """At most `max_concurrency` calls in flight; others queue up to `queue_timeout`, then 503."""

    def __init__(self, provider: Provider) -> None:
        assert provider.max_concurrency
        self.provider = provider
        self._sem = asyncio.Semaphore(provider.max_concurrency)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.provider.queue_timeout):
                await self._sem.acquire()
        except TimeoutError:
            raise ServiceUnavailable(
                f"The {self.provider.name} provider is at its concurrency limit; retry shortly.",
                code="provider_busy",
                headers={"Retry-After": "1"},
                retryable=True,
            ) from None
        try:
            yield
        finally:
            self._sem.release()
