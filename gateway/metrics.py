"""Prometheus metrics, fed from each finished usage record; served at `GET /metrics`.

Each app has its own registry (no process-global state), built with the
prometheus_client library, which also writes the text exposition.  Access: with
`metrics.admin_key` in the YAML, `Authorization: Bearer <admin key>` is required;
without it, only loopback callers are served (bind the gateway publicly and scrape
through a local agent, or set a key)."""

from __future__ import annotations

import hmac
from ipaddress import ip_address
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

from gateway.config import hash_key
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.usage import UsageRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LIMIT_CODES = frozenset({"rate_limit_exceeded", "insufficient_quota", "context_too_large"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "API calls by model, provider and status", ["model", "provider", "status"], registry=r
        )
        self.latency = Histogram(
            "gateway_request_latency_seconds", "Whole-call latency", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time until the first byte of the answer went out",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("gateway_tokens", "Tokens by tier and direction", ["tier", "direction"], registry=r)
        self.rejections = Counter(
            "gateway_limit_rejections", "Calls refused by a tier or key limit", ["tier", "reason"], registry=r
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failed upstream attempts", ["provider", "status"], registry=r
        )
        self.retries = Counter("gateway_retries", "Upstream attempts beyond the first", ["model"], registry=r)
        self.inflight_streams = Gauge("gateway_inflight_streams", "Streams being written now", registry=r)

        # labelled children by (metric, labels): `labels()` validates and locks on every
        # call, which was most of observe()'s cost in the profile (scripts/bench)
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: UsageRecord) -> None:
        model = record.model or "-"
        child = self._child
        child(self.requests, model, record.provider or "-", str(record.status)).inc()
        if record.latency_ms is not None:
            child(self.latency, model).observe(record.latency_ms / 1000)
        if record.ttfb_ms is not None:
            child(self.ttft, model).observe(record.ttfb_ms / 1000)
        tier = record.tier or "-"
        if record.prompt_tokens:
            child(self.tokens, tier, "in").inc(record.prompt_tokens)
        if record.completion_tokens:
            child(self.tokens, tier, "out").inc(record.completion_tokens)
        if record.status == 429 and record.error_code in _LIMIT_CODES and not record.attempts:
            child(self.rejections, tier, record.error_code).inc()
        if not record.attempts or (" " not in record.attempts and record.status < 400):
            return  # one attempt that succeeded: no retries, no upstream error
        attempts = record.attempts.split()
        if len(attempts) > 1:
            child(self.retries, model).inc(len(attempts) - 1)
        for attempt in attempts:
            label, _, status = attempt.rpartition("=")
            if status.isdigit() and int(status) >= 400:
                child(self.upstream_errors, label.split("/", 1)[0], status).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def check_access(request: web.Request, key_sha256: str | None) -> None:
    if key_sha256 is None:
        remote = request.remote or ""
        try:
            loopback = ip_address(remote).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise PermissionDenied("/metrics is served to loopback callers only (or set metrics.admin_key).")
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(hash_key(presented.strip()), key_sha256):
        raise AuthenticationFailed("/metrics needs the admin key: 'Authorization: Bearer <metrics.admin_key>'.")


CONTENT_TYPE = CONTENT_TYPE_LATEST
