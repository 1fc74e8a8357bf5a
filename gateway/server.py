"""The HTTP server under the app: aiohttp's connection protocol, hardened for the open
internet, and one process's start, reload and graceful stop (`run`).

What aiohttp's defaults left open, and what closes it here:

- A request its parser rejects (bare LF, a control character, obs-fold) was logged
  with a traceback quoting the raw bytes (keys, prompts) and echoed in a text 400.
  Now: an OpenAI-shaped 400 that quotes nothing, one WARNING line without the bytes.
- No time limit on a request's headers or body (slowloris): `header_timeout` from
  connect (or from the first byte of a keep-alive connection's next request),
  `body_timeout` for the whole body once the headers are in (408).  Both reuse
  aiohttp's keep-alive timer, or a timer armed only when a body did not arrive with
  its headers: a request that arrives whole costs no timer.
- No connection cap: at `max_connections` a new connection closes the oldest
  connection that is not serving a request (silent or half-sent ones first), or is
  refused with a 503 when every one is busy.  A rate-limited WARNING says so.
- A `Content-Length` over `max_body_bytes` (`Expect: 100-continue` too) is answered
  413 at once, without reading the body.
- SIGTERM took about 2.3 x `shutdown_timeout`: aiohttp's `RequestHandler.shutdown`
  waits up to the timeout for the handler, then up to the timeout again after
  "cancelling" it (which only fails its body reader, not a stream), each rounded up
  to whole seconds, then cleans up.  `_stop` holds the whole stop to the timeout:
  in-flight requests get it minus a reserve, then `app[STOPPING]` is set and their
  handlers are cancelled (a stream ends with a final error event), then the usage
  log is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web, web_protocol
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gateway.appkeys import LIVE, STOPPING
from gateway.config import Config
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

_BACKLOG = 1024
_POLL = 0.05  # seconds between checks while waiting for in-flight requests at stop
_REPORT_EVERY = 10.0  # seconds between two WARNINGs about the same kind of abuse
_FDS_PER_CONNECTION = 2  # a client connection may hold an upstream one too
_FDS_RESERVED = 64  # log files, the database, the listening socket, DNS...
_MAX_AUTO_CONNECTIONS = 10_000


class StartupError(Exception):
    """The app could not start (its usage database, say); the message is one line for the operator."""


@dataclass(slots=True)
class Settings:
    """The `server.*` values connections read; a reload updates them in place."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    max_body_bytes: int
    shutdown_timeout: float
    open_files: int  # this process's open-file limit, for the default `max_connections`

    @classmethod
    def from_config(cls, config: Config, open_files: int) -> Settings:
        settings = cls(0, 0, 0, 0, 0, 0, open_files)
        settings.update(config)
        return settings

    def update(self, config: Config) -> None:
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.max_body_bytes = config.max_body_bytes
        self.shutdown_timeout = config.shutdown_timeout
        self.max_connections = config.max_connections or default_max_connections(self.open_files)


def default_max_connections(open_files: int) -> int:
    return max(16, min(_MAX_AUTO_CONNECTIONS, (open_files - _FDS_RESERVED) // _FDS_PER_CONNECTION))


def raise_open_files_limit() -> int:
    """Raise the soft open-file limit to the hard one (a connection is a descriptor; the
    soft default, often 1024, is what let 1,100 idle sockets lock every client out).
    Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):  # macOS refuses more than OPEN_MAX
        return soft
    return wanted


# -- errors answered by the protocol itself -----------------------------------------------


class RequestTimeout(GatewayError):
    """Raised from the handler's body read when the body is overdue (see `_body_overdue`)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


def _error(status: int, message: str, code: str | None, type_: str = "invalid_request_error") -> GatewayError:
    return GatewayError(message, status=status, type=type_, code=code)


_MALFORMED = _error(400, "Malformed HTTP request; it was not processed.", "malformed_request")
_TOO_LARGE = _error(413, "Request body too large.", "request_too_large")  # the app's own 413 says the same
_INTERNAL = _error(500, "The gateway hit an internal error; it has been logged.", None, "server_error")
_HANDLER_TIMEOUT = _error(504, "The request timed out inside the gateway.", "timeout", "server_error")


def _refusal() -> bytes:
    """The whole 503 a connection over the cap gets, written before its request is read."""
    body = orjson.dumps(
        _error(503, "The gateway is at its connection limit; retry shortly.", "too_many_connections",
               "server_error").body()
    )  # fmt: skip
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_REFUSAL = _refusal()


class _Report:
    """One WARNING line at most every `_REPORT_EVERY` seconds for a kind of abuse: the
    first event at once, later ones counted into the next line (a flood of bad
    clients must not become a flood of log lines)."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._counts: dict[str, int] = {}
        self._next = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop, **counts: int) -> None:
        for name, n in counts.items():
            self._counts[name] = self._counts.get(name, 0) + n
        if self._timer is None:
            now = loop.time()
            if now >= self._next:
                self.flush(loop)
            else:
                self._timer = loop.call_at(self._next, self.flush, loop)

    def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._counts:
            log.warning(self._message, self._counts)
            self._counts = {}
            self._next = loop.time() + _REPORT_EVERY


# -- the connection protocol ------------------------------------------------------------


class _Protocol(web_protocol.RequestHandler):
    """aiohttp's protocol with deadlines, the connection cap and quiet errors."""

    __slots__ = ("_server", "_body_payload", "_body_timer", "_headers_due", "_counted")

    def __init__(self, server: Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._server = server  # aiohttp drops `_manager` when the connection is lost
        self._body_payload: StreamReader | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._headers_due = True  # the deadline in force is one for request headers
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._server
        server.open += 1
        self._counted = True
        settings = server.settings
        # the first request's headers are due within header_timeout: aiohttp's keep-alive
        # timer (one per connection) is brought forward, no timer of our own
        if settings.header_timeout < self._keepalive_timeout:
            self._deadline(self._loop.time() + settings.header_timeout)
        if server.open > settings.max_connections:
            server.make_room(self)

    def force_close(self) -> None:
        if self._counted:  # every way a connection ends passes here (connection_lost too)
            self._counted = False
            self._server.open -= 1
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = self._body_payload = None
        super().force_close()

    def data_received(self, data: bytes) -> None:
        messages = self._messages
        queued = len(messages)
        super().data_received(data)
        if self._body_payload is not None and self._body_payload.is_eof():
            self._body_arrived()
        if len(messages) > queued:  # a request's headers are complete
            self._headers_due = False
            message, payload = messages[-1]
            if not payload.is_eof():  # rare for API calls: the body did not come with the headers
                self._body_pending(message, payload)
        elif data and not self._headers_due and self._waiter is not None and not self._waiter.done():
            # the first bytes of the next request on an idle keep-alive connection: its
            # headers are due within header_timeout, not the idle keep-alive time
            self._headers_due = True
            deadline = self._loop.time() + self._server.settings.header_timeout
            if deadline < self._next_keepalive_close_time:
                self._deadline(deadline)

    def _deadline(self, when: float) -> None:
        self._next_keepalive_close_time = when
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._keepalive_handle = self._loop.call_at(when, self._process_keepalive)

    def _process_keepalive(self) -> None:
        headers_due = self._headers_due and not self._force_close
        super()._process_keepalive()  # closes the connection if it still waits for a request
        if headers_due and self._force_close:
            self._server.header_timeouts.add(self._loop, closed=1)

    def _body_pending(self, message: Any, payload: StreamReader) -> None:
        settings = self._server.settings
        length = message.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > settings.max_body_bytes:
            # answered at once, body unread (with `Expect: 100-continue`, never asked for)
            self._messages[-1] = (web_protocol._ErrInfo(status=413, exc=_TOO_LARGE, message=""), EMPTY_PAYLOAD)
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_payload = payload
        self._body_timer = self._loop.call_later(settings.body_timeout, self._body_overdue)

    def _body_arrived(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self._body_payload = None

    def _body_overdue(self) -> None:
        payload = self._body_payload
        self._body_timer = self._body_payload = None
        if payload is None or payload.is_eof() or self.transport is None:
            return
        self._server.body_timeouts.add(self._loop, answered=1)
        if self._request_in_progress:
            # the handler's body read raises this; the error middleware answers 408 and
            # the usage row says so.  No lingering read of the rest afterwards: close.
            self._lingering_time = 0.0
            timeout = self._server.settings.body_timeout
            payload.set_exception(
                RequestTimeout(
                    f"The request body did not arrive within {timeout:g} s.", headers={"Connection": "close"}
                )
            )
        else:  # answered already (without reading the body): nothing to wait for
            self.force_close()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # a body the client garbled (bad gzip, say) fails the handler's read, and again
        # aiohttp's read of the rest after the answer: the client's fault, not a traceback
        if isinstance(kw.get("exc_info"), web_protocol.RequestPayloadError):
            log.debug("request body could not be decoded: %s", type(kw["exc_info"]).__name__)
            return
        super().log_exception(*args, **kw)

    @property
    def idle(self) -> bool:
        """Open and serving no request: silent, half-sent, or between keep-alive requests."""
        if self._force_close or self.transport is None:
            return False
        return self._request_count == 0 or (self._waiter is not None and not self._waiter.done())

    def refuse(self) -> None:
        if self.transport is not None:
            self.transport.write(_REFUSAL)
        self.force_close()

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """Errors aiohttp answers itself, in OpenAI's shape.  A parser error's message
        quotes the raw request (a key, a prompt): only its class name is logged."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status == 400:
            self._server.bad_requests.add(self._loop, **{type(exc).__name__ if exc else "unknown": 1})
            error = _MALFORMED
        elif status == 413:
            error = _TOO_LARGE
        elif status == 504:
            error = _HANDLER_TIMEOUT
        else:  # a bug that escaped the app's error middleware
            log.error("unhandled error on a request from %s", request.remote, exc_info=exc)
            error = _INTERNAL
        response = error.response()
        response.force_close()
        response.headers["Connection"] = "close"  # aiohttp writes none for the HTTP/1.0 it answers errors in
        return response


class Server(web.Server):
    """aiohttp's low-level server with `_Protocol` connections, the connection cap and
    the stop sequence's helpers."""

    def __init__(self, handler: Any, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.settings = settings
        self.open = 0  # connections not yet closed (aiohttp's dict keeps closing ones a while)
        self.shed = _Report(
            "connection limit (server.max_connections) reached: %(closed)d idle or incomplete connections closed, "
            "%(refused)d refused (503) since the last report"
        )
        self.header_timeouts = _Report(
            "%(closed)d connections closed: request headers not received within server.header_timeout"
        )
        self.body_timeouts = _Report("%(answered)d requests answered 408: body not received within server.body_timeout")
        self.bad_requests = _Report("malformed HTTP requests rejected (400), by parser error: %s")

    def __call__(self) -> _Protocol:
        s = self.settings
        return _Protocol(self, loop=self._loop, keepalive_timeout=s.keepalive_timeout, access_log=None)

    def make_room(self, new: _Protocol) -> None:
        """Over the cap: close the oldest connection that serves no request, preferring
        one still owing its headers (a slowloris), or refuse `new`."""
        victim: _Protocol | None = None
        for conn in self._connections:  # oldest first
            if conn is new or not isinstance(conn, _Protocol) or not conn.idle:
                continue
            if conn._headers_due:
                victim = conn
                break
            if victim is None:
                victim = conn
        if victim is not None:
            victim.force_close()
            self.shed.add(self._loop, closed=1, refused=0)
        else:
            new.refuse()
            self.shed.add(self._loop, closed=0, refused=1)

    def in_progress(self) -> int:
        return sum(1 for c in self._connections if c._request_in_progress)

    def close_idle(self) -> None:
        """Stop: idle connections close now, busy ones once their response is out."""
        for conn in list(self._connections):
            if isinstance(conn, _Protocol) and conn.idle:
                conn.force_close()
            else:
                conn.close()

    async def wait_closed(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        while self.open > 0 and loop.time() < until:
            await asyncio.sleep(_POLL)

    def cancel_handlers(self) -> int:
        """Cancel every running handler, as a client hang-up would; returns how many."""
        cut = 0
        for conn in list(self._connections):
            task = conn._task_handler
            if task is not None and not task.done():
                cut += conn._request_in_progress
                task.cancel()
        return cut

    def close_all(self) -> None:
        for conn in list(self._connections):
            conn.force_close()


class _Runner(web.AppRunner):
    """An AppRunner whose server is ours (the app's start-up and freeze unchanged)."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        super().__init__(app, handle_signals=False, access_log=None)
        self._settings = settings

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's start-up
        return Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=True,  # a client hang-up cancels the handler and closes the upstream call
            loop=asyncio.get_running_loop(),
            settings=self._settings,
        )


# -- one process: start, reload, stop ----------------------------------------------------


def run(
    app: web.Application,
    sock: socket.socket,
    config: Config,
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    watch_fd: int | None = None,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Serve `app` on `sock` until SIGTERM/SIGINT, or end-of-file on `watch_fd` (the
    supervisor is gone), then stop within `server.shutdown_timeout`.  Raises
    `StartupError` when the app cannot start."""
    settings = Settings.from_config(config, raise_open_files_limit())
    loop = loop_factory() if loop_factory else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(app, sock, settings, watch_fd, on_started))
    finally:
        try:
            _cancel_leftovers(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(
    app: web.Application,
    sock: socket.socket,
    settings: Settings,
    watch_fd: int | None,
    on_started: Callable[[], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app, settings)
    if watch_fd is not None:
        loop.add_reader(watch_fd, _parent_gone, loop, watch_fd, stop)
    runner = _Runner(app, settings)
    try:
        await _start(runner, stop)
    except BaseException:
        sock.close()  # free the port at once
        raise
    if stop.is_set():  # stopped while starting
        sock.close()
        await _cleanup(app, loop.time() + settings.shutdown_timeout)
        await _threads_finish(0.5)
        return
    site = web.SockSite(runner, sock, backlog=_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        sock.close()
        await _cleanup(app, loop.time() + 1.0)
        raise StartupError(f"cannot serve on the listening socket: {exc.strerror or exc}") from None
    log.debug("open-file limit %d; server.max_connections %d", settings.open_files, settings.max_connections)
    if on_started is not None:
        on_started()
    await stop.wait()
    server = runner.server
    assert isinstance(server, Server)
    await _stop(app, site, server, settings)


async def _start(runner: _Runner, stop: asyncio.Event) -> None:
    """The app's start-up (usage database, upstream session), abandoned on SIGTERM;
    any failure becomes one `StartupError` line, its resources released."""
    setup = asyncio.ensure_future(runner.setup())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((setup, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not setup.done():
        setup.cancel()
        with contextlib.suppress(BaseException):
            await setup
    elif setup.exception() is not None:
        exc = setup.exception()
        await _cleanup(runner.app, asyncio.get_running_loop().time() + 1.0)
        await _threads_finish(0.5)
        raise StartupError(f"cannot start: {str(exc).strip() or type(exc).__name__}") from None


async def _threads_finish(timeout: float) -> None:
    """Give threads an unfinished start left behind (aiosqlite's, told to stop) a moment
    to end while the loop still runs: one answering a closed loop prints a traceback."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    main = threading.main_thread()
    while loop.time() < until and any(t is not main and t.is_alive() for t in threading.enumerate()):
        await asyncio.sleep(0.02)


async def _stop(app: web.Application, site: web.SockSite, server: Server, settings: Settings) -> None:
    """The graceful stop, all of it within `shutdown_timeout` (plus the process's exit)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    budget = settings.shutdown_timeout
    deadline = started + budget
    # the reserve pays for the final events of cut streams and the usage log's flush
    grace = budget - min(1.0, budget / 4)
    log.info(
        "stopping: %d requests in flight, cut after %g s if still running (server.shutdown_timeout %g s)",
        server.in_progress(), grace, budget,
    )  # fmt: skip
    await site.stop()  # the listening socket closes: new connections are refused
    server.close_idle()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await app.shutdown()  # on_shutdown hooks (none today)
    await server.wait_closed(started + grace)
    cut = 0
    if server.open > 0:
        if STOPPING in app:
            app[STOPPING].set()  # handlers that see it end their stream with a final error event
        cut = server.cancel_handlers()
        await server.wait_closed(deadline)
    server.close_all()
    await _cleanup(app, deadline + 0.5)
    log.info("stopped in %.1f s; %d requests were cut short", loop.time() - started, cut)


async def _cleanup(app: web.Application, until: float) -> None:
    """The app's clean-up (the usage log's flush, the upstream session), bounded."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(max(0.5, until - loop.time())):
            await app.cleanup()
    except TimeoutError:
        log.error("stop: the app's clean-up did not finish in time; usage rows still queued may be lost")
    except Exception as exc:
        log.error("stop: the app's clean-up failed: %s", exc)


def _reload(app: web.Application, settings: Settings) -> None:
    """SIGHUP: the YAML again; what a running server can change applies at once."""
    live = app[LIVE]
    try:
        reloaded = live.reload()
    except Exception as exc:  # an I/O error past the file's read: the old configuration stays
        log.error("reload failed, the old configuration stays in force: %s", exc)
        return
    if reloaded:
        config = live.current.config
        settings.update(config)
        # the app reads its body limit per request from here (aiohttp's Application)
        app._client_max_size = config.max_body_bytes


def _parent_gone(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """The watched pipe is readable: end-of-file means every writer (the supervisor) is gone."""
    try:
        data = os.read(fd, 1)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        loop.remove_reader(fd)
        if not stop.is_set():
            log.warning("the supervisor is gone; stopping")
            stop.set()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks still alive after the stop are cancelled; a second at most for them."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
    for closing in (loop.shutdown_asyncgens(), loop.shutdown_default_executor()):  # DNS lookups' threads
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait_for(closing, 1.0))


def lingering_threads(timeout: float = 1.0) -> list[threading.Thread]:
    """Non-daemon threads still alive after up to `timeout` s: they would keep the
    interpreter from exiting (aiosqlite's, left by a database that failed to open)."""
    deadline = time.monotonic() + timeout
    alive = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            alive.append(thread)
    return alive
