"""How one call's answer reaches its client, in the client's dialect.

The pipeline and the relay speak the hub (OpenAI chat completions and chunks); an
`Output` turns that into the client's wire format: a whole answer (`render`), or a
stream (`open`, `chunks`, `close`, `fail`, each giving bytes ready to write).
`settle` runs after the answer is complete and before its last bytes go out:
where a dialect must persist the answer first (a stored Response is readable the
moment `response.completed` arrives), it does so there.

`ChatOutput` is the identity dialect: chat completions as they are, chunks as
`data: <json>` lines ending with `data: [DONE]`."""

from __future__ import annotations

from typing import Any, Final, Protocol

import orjson

from gateway.errors import GatewayError
from gateway.providers.base import Chunk

Json = dict[str, Any]

COMMENT_PING: Final = b": ping\n\n"  # an SSE comment: every OpenAI client skips it


class Output(Protocol):
    ping: bytes  # what a silent stream sends every few seconds

    def render(self, completion: Json) -> Json: ...

    def open(self) -> bytes: ...

    def chunks(self, chunks: list[Chunk]) -> bytes: ...

    def close(self, usage: Json | None) -> bytes: ...

    def fail(self, error: GatewayError) -> bytes: ...

    async def settle(self) -> None: ...


class ChatOutput:
    ping = COMMENT_PING

    def render(self, completion: Json) -> Json:
        return completion

    def open(self) -> bytes:
        return b""

    def chunks(self, chunks: list[Chunk]) -> bytes:
        # a chunk given as bytes is JSON already encoded (an upstream chunk passed on unchanged)
        return b"".join(b"data: " + (c if type(c) is bytes else orjson.dumps(c)) + b"\n\n" for c in chunks)

    def close(self, usage: Json | None) -> bytes:
        return b"data: [DONE]\n\n"

    def fail(self, error: GatewayError) -> bytes:
        return b"data: " + orjson.dumps(error.body()) + b"\n\n"

    async def settle(self) -> None:
        return None


class RelayedOutput:
    """An upstream's own answer in the client's own protocol (native passthrough):
    the chunks are its events, already framed, passed on untouched.  Subclasses say
    how a failure the gateway itself reports is written, and which ping to send."""

    ping = COMMENT_PING

    def render(self, completion: Json) -> Json:
        return completion

    def open(self) -> bytes:
        return b""

    def chunks(self, chunks: list[Chunk]) -> bytes:
        return b"".join(c for c in chunks if type(c) is bytes)

    def close(self, usage: Json | None) -> bytes:
        return b""

    def fail(self, error: GatewayError) -> bytes:
        raise NotImplementedError

    async def settle(self) -> None:
        return None
