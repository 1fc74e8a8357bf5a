"""The Responses dialect's `Output` (gateway/dialects/output.py): hub answers as a
Response object or as Responses events, and the stored copy written before the
client is told the answer is complete."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.dialects.output import COMMENT_PING, RelayedOutput
from gateway.dialects.responses.context import ResponseContext
from gateway.dialects.responses.render import render_response
from gateway.dialects.responses.store import ResponseStore, StoreUnavailable
from gateway.dialects.responses.stream import ResponseStream, frame
from gateway.errors import GatewayError
from gateway.providers.base import Chunk

log = logging.getLogger(__name__)

Json = dict[str, Any]


class _Stored:
    """What both outputs share: the finished Response is stored (or, for a native
    upstream, a copy kept) before the client is told the answer is complete, so a
    client may chain on it the moment it has it.  A store that fails does not fail
    the answer."""

    def __init__(self, store: ResponseStore | None, key_name: str, input_items: list[Json]) -> None:
        self.store = store  # None with `store: false`
        self.key_name = key_name
        self.input_items = input_items
        self.final: Json | None = None

    async def settle(self) -> None:
        if self.store is None or self.final is None or type(self.final.get("id")) is not str:
            return
        try:
            await self.store.put(self.key_name, self.final, self.input_items)
        except StoreUnavailable as exc:
            log.warning("response %s was answered but not stored: %s", self.final["id"], exc)


class ResponsesOutput(_Stored):
    ping = COMMENT_PING  # a comment: openai-node refuses unknown event types, every parser skips comments

    def __init__(
        self, ctx: ResponseContext, store: ResponseStore | None, key_name: str, input_items: list[Json]
    ) -> None:
        super().__init__(store, key_name, input_items)
        self.ctx = ctx
        self.stream = ResponseStream(ctx)

    def render(self, completion: Json) -> Json:
        self.final = render_response(completion, self.ctx)
        return self.final

    def open(self) -> bytes:
        return _frames(self.stream.start())

    def chunks(self, chunks: list[Chunk]) -> bytes:
        feed = self.stream.feed  # the Reply asked for dicts (as_bytes=False); bytes only from an odd path
        return b"".join(
            _frames(feed(orjson.loads(c) if type(c) is bytes else c))  # type: ignore[arg-type]
            for c in chunks
        )

    def close(self, usage: Json | None) -> bytes:
        events = self.stream.finish(usage)
        self.final = self.stream.response
        return _frames(events)

    def fail(self, error: GatewayError) -> bytes:
        return _frames(self.stream.fail(error.body()))


def _frames(events: list[Json]) -> bytes:
    return b"".join(frame(e) for e in events)


class NativeResponsesOutput(_Stored, RelayedOutput):
    """A `responses: native` upstream's own answer, passed on untouched; the gateway
    keeps a copy of the finished Response (for GET, DELETE, input_items and the
    owner check of `previous_response_id`), the upstream keeps its own."""

    def fail(self, error: GatewayError) -> bytes:
        return frame({"type": "error", "sequence_number": 0, "error": error.body()["error"]})
