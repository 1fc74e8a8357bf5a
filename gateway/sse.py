"""Server-sent events: an incremental decoder for upstream streams, one encoder for ours.

The decoder follows the WHATWG event-stream rules: lines end in CR, LF or CRLF
(a CR at the end of one read may pair with an LF at the start of the next), a
blank line dispatches the event, lines starting with ':' are comments, several
`data:` lines join with '\n'.  It works on bytes, so a UTF-8 character split
across reads is harmless, and it has no line-length limit except `max_event_bytes`
(aiohttp's `readuntil` gives up at 128 KiB, which real LLM events exceed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse

DONE: Final = b"[DONE]"


class SSEError(Exception):
    """The upstream stream cannot be decoded (an event over the size cap)."""


@dataclass(frozen=True, slots=True)
class Event:
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
        events: list[Event] = []
        line = self._line
        for item in lines:
            line(item, events)
        if len(self._pending) + self._size > self._max:
            raise SSEError(f"upstream event larger than {self._max} bytes")
        return events

    def close(self) -> list[Event]:
        """End of stream: a final line without terminator still counts; an event
        without its blank line is dispatched, as a lenient client would."""
        events: list[Event] = []
        if self._pending:
            line, self._pending = self._pending.rstrip(b"\r"), b""
            self._line(line, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append(Event(b"\n".join(self._data), self._event.decode("utf-8", "replace")))
            self._data, self._size, self._event = [], 0, b""
            return
        if line[0] == 0x3A:  # ':' comment / keep-alive
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                raise SSEError(f"upstream event larger than {self._max} bytes")
        elif name == b"event":
            self._event = value
        # `id`, `retry` and unknown fields are ignored, as the spec says.


class _EventStream(EventSourceResponse):
    # the headers leave with the first chunk, in one write (aiohttp's own `Response`
    # does this); we always send a chunk right after prepare()
    _send_headers_immediately = False


class EventWriter:
    """Our outgoing stream: `data: <json>\\n\\n` events, in OpenAI's exact framing.

    aiohttp-sse's response supplies the headers (no compression, no proxy
    buffering) and a ': ping' comment every 15 s, which OpenAI clients ignore.  Its
    per-stream TCP_USER_TIMEOUT (two syscalls and a socket object per stream, 7 % of
    a stream in the profile) is off: the listening socket carries that timeout, and
    every accepted connection inherits it (gateway/workers.py)."""

    def __init__(self, request: web.Request, headers: dict[str, str] | None = None) -> None:
        self._request = request
        self.response = _EventStream(sep="\n", headers=headers, allow_all_methods=True, send_timeout=None)
        self.response.content_type = "text/event-stream"
        self.response.charset = "utf-8"

    async def prepare(self) -> None:
        await self.response.prepare(self._request)

    @property
    def prepared(self) -> bool:
        return self.response.prepared

    async def send(self, chunk: dict[str, Any]) -> None:
        await self.response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

    async def send_many(self, chunks: list[dict[str, Any] | bytes]) -> None:
        """Everything one upstream read produced, in one write: a send per chunk was the
        largest cost of a stream in the profile (scripts/bench).  A chunk given as bytes
        is JSON already encoded (an upstream chunk passed on unchanged)."""
        if chunks:
            await self.response.write(
                b"".join(b"data: " + (c if type(c) is bytes else orjson.dumps(c)) + b"\n\n" for c in chunks)
            )

    async def done(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")

    async def close(self) -> None:
        self.response.stop_streaming()
        try:
            await self.response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
