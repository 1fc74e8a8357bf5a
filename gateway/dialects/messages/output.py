"""The Messages dialect's `Output`s (gateway/dialects/output.py).

`MessagesOutput`: hub answers (an OpenAI-kind or Gemini upstream) as a Messages
response or as the exact Messages event sequence.  `NativeMessagesOutput`: an
Anthropic upstream's own events, relayed as they came (gateway/passthrough.py
frames them); only a failure the gateway itself reports is written here."""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.dialects.messages.render import MessageContext, render_error, render_message
from gateway.dialects.messages.stream import MessageStream, frame
from gateway.dialects.output import RelayedOutput
from gateway.errors import GatewayError
from gateway.providers.base import Chunk

Json = dict[str, Any]

# Anthropic's own keep-alive: anthropic-python skips `ping` events, any SSE parser skips them
PING: Final = b'event: ping\ndata: {"type": "ping"}\n\n'


def error_event(error: GatewayError) -> bytes:
    """A failure once the stream is under way: Anthropic's `error` event, then the end."""
    _, body = render_error(error)
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


class MessagesOutput:
    ping = PING

    def __init__(self, ctx: MessageContext) -> None:
        self.ctx = ctx
        self.stream = MessageStream(ctx)

    def render(self, completion: Json) -> Json:
        return render_message(completion, self.ctx)

    def open(self) -> bytes:
        return _frames(self.stream.start())

    def chunks(self, chunks: list[Chunk]) -> bytes:
        feed = self.stream.feed
        return b"".join(_frames(feed(c)) for c in chunks)

    def close(self, usage: Json | None) -> bytes:
        return _frames(self.stream.finish(usage))

    def fail(self, error: GatewayError) -> bytes:
        return _frames(self.stream.fail(error))

    async def settle(self) -> None:
        return None


class NativeMessagesOutput(RelayedOutput):
    """An Anthropic upstream's events, passed on untouched."""

    ping = PING

    def fail(self, error: GatewayError) -> bytes:
        return error_event(error)


def _frames(events: list[Json]) -> bytes:
    return b"".join(frame(e) for e in events)
