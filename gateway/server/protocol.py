"""aiohttp's connection protocol, hardened (`_Protocol`), and the low-level `Server`
that makes it: header and body deadlines, the connection cap (shedding idle
connections, or a 503), quiet OpenAI-shaped answers to parser errors, and the
helpers the graceful stop uses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web, web_protocol
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gateway.errors import GatewayError
from gateway.server.settings import Settings

log = logging.getLogger("gateway.server")  # the name its log lines have always carried

_POLL = 0.05  # seconds between checks while waiting for in-flight requests at stop
_REPORT_EVERY = 10.0  # seconds between two WARNINGs about the same kind of abuse


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
