"""The Responses dialect's `Output` (gateway/dialects/output.py): hub answers as a
Response object or as Responses events, and the stored copy written before the
client is told the answer is complete."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.dialects.output import COMMENT_PING
from gateway.dialects.responses.context import ResponseContext
from gateway.dialects.responses.render import render_response
from gateway.dialects.responses.store import ResponseStore, StoreUnavailable
from gateway.dialects.responses.stream import ResponseStream, frame
from gateway.errors import GatewayError
from gateway.providers.base import Chunk

log = logging.getLogger(__name__)

Json = dict[str, Any]


class ResponsesOutput:
    ping = COMMENT_PING  # a comment: openai-node refuses unknown event types, every parser skips comments

    def __init__(
        self, ctx: ResponseContext, store: ResponseStore | None, key_name: str, input_items: list[Json]
    ) -> None:
        self.ctx = ctx
        self.store = store  # None with `store: false`
        self.key_name = key_name
        self.input_items = input_items
        self.stream = ResponseStream(ctx)
        self.final: Json | None = None

    def render(self, completion: Json) -> Json:
        self.final = render_response(completion, self.ctx)
        return self.final

    def open(self) -> bytes:
        return _frames(self.stream.start())

    def chunks(self, chunks: list[Chunk]) -> bytes:
        feed = self.stream.feed
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

    async def settle(self) -> None:
        """Store the finished Response before `response.completed` leaves: a client may
        chain on it the moment it has it.  A store that fails does not fail the answer."""
        if self.store is None or self.final is None:
            return
        try:
            await self.store.put(self.key_name, self.final, self.input_items)
        except StoreUnavailable as exc:
            log.warning("response %s was answered but not stored: %s", self.ctx.id, exc)


def _frames(events: list[Json]) -> bytes:
    return b"".join(frame(e) for e in events)
