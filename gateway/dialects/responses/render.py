"""A hub `chat.completion` -> a Response object (non-streamed answers).

The completion's message is fed to a `ResponseStream` as the chunks a streamed
answer would have been (reasoning text, content, refusal, tool calls, then the
reasoning signature, which adapters send last), so a Response holds the same
items, in the same order and with the same ids, whether it was streamed or not:
one set of rules for item order, provider state and status.  The events are
discarded; this runs once per answer, not per chunk.
"""

from __future__ import annotations

from typing import Any

from gateway.dialects.responses.context import ResponseContext
from gateway.dialects.responses.stream import ResponseStream

Json = dict[str, Any]


def render_response(completion: Json, ctx: ResponseContext) -> Json:
    """The Response for a hub completion (first choice; Responses has one answer)."""
    stream = ResponseStream(ctx)
    stream.start()
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    for key in ("reasoning_content", "content", "refusal"):
        if message.get(key):
            stream.feed(_chunk({key: message[key]}))
    calls = message.get("tool_calls")
    if calls:
        stream.feed(_chunk({"tool_calls": [{**call, "index": i} for i, call in enumerate(calls)]}))
    if message.get("reasoning_signature"):
        stream.feed(_chunk({"reasoning_signature": message["reasoning_signature"]}))
    stream.feed(_chunk({}, choice.get("finish_reason")))
    stream.finish(completion.get("usage"))
    assert stream.response is not None
    return stream.response


def _chunk(delta: Json, finish_reason: str | None = None) -> Json:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
