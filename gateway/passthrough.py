"""Native passthrough: the client's dialect is the upstream's own protocol.

The same for a Responses request to an OpenAI-kind server marked `responses:
native`.  A Messages request to an Anthropic upstream goes up with only `model` rewritten,
byte for byte otherwise (thinking signatures are byte-sensitive, `cache_control`
keeps its `ttl`, server tools and documents pass as they are), with the client's
`anthropic-version` and `anthropic-beta` headers.  The answer comes back as the
upstream sent it: a non-streamed body untouched, stream events relayed one by one
with their data bytes untouched.  The gateway reads only what it must: the usage
(for the row and the limits), the text relayed (for the estimate when a stream is
cut), errors and the end of the stream."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import RECORD, REPLY
from gateway.balancer import Target
from gateway.dialects.output import Output
from gateway.dialects.responses.output import NativeResponsesOutput
from gateway.providers.anthropic import ANTHROPIC_VERSION, anthropic_usage
from gateway.providers.base import Chunk, Reply, StreamTranslator, UpstreamRequest, truncated, usage_dict
from gateway.relay import DEPLOYMENT_HEADER, call_upstream, relay_stream
from gateway.sse import Event

Json = dict[str, Any]

_FORWARDED = ("anthropic-version", "anthropic-beta")  # client headers that shape an Anthropic request


def rewrite_model(raw: bytes, body: Json, upstream_model: str) -> bytes:
    """`raw` with its top-level `model` value replaced by `upstream_model`, every other
    byte as the client sent it.  The replacement is made in place only where the
    key occurs once in the whole body (inside JSON strings quotes are escaped, so a
    lone unescaped `"model"` is the top-level key we parsed); otherwise the body is
    re-encoded, which keeps its meaning but not its bytes."""
    asked = body["model"]
    if asked == upstream_model:
        return raw
    if raw.count(b'"model"') == 1:
        found = list(re.finditer(rb'"model"\s*:\s*' + re.escape(orjson.dumps(asked)), raw))
        if len(found) == 1:
            value_at = found[0].end() - len(orjson.dumps(asked))
            return raw[:value_at] + orjson.dumps(upstream_model) + raw[found[0].end() :]
    return orjson.dumps({**body, "model": upstream_model})


def messages_request(
    target: Target, raw: bytes, body: Json, headers: Mapping[str, str], path: str = "/v1/messages"
) -> UpstreamRequest:
    provider = target.route.provider
    out = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION, **provider.headers}
    out.update({name: headers[name] for name in _FORWARDED if headers.get(name)})
    if provider.api_key:
        out["x-api-key"] = provider.api_key
    base = provider.base_url.removesuffix("/v1")
    return UpstreamRequest(f"{base}{path}", out, rewrite_model(raw, body, target.route.model.upstream))


def messages_attempt(request: web.Request, raw: bytes, body: Json, stream: bool, output: Output, reply: Reply) -> Any:
    """The attempt for a Messages request whose target is an Anthropic upstream."""

    async def attempt(target: Target) -> web.StreamResponse:
        request[REPLY] = reply
        upstream = messages_request(target, raw, body, request.headers)
        if stream:
            return await relay_stream(request, target, upstream, MessagesRelay(reply, target), output)
        data = await call_upstream(request, target, upstream)
        message = target.adapter.parse_json(data)
        if message.get("type") == "error":
            raise target.adapter.error_from_body(0, message, {})
        request[RECORD].add_usage(anthropic_usage(message.get("usage")))
        return web.Response(body=data, content_type="application/json", headers={DEPLOYMENT_HEADER: target.label})

    return attempt


class MessagesRelay(StreamTranslator):
    """An Anthropic event stream relayed as it comes: each event re-framed around its
    untouched data bytes.  Usage from `message_start` and `message_delta`; the text
    of deltas counted; an `error` event raised (before the first byte it becomes a
    real status, after it the dialect's error event)."""

    def __init__(self, reply: Reply, target: Target) -> None:
        super().__init__(reply)
        self.adapter = target.adapter
        self.raw_usage: Json = {}
        self.stopped = False

    def feed(self, event: Event) -> list[Chunk]:
        name = event.event
        if name == "content_block_delta":
            delta = orjson.loads(event.data).get("delta")
            if type(delta) is dict:
                for key in ("text", "thinking", "partial_json"):
                    if type(value := delta.get(key)) is str:
                        self.reply.relayed_chars += len(value)
        elif name in ("message_start", "message_delta"):
            data = self.adapter.parse_json(event.data)
            usage = data.get("usage") if name == "message_delta" else (data.get("message") or {}).get("usage")
            if type(usage) is dict:  # cumulative: every value present replaces the one before
                self.raw_usage.update({k: v for k, v in usage.items() if v is not None})
                self.usage = anthropic_usage(self.raw_usage)
        elif name == "message_stop":
            self.stopped = True
        elif name == "error" or (not name and b'"type":"error"' in event.data):
            raise self.adapter.error_from_body(0, self.adapter.parse_json(event.data), {})
        head = b"event: " + name.encode() + b"\n" if name else b""
        return [head + b"data: " + event.data + b"\n\n"]

    def finish(self) -> list[Chunk]:
        if not self.stopped:
            raise truncated(self.adapter.provider)
        return []


# -- the Responses API to an OpenAI-kind server marked `responses: native` ----------------


def responses_request(target: Target, raw: bytes, body: Json) -> UpstreamRequest:
    provider = target.route.provider
    headers = {"Content-Type": "application/json", **provider.headers}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    payload = rewrite_model(raw, body, target.route.model.upstream)
    return UpstreamRequest(f"{provider.base_url}/responses", headers, payload)


def responses_attempt(
    request: web.Request, raw: bytes, body: Json, stream: bool, output: NativeResponsesOutput, reply: Reply
) -> Any:
    """The attempt for a Responses request whose target serves the Responses API itself."""

    async def attempt(target: Target) -> web.StreamResponse:
        request[REPLY] = reply
        upstream = responses_request(target, raw, body)
        if stream:
            return await relay_stream(request, target, upstream, ResponsesRelay(reply, target, output), output)
        data = await call_upstream(request, target, upstream)
        response = target.adapter.parse_json(data)
        if "error" in response and response.get("object") != "response":
            raise target.adapter.error_from_body(200, response, {})
        request[RECORD].add_usage(hub_usage(response.get("usage")))
        output.final = response
        await output.settle()
        return web.Response(body=data, content_type="application/json", headers={DEPLOYMENT_HEADER: target.label})

    return attempt


_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TEXT_DELTAS = frozenset(
    {"response.output_text.delta", "response.function_call_arguments.delta", "response.reasoning_summary_text.delta"}
)


class ResponsesRelay(StreamTranslator):
    """A Responses event stream relayed as it comes.  The terminal event gives the
    usage and the Response (kept for the gateway's copy); an `error` event is raised."""

    def __init__(self, reply: Reply, target: Target, output: NativeResponsesOutput) -> None:
        super().__init__(reply)
        self.adapter = target.adapter
        self.output = output
        self.ended = False

    def feed(self, event: Event) -> list[Chunk]:
        name = event.event
        if name in _TEXT_DELTAS:
            delta = orjson.loads(event.data).get("delta")
            if type(delta) is str:
                self.reply.relayed_chars += len(delta)
        elif name in _TERMINAL:
            response = self.adapter.parse_json(event.data).get("response")
            if type(response) is dict:
                self.usage = hub_usage(response.get("usage"))
                self.output.final = response
            self.ended = True
        elif name == "error":
            data = self.adapter.parse_json(event.data)
            raise self.adapter.error_from_body(200, data if "error" in data else {"error": data}, {})
        head = b"event: " + name.encode() + b"\n" if name else b""
        return [head + b"data: " + event.data + b"\n\n"]

    def finish(self) -> list[Chunk]:
        if not self.ended:
            raise truncated(self.adapter.provider)
        return []


def hub_usage(usage: Any) -> Json | None:
    """A Responses `usage` in the hub's (chat) terms, for the row and the limits."""
    if type(usage) is not dict:
        return None
    details_in = usage.get("input_tokens_details") if type(usage.get("input_tokens_details")) is dict else {}
    details_out = usage.get("output_tokens_details") if type(usage.get("output_tokens_details")) is dict else {}
    return usage_dict(
        _count(usage.get("input_tokens")), _count(usage.get("output_tokens")),
        cached=_count(details_in.get("cached_tokens")), reasoning=_count(details_out.get("reasoning_tokens")),
    )  # fmt: skip


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0
