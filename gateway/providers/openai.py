"""OpenAI and every OpenAI-compatible server (DeepSeek, Qwen, Moonshot, vLLM, Ollama...).

Near pass-through: the body goes up unchanged but for `model` (rewritten to the
upstream name) and `stream_options.include_usage` (always on, so usage is logged
even when the client did not ask; the usage chunk is then dropped on the way back).
Chunks are rewritten only where the contract demands it: the stable `id`, `created`
and the `model` the client asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.base import Adapter, Json, Reply, Route, StreamTranslator, UpstreamRequest, truncated
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
    def __init__(self, reply: Reply, adapter: OpenAIAdapter) -> None:
        super().__init__(reply)
        self.adapter = adapter
        self.done = False
        self.seen_first = False
        self.finished = False  # saw a finish_reason: EOF without [DONE] is then tolerated

    def feed(self, event: Event) -> list[Json]:
        if event.data == DONE or self.done:
            self.done = True
            return []
        chunk = self.adapter.parse_json(event.data)
        if "error" in chunk:
            raise self.adapter.error_from_body(200, chunk, {})
        reply = self.reply
        if not self.seen_first and isinstance(chunk.get("id"), str) and chunk["id"]:
            reply.id = chunk["id"]  # keep the provider's id (support tickets quote it); stable from here on
        self.seen_first = True
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            choices = []
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        if not choices:
            if usage and reply.include_usage:
                return [reply.chunk([], usage) | _extras(chunk)]
            return []  # the usage chunk we asked for on our own behalf, or an empty keep-alive
        for choice in choices:
            choice.setdefault("index", 0)
            choice.setdefault("delta", {})
            if choice.setdefault("finish_reason", None) is not None:
                self.finished = True
        chunk["id"] = reply.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = reply.created
        chunk["model"] = reply.model
        if reply.include_usage:
            chunk["usage"] = None if not choices or not usage else usage
        else:
            chunk.pop("usage", None)
        return [chunk]

    def finish(self) -> list[Json]:
        if not (self.done or self.finished):
            raise truncated(self.adapter.provider)
        return []


def _extras(chunk: Json) -> Json:
    """Fields of an upstream usage chunk worth keeping besides the ones we rebuild."""
    return {k: chunk[k] for k in ("system_fingerprint", "service_tier") if k in chunk}
