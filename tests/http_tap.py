"""An httpx transport for the official SDKs that keeps every exchange: the request
body sent, the status, the content type and the response body received, byte for
byte, so tests check the wire rather than the SDK's models.  Shared by the
Responses and the Messages acceptance tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx  # the HTTP library of openai>=3 and anthropic (httpx before)
import orjson

Json = dict[str, Any]


@dataclass
class Exchange:
    method: str
    path: str
    sent: bytes
    status: int = 0
    content_type: str = ""
    body: bytearray = field(default_factory=bytearray)

    def json(self) -> Any:
        return orjson.loads(bytes(self.body))

    def events(self) -> list[Json]:
        """The data payloads of an SSE body (the `event:` line must name the payload's type)."""
        out = []
        for block in bytes(self.body).split(b"\n\n"):
            lines = [line for line in block.split(b"\n") if line and not line.startswith(b":")]
            if not lines:
                continue
            name = [line[7:] for line in lines if line.startswith(b"event: ")]
            data = orjson.loads(b"".join(line[6:] for line in lines if line.startswith(b"data: ")))
            assert name == [data["type"].encode()], block
            out.append(data)
        return out


class _Recording(httpx.AsyncByteStream):
    def __init__(self, inner: Any, sink: bytearray) -> None:
        self.inner, self.sink = inner, sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.inner:
            self.sink += piece
            yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


class Tap(httpx.AsyncBaseTransport):
    """Keeps every exchange it passes on (`exchanges`, the latest as `last`)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = Exchange(request.method, request.url.path, await request.aread())
        self.exchanges.append(exchange)
        response = await self.inner.handle_async_request(request)
        exchange.status = response.status_code
        exchange.content_type = response.headers.get("content-type", "")
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Recording(response.stream, exchange.body),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def last(self) -> Exchange:
        return self.exchanges[-1]
