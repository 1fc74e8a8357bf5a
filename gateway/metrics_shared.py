"""The numbers of one process (`Counts`), and their sum across `server.workers`.

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
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.metrics")

Labels = tuple[str, ...]

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


def this_worker() -> WorkerSnapshots | None:
    """This process's snapshots when it is one of several workers (`join_workers`)."""
    return _WORKER
