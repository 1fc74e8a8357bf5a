"""Listening sockets, and `server.workers: N`: N processes serving one port.

Every worker binds its own socket with SO_REUSEPORT, so the kernel spreads new
connections evenly across the workers (a socket shared after fork wakes them all
for each connection and balances badly).  The parent only supervises: it forwards
SIGTERM, SIGINT and SIGHUP to the workers, restarts a worker that dies, and exits
once all of them have stopped.  The workers share the usage log safely (SQLite in
WAL mode, one short write transaction per batch, busy_timeout for the others).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from gateway import ids

log = logging.getLogger(__name__)

# Unacknowledged data older than this aborts a connection: a client that vanished
# mid-stream is dropped in minutes, not the kernel's ~15.  Set on the listening
# socket, Linux copies it to every accepted connection: no syscall per request.
SEND_TIMEOUT_MS = 120_000
_BACKLOG = 1024
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_QUICK_DEATH = 2.0  # seconds: a worker exiting this soon after start could not start


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


def supervise(count: int, serve: Callable[[], int]) -> int:
    """Fork `count` workers, each running `serve()`; return when all have stopped.
    Call before any event loop or thread exists in this process."""
    workers: dict[int, float] = {}  # pid -> start time
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in _FORWARDED:
                signal.signal(sig, signal.SIG_DFL)  # the event loop installs its own
            ids.reseed()
            code = 1
            try:
                code = serve()
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = time.monotonic()

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
    while workers:
        pid, status = os.wait()  # retried by Python after each forwarded signal
        started = workers.pop(pid, None)
        if started is None:
            continue
        exit_code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        log.error("worker %d exited (%s)", pid, f"signal {-exit_code}" if exit_code < 0 else f"code {exit_code}")
        quick = time.monotonic() - started < _QUICK_DEATH
        if quick and exit_code >= 0:  # it could not start (port taken, bad database path...)
            log.error("a worker failed at start-up; stopping the others")
            code = 1
            forward(signal.SIGTERM, None)
            continue
        if quick:
            time.sleep(1)  # killed right after start: do not fork in a hot loop
        spawn()
    return code
