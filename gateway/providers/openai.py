"""OpenAI and every OpenAI-compatible server (DeepSeek, Qwen, Moonshot, vLLM, Ollama...).

Near pass-through: the body goes up unchanged but for `model` (rewritten to the
upstream name), `stream_options.include_usage` (always on, so usage is logged
even when the client did not ask; the usage chunk is then dropped on the way back)
and tool-call ids over OpenAI's 40 characters, another provider's (a Gemini id
carries its thought signature), which go up in their short form (tool_ids.py).
Chunks are rewritten only where the contract demands it: the stable `id`, `created`
and the `model` the client asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.providers import tool_ids
from gateway.providers.base import (
    Adapter,
    Chunk,
    Json,
    Reply,
    Route,
    StreamTranslator,
    UpstreamRequest,
    text_chars,
    truncated,
)
from gateway.sse import DONE, Event


class OpenAIAdapter(Adapter):
    kind = "openai"

    def _request(self, path: str, body: Json) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", **self.provider.headers}
        if self.provider.api_key:
            headers["Authorization"] = f"Bearer {self.provider.api_key}"
        return UpstreamRequest(f"{self.provider.base_url}{path}", headers, orjson.dumps(body))

    def chat_request(self, body: Json, route: Route, stream: bool) -> UpstreamRequest:
        upstream = {**body, "model": route.model.upstream}
        if stream:
            options = body.get("stream_options")
            upstream["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        messages = upstream.get("messages")
        if type(messages) is list and (fitted := tool_ids.openai_messages(messages)) is not None:
            upstream["messages"] = fitted  # a copy: the client's body is not ours to change
        return self._request("/chat/completions", upstream)

    def chat_response(self, data: bytes, route: Route, reply: Reply) -> Json:
        completion = self.parse_json(data)
        if "error" in completion:
            raise self.error_from_body(200, completion, {})
        if not isinstance(completion.get("choices"), list):
            raise UpstreamError(f"The {self.provider.name} provider returned a body without choices.")
        completion["model"] = reply.model
        completion.setdefault("object", "chat.completion")
        completion.setdefault("id", reply.id)
        completion.setdefault("created", reply.created)
        return completion

    def stream_translator(self, route: Route, reply: Reply) -> StreamTranslator:
        return _OpenAIStream(reply, self)

    def embeddings_request(self, body: Json, route: Route) -> UpstreamRequest:
        return self._request("/embeddings", {**body, "model": route.model.upstream})

    def embeddings_response(self, data: bytes, body: Json, route: Route) -> Json:
        result = self.parse_json(data)
        if not isinstance(result.get("data"), list):
            raise UpstreamError(f"The {self.provider.name} provider returned a body without data.")
        result["model"] = route.model.id
        return result

    def error_from_body(self, status: int, body: Any, headers: Mapping[str, str]) -> GatewayError:
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):  # some servers send {"error": "text"} or plain text
            err = {"message": err if isinstance(err, str) else ""}
        if status == 200:  # an error inside a 200 body: the provider failed
            status = 502
        code = err.get("code")
        return self.upstream_error(
            status,
            str(err.get("message") or ""),
            type=err.get("type") if isinstance(err.get("type"), str) else None,
            code=str(code) if code is not None else None,
            param=err.get("param") if isinstance(err.get("param"), str) else None,
            retry_after=headers.get("Retry-After"),
        )


class _OpenAIStream(StreamTranslator):
    """Each chunk is parsed (usage, finish and errors must be seen) but re-encoded only
    when it needs more than the byte-level rewrites below: re-encoding every chunk
    was a measurable share of a passthrough stream (scripts/bench)."""

    def __init__(self, reply: Reply, adapter: OpenAIAdapter) -> None:
        super().__init__(reply)
        self.adapter = adapter
        self.done = False
        self.seen_first = False  # a chunk with choices went out: id and time are fixed
        self.finished = False  # saw a finish_reason: EOF without [DONE] is then tolerated
        self.usage_sent = False
        self.upstream_model: str | None = None  # often a dated snapshot of the name asked for
        self.upstream_pair = b""  # `"model":"<upstream_model>"`, rewritten to...
        self.asked_pair = b'"model":' + orjson.dumps(reply.model)  # ...the name the client asked for

    def feed(self, event: Event) -> list[Chunk]:
        if event.data == DONE or self.done:
            self.done = True
            return []
        chunk = self.adapter.parse_json(event.data)
        if "error" in chunk:
            raise self.adapter.error_from_body(200, chunk, {})
        reply = self.reply
        if not self.seen_first:
            self._adopt(chunk)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            choices = []
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        if not choices:
            if usage and reply.include_usage:
                self.usage_sent = True
                return [reply.chunk([], usage) | _extras(chunk)]
            return []  # the usage chunk we asked for on our own behalf, a prelude, a keep-alive
        self.seen_first = True
        as_is = True
        for choice in choices:
            if not isinstance(choice, dict):
                raise UpstreamError(f"The {self.adapter.provider.name} provider sent a malformed chunk.")
            if "index" not in choice or "delta" not in choice or "finish_reason" not in choice:
                as_is = False
                choice.setdefault("index", 0)
                choice.setdefault("delta", {})
                choice.setdefault("finish_reason", None)
            if choice["finish_reason"] is not None:
                self.finished = True
            if type(delta := choice["delta"]) is dict:
                reply.relayed_chars += text_chars(delta)
        if as_is and reply.as_bytes:
            passed = self._as_is(event.data, chunk)
            if passed is not None:
                return [passed]
        chunk["id"] = reply.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = reply.created
        chunk["model"] = reply.model
        if reply.include_usage:
            chunk["usage"] = None  # usage travels in its own chunk, as OpenAI sends it (finish())
        else:
            chunk.pop("usage", None)
        return [chunk]

    def _adopt(self, chunk: Json) -> None:
        """Keep the provider's id (support tickets quote it), time and model name, from
        the first chunk that has them (Azure opens with an empty, choice-less prelude)."""
        if isinstance(chunk.get("id"), str) and chunk["id"]:
            self.reply.id = self.reply.upstream_id = chunk["id"]
        if type(chunk.get("created")) is int and chunk["created"] > 0:
            self.reply.created = chunk["created"]
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.upstream_model = chunk["model"]
            self.upstream_pair = b'"model":' + orjson.dumps(chunk["model"])

    def _as_is(self, data: bytes, chunk: Json) -> bytes | None:
        """The upstream's own bytes when at most `model` and a `"usage":null` the client
        did not ask for differ from what we would send; None when it must be re-encoded.

        A byte rewrite is safe only where its key occurs once in the whole chunk: inside
        a JSON string every quote is escaped, so an unescaped `"model"` is a key (or a
        value "model"), and if it is the only one it is the top-level key we parsed."""
        reply = self.reply
        if (
            chunk.get("id") != reply.id
            or type(chunk.get("created")) is not int
            or chunk["created"] != reply.created
            or chunk.get("object") != "chat.completion.chunk"
            or b"\n" in data  # several `data:` lines joined: re-encode on one line
        ):
            return None
        if reply.include_usage:
            if "usage" not in chunk or chunk["usage"] is not None:
                return None
        elif "usage" in chunk:
            if chunk["usage"] is not None or data.count(b'"usage"') != 1 or data.count(b',"usage":null') != 1:
                return None
            data = data.replace(b',"usage":null', b"")
        model = chunk.get("model")
        if model != reply.model:
            if model != self.upstream_model or data.count(b'"model"') != 1 or data.count(self.upstream_pair) != 1:
                return None
            data = data.replace(self.upstream_pair, self.asked_pair)
        return data

    def finish(self) -> list[Chunk]:
        if not (self.done or self.finished):
            raise truncated(self.adapter.provider)
        if self.reply.include_usage and self.usage is not None and not self.usage_sent:
            # the upstream put usage on its last chunk with choices (DeepSeek and others)
            return [self.reply.chunk([], self.usage)]
        return []


def _extras(chunk: Json) -> Json:
    """Fields of an upstream usage chunk worth keeping besides the ones we rebuild."""
    return {k: chunk[k] for k in ("system_fingerprint", "service_tier") if k in chunk}
