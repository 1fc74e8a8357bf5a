"""Listening sockets, and `server.workers: N`: N processes serving one port.

Every worker binds its own socket with SO_REUSEPORT, so the kernel spreads new
connections evenly across the workers (a socket shared after fork wakes them all
for each connection and balances badly).  The parent only supervises: it forwards
SIGTERM, SIGINT and SIGHUP to the workers, restarts a worker that dies, and exits
once all of them have stopped.  Workers stop when the supervisor dies (even by
SIGKILL), and a worker that cannot start reports one line, logged once.  The
workers share the usage log safely (SQLite in WAL mode, one short write
transaction per batch, busy_timeout for the others), and their `/metrics` numbers
through a private directory the supervisor makes and removes (gateway/metrics.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway import ids, metrics

log = logging.getLogger(__name__)

# Unacknowledged data older than this aborts a connection: a client that vanished
# mid-stream is dropped in minutes, not the kernel's ~15.  Set on the listening
# socket, Linux copies it to every accepted connection: no syscall per request.
SEND_TIMEOUT_MS = 120_000
_BACKLOG = 1024
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_QUICK_DEATH = 2.0  # seconds: a worker exiting this soon after start could not start
STARTUP_FAILED = 3  # a worker's exit code: it could not start and reported why (WorkerLink)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, SEND_TIMEOUT_MS)
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class WorkerLink:
    """A worker's ties to its supervisor: `parent_fd` reads end-of-file once the
    supervisor is gone (the portable half of "die with the parent"), `report_fd`
    carries the one line saying why the worker could not start."""

    parent_fd: int
    report_fd: int

    def report_failure(self, line: str) -> None:
        # one write under PIPE_BUF (512 bytes even on macOS) is atomic: lines never interleave
        data = (" ".join(line.split())[:500] + "\n").encode("utf-8", "replace")
        try:
            os.write(self.report_fd, data)
        except OSError:
            pass


def supervise(count: int, serve: Callable[[WorkerLink], int]) -> int:
    """Fork `count` workers, each running `serve(link)`; return when all have stopped.
    Call before any event loop or thread exists in this process."""
    workers: dict[int, float] = {}  # pid -> start time
    names: dict[int, str] = {}  # pid -> its name in the metrics directory (never reused)
    spawned = 0
    stopping = False
    parent = os.getpid()
    watch_r, watch_w = os.pipe()  # the supervisor holds the only write end, and never writes
    report_r, report_w = os.pipe()
    os.set_blocking(report_r, False)
    link = WorkerLink(watch_r, report_w)
    shared = metrics_directory()

    def spawn() -> None:
        nonlocal spawned
        spawned += 1
        name = f"w{spawned}"
        pid = os.fork()
        if pid == 0:  # the worker
            _die_with(parent)
            os.close(watch_w)  # else the worker's own copy would keep the pipe open
            os.close(report_r)
            for sig in _FORWARDED:
                signal.signal(sig, signal.SIG_DFL)  # the event loop installs its own
            ids.reseed()
            code = 1
            snapshots: metrics.WorkerSnapshots | None = None
            try:  # nothing may raise past here: the child must never return into this loop
                if shared is not None:
                    snapshots = metrics.join_workers(shared, name)
                code = serve(link)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                try:
                    if snapshots is not None:
                        snapshots.close()  # the last numbers: counted after this worker is gone
                    if shared is not None and os.getppid() != parent:  # the supervisor was killed: nobody else will
                        shutil.rmtree(shared, ignore_errors=True)
                finally:
                    logging.shutdown()
                    os._exit(code)
        workers[pid] = time.monotonic()
        names[pid] = name

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for pid in list(workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for _ in range(count):
        spawn()
    for sig in _FORWARDED:
        signal.signal(sig, forward)
    log.info("supervising %d workers: %s", count, " ".join(map(str, workers)))
    code = 0
    try:
        while workers:
            pid, status = os.wait()  # retried by Python after each forwarded signal
            started = workers.pop(pid, None)
            if started is None:
                continue
            if shared is not None:  # its counters stay in the sum, its gauges leave it
                metrics.retire(shared, names.pop(pid))
            exit_code = os.waitstatus_to_exitcode(status)
            if exit_code == STARTUP_FAILED:  # it said why: one line for all the workers
                if code == 0:
                    log.error("%s", _first_line(report_r) or "a worker could not start")
                code, stopping = 1, True
                forward(signal.SIGTERM, None)
                continue
            if stopping:
                continue
            log.error("worker %d exited (%s)", pid, f"signal {-exit_code}" if exit_code < 0 else f"code {exit_code}")
            quick = time.monotonic() - started < _QUICK_DEATH
            if quick and exit_code >= 0:  # it could not start
                log.error("a worker failed at start-up; stopping the others")
                code = 1
                forward(signal.SIGTERM, None)
                continue
            if quick:
                time.sleep(1)  # killed right after start: do not fork in a hot loop
            spawn()
    finally:
        for fd in (watch_r, watch_w, report_r, report_w):
            os.close(fd)
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    return code


def metrics_base() -> str | None:
    """Where the metrics directory goes: a tmpfs when there is one (snapshots are
    rewritten every second: no disk writes for them), else the system's temp dir (None)."""
    for base in ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR")):
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return base
    return None


_METRICS_PREFIX = "gateway-metrics-"


def metrics_directory() -> Path | None:
    """A new private directory (mode 0700) for the workers' metrics snapshots, named
    after this supervisor's pid; None, with a WARNING, when none can be made (each
    worker's `/metrics` then shows only itself)."""
    base = metrics_base()
    _remove_stale(Path(base or tempfile.gettempdir()))
    try:
        return Path(tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-", dir=base))
    except OSError as exc:
        log.warning("cannot make a directory for the workers' metrics (%s): each scrape shows one worker", exc)
        return None


def _remove_stale(base: Path) -> None:
    """Directories left by supervisors killed with SIGKILL together with their workers
    (else a worker removes it): ours (same user) whose supervisor is gone.  On a tmpfs
    they would hold memory until a reboot."""
    try:
        found = [p for p in base.iterdir() if p.name.startswith(_METRICS_PREFIX)]
    except OSError:
        return
    for path in found:
        pid = path.name[len(_METRICS_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or path.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its supervisor is gone
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive (another user's), or the directory went meanwhile
            continue


def _first_line(fd: int) -> str:
    try:
        data = os.read(fd, 4096)
    except OSError:
        return ""
    return data.decode("utf-8", "replace").split("\n", 1)[0]


def _die_with(parent: int) -> None:
    """This worker gets SIGTERM (a graceful stop) when its supervisor dies, even by
    SIGKILL: on Linux through the kernel (PR_SET_PDEATHSIG); everywhere through the
    pipe in `WorkerLink`.  Without it, workers kept serving and a fresh instance
    bound the same port beside them."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the pipe still tells
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)
