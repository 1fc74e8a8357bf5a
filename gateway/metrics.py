"""Prometheus metrics, fed from each finished usage record; served at `GET /metrics`.

Each app has its own counters (no process-global registry); prometheus_client
writes the text exposition from them when scraped.  Access: with
`metrics.admin_key` in the YAML, `Authorization: Bearer <admin key>` is required;
without it, only loopback callers are served (bind the gateway publicly and scrape
through a local agent, or set a key).

With `server.workers: N`, one scrape shows the sum over every worker: see
gateway/metrics_shared.py."""

from __future__ import annotations

import hmac
import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Container, Iterator, Mapping
from ipaddress import ip_address
from typing import Final

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.config import hash_key
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.metrics_shared import (  # re-exported: workers.py and the tests import them from here
    RETIRED,
    SNAPSHOT_EVERY,
    Counts,
    Hist,
    Labels,
    WorkerSnapshots,
    join_workers,
    read_others,
    retire,
    this_worker,
)
from gateway.usage import UsageRecord

__all__ = ["RETIRED", "SNAPSHOT_EVERY", "Counts", "Metrics", "WorkerSnapshots", "join_workers", "read_others", "retire"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LIMIT_CODES = frozenset({"rate_limit_exceeded", "insufficient_quota", "context_too_large"})

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
        self._usage_stats: Callable[[], Mapping[str, int]] | None = None
        self._limiter: object | None = None
        # with `server.workers: N`: this worker's snapshot file (see the module's docstring)
        self.shared: WorkerSnapshots | None = this_worker()
        if self.shared is not None:
            self.shared.metrics = self

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

    def watch(self, usage_stats: Callable[[], Mapping[str, int]] | None = None, limiter: object | None = None) -> None:
        """Sources read at each snapshot and scrape (not per request): the usage store's
        `stats`, and the limiter, whose `errors_total` / `open_admissions_total` are
        exposed when it has them (the Redis limiter)."""
        if usage_stats is not None:
            self._usage_stats = usage_stats
        if limiter is not None:
            self._limiter = limiter

    def counts(self) -> Counts:
        """A copy of this process's numbers.  Safe off the event loop, as the exposition
        always was: each dict is copied in one C call under the GIL (a count read
        mid-update is off by one, and the next copy has it)."""
        c = Counts(
            requests=dict(self.requests), tokens=dict(self.tokens), rejections=dict(self.rejections),
            upstream_errors=dict(self.upstream_errors), retries=dict(self.retries),
            latency={k: (list(h.counts), h.total) for k, h in list(self.latency.items())},
            ttft={k: (list(h.counts), h.total) for k, h in list(self.ttft.items())},
            gauges={"inflight_streams": self.inflight_streams.value},
        )  # fmt: skip
        usage = self._usage_stats() if self._usage_stats is not None else {}
        for key in _USAGE_LOG_GAUGES:
            if key in usage:
                c.gauges[key] = usage[key]
        for key in _USAGE_LOG_COUNTERS:
            if key in usage:
                c.counters[key] = usage[key]
        for key in _LIMITER_COUNTERS:
            value = getattr(self._limiter, key, None)
            if isinstance(value, int):
                c.counters["limiter_" + key] = value
        return c

    def exposition(self) -> bytes:
        """The text exposition; blocking (file I/O with workers): run it off the event loop."""
        shared = self.shared
        if shared is None:
            return generate_latest(_Render(self.counts()))
        return generate_latest(_Render(shared.merged(self)))


class _Gauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


# -- rendering ---------------------------------------------------------------------------


class _Render(Collector):
    """The families of one `Counts` (generate_latest takes any collector)."""

    def __init__(self, counts: Counts) -> None:
        self.c = counts

    def collect(self) -> Iterator[Metric]:
        c = self.c
        yield _counter("gateway_requests", "API calls by model, provider and status", ("model", "provider", "status"),
                       c.requests)  # fmt: skip
        yield _histogram("gateway_request_latency_seconds", "Whole-call latency", c.latency)
        yield _histogram(
            "gateway_time_to_first_token_seconds", "Time until the first byte of the answer went out", c.ttft
        )
        yield _counter("gateway_tokens", "Tokens by tier and direction", ("tier", "direction"), c.tokens)
        yield _counter("gateway_limit_rejections", "Calls refused by a tier or key limit", ("tier", "reason"),
                       c.rejections)  # fmt: skip
        yield _counter("gateway_upstream_errors", "Failed upstream attempts", ("provider", "status"),
                       c.upstream_errors)  # fmt: skip
        yield _counter("gateway_retries", "Upstream attempts beyond the first", ("model",),
                       {(k,): v for k, v in c.retries.items()})  # fmt: skip
        yield GaugeMetricFamily("gateway_inflight_streams", "Streams being written now",
                                value=c.gauges.get("inflight_streams", 0))  # fmt: skip
        for key, (name, doc) in _USAGE_LOG_GAUGES.items():
            if key in c.gauges:
                yield GaugeMetricFamily(name, doc, value=c.gauges[key])
        for key, (name, doc) in _USAGE_LOG_COUNTERS.items():
            if key in c.counters:
                yield CounterMetricFamily(name, doc, value=c.counters[key])
        for key, (name, doc) in _LIMITER_COUNTERS.items():
            if "limiter_" + key in c.counters:
                yield CounterMetricFamily(name, doc, value=c.counters["limiter_" + key])


def _counter(name: str, doc: str, labels: Labels, values: dict[Labels, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family


def _histogram(name: str, doc: str, values: dict[str, Hist]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=("model",))
    bounds = (*map(str, _LATENCY_BUCKETS), "+Inf")
    for model, (counts, total) in values.items():
        cumulative, running = [], 0
        for bound, n in zip(bounds, counts, strict=True):
            running += n
            cumulative.append((bound, running))
        family.add_metric([model], cumulative, total)
    return family


_USAGE_LOG_GAUGES: Final = {
    "queue_depth": ("gateway_usage_log_queue_depth", "Usage rows waiting in memory to be written"),
    "spilled_pending": ("gateway_usage_log_spilled_rows", "Usage rows in spill files, waiting to be replayed"),
}
_USAGE_LOG_COUNTERS: Final = {
    "rows_written_total": ("gateway_usage_log_rows_written", "Usage rows written to the database"),
    "write_failures_total": ("gateway_usage_log_write_failures", "Failed writes to the usage database"),
    "rows_dropped_total": ("gateway_usage_log_rows_dropped", "Usage rows lost: neither the database nor the spill "
                           "file could take them"),
}  # fmt: skip
# the Redis limiter's attributes (gateway/limits_redis.py); absent for the in-process one
_LIMITER_COUNTERS: Final = {
    "errors_total": ("gateway_redis_limiter_errors", "Redis calls of the tier limiter that failed or timed out"),
    "open_admissions_total": ("gateway_redis_limiter_open_admissions",
                              "Requests admitted uncounted because Redis failed (state.on_error: open)"),
}  # fmt: skip


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
