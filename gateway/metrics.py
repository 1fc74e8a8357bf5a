"""Prometheus metrics, fed from each finished usage record; served at `GET /metrics`.

Each app has its own registry (no process-global state); prometheus_client
writes the text exposition from our counters when scraped.  Access: with
`metrics.admin_key` in the YAML, `Authorization: Bearer <admin key>` is required;
without it, only loopback callers are served (bind the gateway publicly and scrape
through a local agent, or set a key)."""

from __future__ import annotations

import hmac
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Container, Iterator, Mapping
from ipaddress import ip_address

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.config import hash_key
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.usage import UsageRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LIMIT_CODES = frozenset({"rate_limit_exceeded", "insufficient_quota", "context_too_large"})

Labels = tuple[str, ...]
OTHER_MODEL = "(other)"  # every model name that is not configured: one label, whatever clients send


class _Histogram:
    """Counts per bucket (not cumulative until exposed) and the sum of what was observed."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*map(str, _LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Metrics:
    """Plain counters per label tuple, turned into Prometheus families only when scraped.

    prometheus_client's own metric objects take a lock and validate labels on every
    update; per request that was several percent of the gateway's time (scripts/bench).
    Updates here are dict increments on the event loop (one thread: no lock needed)."""

    def __init__(self) -> None:
        self.requests: defaultdict[Labels, int] = defaultdict(int)  # model, provider, status
        self.latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)  # by model
        self.ttft: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.tokens: defaultdict[Labels, int] = defaultdict(int)  # tier, direction
        self.rejections: defaultdict[Labels, int] = defaultdict(int)  # tier, reason
        self.upstream_errors: defaultdict[Labels, int] = defaultdict(int)  # provider, status
        self.retries: defaultdict[str, int] = defaultdict(int)  # by model
        self.inflight_streams = _Gauge()
        self.usage_log: Mapping[str, int] = {}  # the usage store's counters, taken at each scrape
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    def observe(self, record: UsageRecord, known_models: Container[str]) -> None:
        """Count one finished call.  Every label comes from the configuration (models,
        providers, tiers) or from a small fixed set (statuses, reasons): a client
        choosing its `model` string must not be able to grow the label sets."""
        model = record.model if record.model in known_models else OTHER_MODEL
        self.requests[(model, record.provider or "-", str(record.status))] += 1
        if record.latency_ms is not None:
            self.latency[model].observe(record.latency_ms / 1000)
        if record.ttfb_ms is not None:
            self.ttft[model].observe(record.ttfb_ms / 1000)
        tier = record.tier or "-"
        if record.prompt_tokens:
            self.tokens[(tier, "in")] += record.prompt_tokens
        if record.completion_tokens:
            self.tokens[(tier, "out")] += record.completion_tokens
        if record.status == 429 and record.error_code in _LIMIT_CODES and not record.attempts:
            self.rejections[(tier, record.error_code)] += 1
        if not record.attempts or (" " not in record.attempts and record.status < 400):
            return  # one attempt that succeeded: no retries, no upstream error
        attempts = record.attempts.split()
        if len(attempts) > 1:
            self.retries[model] += len(attempts) - 1
        for attempt in attempts:
            label, _, status = attempt.rpartition("=")
            if status.isdigit() and int(status) >= 400:
                self.upstream_errors[(label.split("/", 1)[0], status)] += 1

    def set_usage_log(self, stats: Mapping[str, int]) -> None:
        self.usage_log = dict(stats)

    def exposition(self) -> bytes:
        """The text exposition; thread-safe enough to run off the event loop (each
        family copies its dict in one C call; a count read mid-update is off by one)."""
        return generate_latest(self.registry)


class _Gauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter("gateway_requests", "API calls by model, provider and status", ("model", "provider", "status"),
                       m.requests)  # fmt: skip
        yield _histogram("gateway_request_latency_seconds", "Whole-call latency", m.latency)
        yield _histogram(
            "gateway_time_to_first_token_seconds", "Time until the first byte of the answer went out", m.ttft
        )
        yield _counter("gateway_tokens", "Tokens by tier and direction", ("tier", "direction"), m.tokens)
        yield _counter("gateway_limit_rejections", "Calls refused by a tier or key limit", ("tier", "reason"),
                       m.rejections)  # fmt: skip
        yield _counter("gateway_upstream_errors", "Failed upstream attempts", ("provider", "status"),
                       m.upstream_errors)  # fmt: skip
        yield _counter("gateway_retries", "Upstream attempts beyond the first", ("model",),
                       {(k,): v for k, v in m.retries.items()})  # fmt: skip
        gauge = GaugeMetricFamily("gateway_inflight_streams", "Streams being written now")
        gauge.add_metric([], m.inflight_streams.value)
        yield gauge
        yield from _usage_log_families(m.usage_log)


def _counter(name: str, doc: str, labels: Labels, values: dict[Labels, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in list(values.items()):
        family.add_metric(key, value)
    return family


def _histogram(name: str, doc: str, values: dict[str, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=("model",))
    for model, hist in list(values.items()):
        family.add_metric([model], hist.cumulative(), hist.total)
    return family


_USAGE_LOG_GAUGES = {
    "queue_depth": ("gateway_usage_log_queue_depth", "Usage rows waiting in memory to be written"),
    "spilled_pending": ("gateway_usage_log_spilled_rows", "Usage rows in spill files, waiting to be replayed"),
}
_USAGE_LOG_COUNTERS = {
    "rows_written_total": ("gateway_usage_log_rows_written", "Usage rows written to the database"),
    "write_failures_total": ("gateway_usage_log_write_failures", "Failed writes to the usage database"),
    "rows_dropped_total": ("gateway_usage_log_rows_dropped", "Usage rows lost: neither the database nor the spill "
                           "file could take them"),
}  # fmt: skip


def _usage_log_families(stats: Mapping[str, int]) -> Iterator[Metric]:
    for key, (name, doc) in _USAGE_LOG_GAUGES.items():
        if key in stats:
            yield GaugeMetricFamily(name, doc, value=stats[key])
    for key, (name, doc) in _USAGE_LOG_COUNTERS.items():
        if key in stats:
            yield CounterMetricFamily(name, doc, value=stats[key])


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
