"""Prometheus metrics, fed from each finished usage record; served at `GET /metrics`.

Each app has its own counters (no process-global registry); prometheus_client
writes the text exposition from them when scraped.  Access: with
`metrics.admin_key` in the YAML, `Authorization: Bearer <admin key>` is required;
without it, only loopback callers are served (bind the gateway publicly and scrape
through a local agent, or set a key).

With `server.workers: N`, one scrape shows the sum over every worker.  The
supervisor makes a private directory (tmpfs when there is one) and tells each
worker its file there (`join_workers`); a worker writes a snapshot of its numbers
to that file once a second from a thread, at exit, and before answering a scrape,
and the worker answering a scrape adds every other worker's file to its own
numbers.  The hot path does not change (dict increments); the cost is one small
file write per worker a second and a few small file reads per scrape, all off the
event loop.  Files, not a socket or shared memory: a worker killed by SIGKILL
leaves its last numbers behind, a pipe to the supervisor would need a protocol
and a reader, and shared memory would need locks on the hot path.

Counters never go backwards: a dead worker's file is folded by the supervisor into
`retired.json` (counters only: a dead worker has no streams in flight and no queue),
and the numbers a scrape shows are on disk before it answers, so a SIGKILL right
after cannot make a later scrape show less.  Gauges sum over live workers only."""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.config import hash_key
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.usage import UsageRecord

log = logging.getLogger(__name__)

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
        self.shared: WorkerSnapshots | None = _WORKER
        if _WORKER is not None:
            _WORKER.metrics = self

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


Hist = tuple[list[int], float]  # counts per bucket (+Inf last), sum


@dataclass(slots=True)
class Counts:
    """One process's numbers, or a sum of several: what a scrape renders and a snapshot
    file holds."""

    requests: dict[Labels, int] = field(default_factory=dict)
    latency: dict[str, Hist] = field(default_factory=dict)
    ttft: dict[str, Hist] = field(default_factory=dict)
    tokens: dict[Labels, int] = field(default_factory=dict)
    rejections: dict[Labels, int] = field(default_factory=dict)
    upstream_errors: dict[Labels, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)  # in-flight streams, usage-log queue and spill
    counters: dict[str, int] = field(default_factory=dict)  # usage-log and limiter counters

    def add(self, other: Counts, *, gauges: bool = True) -> None:
        """Add `other` in; histograms bucket by bucket; gauges only with `gauges`."""
        for name in ("requests", "tokens", "rejections", "upstream_errors", "retries", "counters"):
            mine: dict[Any, int] = getattr(self, name)
            for key, value in getattr(other, name).items():
                mine[key] = mine.get(key, 0) + value
        for name in ("latency", "ttft"):
            hists: dict[str, Hist] = getattr(self, name)
            for model, (counts, total) in getattr(other, name).items():
                have = hists.get(model)
                if have is None:
                    hists[model] = (list(counts), total)
                elif len(have[0]) == len(counts):  # other bucket bounds (another version): not summable
                    hists[model] = ([a + b for a, b in zip(have[0], counts, strict=True)], have[1] + total)
        if gauges:
            for key, value in other.gauges.items():
                self.gauges[key] = self.gauges.get(key, 0) + value

    def to_json(self, **extra: Any) -> bytes:
        doc = {
            "requests": _pairs(self.requests), "tokens": _pairs(self.tokens),
            "rejections": _pairs(self.rejections), "upstream_errors": _pairs(self.upstream_errors),
            "retries": self.retries, "latency": self.latency, "ttft": self.ttft,
            "gauges": self.gauges, "counters": self.counters, **extra,
        }  # fmt: skip
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, data: bytes) -> tuple[Counts, dict[str, Any]]:
        """The counts, and the whole document (for fields beyond the counts)."""
        doc = orjson.loads(data)
        counts = cls(
            requests=_unpairs(doc["requests"]), tokens=_unpairs(doc["tokens"]),
            rejections=_unpairs(doc["rejections"]), upstream_errors=_unpairs(doc["upstream_errors"]),
            retries=dict(doc["retries"]), gauges=dict(doc["gauges"]), counters=dict(doc["counters"]),
            latency={k: (list(v[0]), float(v[1])) for k, v in doc["latency"].items()},
            ttft={k: (list(v[0]), float(v[1])) for k, v in doc["ttft"].items()},
        )  # fmt: skip
        return counts, doc


def _pairs(values: dict[Labels, int]) -> list[tuple[Labels, int]]:
    return list(values.items())  # JSON has no tuple keys: [[labels...], value] pairs


def _unpairs(pairs: list[list[Any]]) -> dict[Labels, int]:
    return {tuple(labels): value for labels, value in pairs}


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


# -- across workers ----------------------------------------------------------------------

SNAPSHOT_EVERY: Final = 1.0  # seconds between two snapshots of a worker
RETIRED: Final = "retired.json"  # the workers that died, summed (counters only)
_READ_TRIES: Final = 5


class WorkerSnapshots:
    """This worker's file in the supervisor's directory, and the reading of the others'.

    Files are written whole and renamed into place, so a reader sees an old or a new
    snapshot, never half of one."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        self.path = directory / f"{name}.json"
        self._tmp = directory / f".{name}.tmp"  # hidden: readers skip it
        self.metrics: Metrics | None = None  # set by the app's Metrics when it is made
        self._lock = threading.Lock()  # the timer and a scrape's thread write the same file
        self._stop = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="metrics-snapshots", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """At the worker's exit: the last numbers, once the event loop has stopped."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2 * SNAPSHOT_EVERY)
        self.snapshot()

    def _run(self) -> None:
        while not self._stop.wait(SNAPSHOT_EVERY):
            self.snapshot()

    def snapshot(self, metrics: Metrics | None = None) -> Counts | None:
        """Write this worker's numbers now; return what was written."""
        metrics = metrics or self.metrics
        if metrics is None:
            return None
        # taken and written under one lock: an older copy never overwrites a newer one
        with self._lock:
            counts = metrics.counts()
            try:
                _write_atomically(self._tmp, self.path, counts.to_json())
            except OSError as exc:
                if not self.directory.exists():
                    return counts  # the supervisor is gone, and its directory with it: nothing to share
                if not self._failed:
                    self._failed = True
                    log.warning("metrics: cannot write this worker's snapshot (%s); scrapes may miss it", exc)
        return counts

    def merged(self, metrics: Metrics) -> Counts:
        """This worker's live numbers (written first: what a scrape shows stays counted)
        plus every other worker's last snapshot and the retired workers' sum."""
        total = self.snapshot(metrics) or metrics.counts()
        for other in read_others(self.directory, skip=self.path.name):
            total.add(other[0], gauges=other[1])
        return total


def read_others(directory: Path, skip: str = "") -> list[tuple[Counts, bool]]:
    """(counts, alive) of every snapshot in `directory` but `skip`: the live workers'
    files, and the retired sum (alive False: its gauges are not counted).

    The supervisor folds a dead worker's file into `retired.json` and then deletes it;
    listing first and reading `retired.json` after is what makes this exact: a file
    listed but gone by the time it is opened was folded meanwhile, so the whole read
    starts again (the retired sum read before did not have it)."""
    found: list[tuple[Counts, bool]] = []
    for _ in range(_READ_TRIES):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return []
        found = []
        retired = _read(directory / RETIRED)
        folded: set[str] = set()
        if retired is not None:
            found.append((retired[0], False))
            folded = set(retired[1].get("folded", ()))
        complete = True
        for entry in names:
            if not entry.endswith(".json") or entry in (skip, RETIRED) or entry[:-5] in folded:
                continue
            got = _read(directory / entry)
            if got is None:
                complete = False
                break
            found.append((got[0], True))
        if complete:
            break
    return found


_unreadable: set[str] = set()  # files warned about once already


def _read(path: Path) -> tuple[Counts, dict[str, Any]] | None:
    """The snapshot at `path`; None when there is no such file; an empty one (and a
    WARNING, once per file) when it cannot be read."""
    try:
        return Counts.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:  # not ours, or another version's
        if path.name not in _unreadable:
            _unreadable.add(path.name)
            log.warning("metrics: unreadable snapshot %s skipped (%s)", path.name, exc)
        return Counts(), {}


def _write_atomically(tmp: Path, path: Path, data: bytes) -> None:
    # no fsync: the directory lives as long as the supervisor, on tmpfs when it can
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def retire(directory: Path, name: str) -> None:
    """In the supervisor, once worker `name` has exited: its counters join the retired
    sum (written before its own file is removed: readers never miss them)."""
    path = directory / f"{name}.json"
    with contextlib.suppress(FileNotFoundError):
        (directory / f".{name}.tmp").unlink()
    got = _read(path)
    if got is None:
        return  # died before its first snapshot: nothing counted yet
    retired = _read(directory / RETIRED)
    total, folded = (retired[0], list(retired[1].get("folded", []))) if retired is not None else (Counts(), [])
    total.add(got[0], gauges=False)
    folded.append(name)
    try:
        _write_atomically(directory / f".{RETIRED}.tmp", directory / RETIRED, total.to_json(folded=folded))
        path.unlink()
    except OSError as exc:  # the file stays: still counted, as a live worker's (its gauges too)
        log.warning("metrics: cannot fold the snapshot of a stopped worker (%s)", exc)


_WORKER: WorkerSnapshots | None = None  # this process's, when it is one of several workers


def join_workers(directory: Path, name: str) -> WorkerSnapshots:
    """In a worker, before its app is made: the app's `Metrics` shares its numbers
    through `directory` under `name`, from now until `close()`."""
    global _WORKER
    _WORKER = WorkerSnapshots(directory, name)
    _WORKER.start()
    return _WORKER


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
