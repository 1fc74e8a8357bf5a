"""Fake upstream providers: real aiohttp servers on 127.0.0.1 whose answers the test scripts.

A `FakeUpstream` records every request it receives and answers each with the next
scripted `Reply` (JSON, a byte stream written in chosen pieces, a stall...).  A
provider-specific `check` can reject requests the real API would reject, with
that API's own error body, so a gateway that builds a bad request fails the test.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return orjson.loads(fixture_bytes(name))


def sse_from_jsonl(name: str, *, event_names: bool = False, sep: bytes = b"\n\n") -> bytes:
    """Re-frame a `.jsonl` recording (one data payload per line) as SSE bytes."""
    out = []
    for line in fixture_bytes(name).splitlines():
        if not line.strip():
            continue
        head = b""
        if event_names:
            head = b"event: " + orjson.loads(line)["type"].encode() + b"\n"
        out.append(head + b"data: " + line + sep)
    return b"".join(out)


# -- how a body is cut into writes: the hostile framings real networks produce -------------


def chunked(payload: bytes, how: str) -> list[bytes]:
    if how == "whole":
        return [payload]
    if how == "bytes":  # one byte per write
        return [payload[i : i + 1] for i in range(len(payload))]
    if how == "split_crlf":  # cut between every CR and its LF
        pieces, start = [], 0
        for i in range(len(payload) - 1):
            if payload[i : i + 2] == b"\r\n":
                pieces.append(payload[start : i + 1])
                start = i + 1
        pieces.append(payload[start:])
        return [p for p in pieces if p]
    if how == "split_utf8":  # cut inside every multi-byte UTF-8 character, and at odd places
        pieces, start = [], 0
        for i in range(1, len(payload)):
            if payload[i] & 0xC0 == 0x80 and payload[i - 1] & 0x80 or i % 97 == 0:
                pieces.append(payload[start:i])
                start = i
        pieces.append(payload[start:])
        return [p for p in pieces if p]
    if how == "coalesced":  # everything in two reads: several events per read
        half = len(payload) // 2
        return [payload[:half], payload[half:]]
    raise ValueError(how)


CHUNKINGS = ("whole", "bytes", "split_crlf", "split_utf8", "coalesced")


# -- scripted replies --------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | None = None  # a raw body (streams)
    chunking: str = "whole"
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0  # before answering
    stall: bool = False  # send headers (and body, if any) then never finish
    cut: bool = False  # drop the connection after the body, without finishing it


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, json=data, headers=headers or {})


def sse_reply(payload: bytes, chunking: str = "whole", **kw: Any) -> Reply:
    return Reply(body=payload, chunking=chunking, content_type="text/event-stream", **kw)


Check = Callable[[str, dict[str, str], Any], "Reply | None"]


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


class FakeUpstream:
    def __init__(self, check: Check | None = None) -> None:
        self.requests: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.check = check
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.disconnected = asyncio.Event()

    def script(self, *replies: Reply) -> FakeUpstream:
        self.replies.extend(replies)
        return self

    @property
    def last(self) -> Received:
        return self.requests[-1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.requests.append(Received(request.path, dict(request.query), dict(request.headers), body))
        rejected = self.check(request.path, dict(request.headers), body) if self.check else None
        if rejected is not None:
            return await self._send(request, rejected)
        if not self.replies:
            return web.json_response({"error": {"message": "fake upstream: no scripted reply"}}, status=599)
        return await self._send(request, self.replies.popleft())

    async def _send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        payload = reply.body if reply.body is not None else orjson.dumps(reply.json)
        resp = web.StreamResponse(status=reply.status, headers=reply.headers)
        resp.content_type = reply.content_type
        if reply.body is None:
            resp.content_length = len(payload)
        try:
            await resp.prepare(request)
            for piece in chunked(payload, reply.chunking):
                await resp.write(piece)
                if reply.chunking != "whole":
                    await asyncio.sleep(0)  # let each piece leave as its own read
            if reply.stall:
                await asyncio.sleep(3600)
            if reply.cut:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp
