"""Server-sent events: an incremental decoder for upstream streams, one encoder for ours.

The decoder follows the WHATWG event-stream rules: lines end in CR, LF or CRLF
(a CR at the end of one read may pair with an LF at the start of the next), a
blank line dispatches the event, lines starting with ':' are comments, several
`data:` lines join with '\n'.  It works on bytes, so a UTF-8 character split
across reads is harmless, and it has no line-length limit except `max_event_bytes`
(aiohttp's `readuntil` gives up at 128 KiB, which real LLM events exceed).
"""

from __future__ import annotations

import asyncio
from typing import Final, NamedTuple

from aiohttp import HttpVersion11, web

DONE: Final = b"[DONE]"


class SSEError(Exception):
    """The upstream stream cannot be decoded (an event over the size cap)."""


class Event(NamedTuple):  # a tuple: built per upstream event, cheaper than a dataclass
    data: bytes
    event: str = ""


class SSEDecoder:
    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._max = max_event_bytes
        self._pending = b""  # an incomplete line
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._pending + chunk if self._pending else chunk
        held = b""
        if b"\r" in buf:  # rare: normalise CRLF and lone CR to LF (C-speed replaces, no regex)
            if buf[-1:] == b"\r":  # its LF may be in the next read
                buf, held = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._pending = lines.pop() + held  # the unfinished last line
        events = self._lines(lines)
        if len(self._pending) + self._size > self._max:
            raise SSEError(f"upstream event larger than {self._max} bytes")
        return events

    def close(self) -> list[Event]:
        """End of stream: a final line without terminator still counts; an event
        without its blank line is dispatched, as a lenient client would."""
        last, self._pending = self._pending.rstrip(b"\r"), b""
        return self._lines([last, b""] if last else [b""])

    def _lines(self, lines: list[bytes]) -> list[Event]:
        """Complete lines in, finished events out.  `data:` lines come first: they are
        nearly every line of a stream (one method call per line showed in the profile)."""
        events: list[Event] = []
        data = self._data
        for line in lines:
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                self._size += len(value) + 1
                if self._size > self._max:
                    raise SSEError(f"upstream event larger than {self._max} bytes")
            elif not line:  # the blank line: dispatch
                if data:
                    name = self._event.decode("utf-8", "replace") if self._event else ""
                    events.append(Event(data[0] if len(data) == 1 else b"\n".join(data), name))
                    data.clear()
                self._size, self._event = 0, b""
            elif line[0] != 0x3A:  # ':' starts a comment / keep-alive
                field, _, value = line.partition(b":")
                if field == b"event":
                    self._event = value[1:] if value[:1] == b" " else value
                # `id`, `retry` and unknown fields are ignored, as the spec says.
        return events


class _Stream(web.StreamResponse):
    # the headers leave with the first chunk, in one write (aiohttp's own `Response`
    # does this); a chunk always follows prepare() at once
    _send_headers_immediately = False


class EventWriter:
    """Our outgoing stream: events already framed by the client's dialect (chat's
    `data: <json>`, or `event:` + `data:` for Responses and Messages), as bytes.

    Headers: no caching, no proxy buffering.  A keep-alive (`ping`, the dialect's:
    a `: ping` comment, ignored by OpenAI clients, or Anthropic's `ping` event) goes
    out every `PING_INTERVAL` s, so proxies keep a silent stream (a long think) open.
    The ping is a timer, and a task only when it fires: aiohttp-sse's response,
    used before, started a ping task and set TCP_USER_TIMEOUT (two syscalls and a
    socket object) for every stream, 7-10 % of a short stream in the profile.  The
    listening socket carries that timeout now, inherited by every connection
    (gateway/workers.py)."""

    PING_INTERVAL: float = 15.0

    def __init__(
        self, request: web.Request, headers: dict[str, str] | None = None, ping: bytes = b": ping\n\n"
    ) -> None:
        self._request = request
        self.response = _Stream(headers=headers)
        self.response.headers.update(_HEADERS)
        self._ping_bytes = ping
        self._ping: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        # No explicit chunked encoding: a body without length is chunked by aiohttp for
        # HTTP/1.1, and HTTP/1.0 has no chunks (nginx speaks 1.0 to upstreams by
        # default), so there the stream is delimited by closing the connection.
        if self._request.version < HttpVersion11:
            self.response.force_close()  # aiohttp would keep a 1.0 keep-alive connection open after it
            self.response.headers["Connection"] = "close"
        await self.response.prepare(self._request)
        self._arm()

    @property
    def prepared(self) -> bool:
        return self.response.prepared

    async def write(self, data: bytes) -> None:
        """Everything one upstream read produced, in one write: a send per chunk was the
        largest cost of a stream in the profile (scripts/bench)."""
        if data:
            await self.response.write(data)

    async def close(self) -> None:
        self.stop_pings()
        try:
            await self.response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass

    def _arm(self) -> None:
        self._ping = asyncio.get_running_loop().call_later(self.PING_INTERVAL, self._ping_due)

    def _ping_due(self) -> None:
        self._pinging = asyncio.create_task(self._send_ping())

    async def _send_ping(self) -> None:
        try:
            await self.response.write(self._ping_bytes)
        except (ConnectionResetError, RuntimeError):
            return  # the client is gone or the stream ended: the handler sees it too
        self._arm()

    def stop_pings(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self._pinging is not None:
            self._pinging.cancel()


_HEADERS: Final = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                   "X-Accel-Buffering": "no"}  # fmt: skip
