"""What every provider adapter is made of, and the mechanism they share.

An adapter is sans-IO: it turns an OpenAI request body into an `UpstreamRequest`,
an upstream body into an OpenAI `chat.completion`, upstream SSE events into
`chat.completion.chunk`s (through a `StreamTranslator`, one per stream), and an
upstream error body into a `GatewayError`.  `handlers.py` does all the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from gateway.config import Model, Provider
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.ids import hex_id
from gateway.sse import Event

Json = dict[str, Any]
Chunk = Json | bytes  # a chunk to send: a dict, or an upstream chunk's JSON passed on as it came


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the configured model and its provider."""

    model: Model
    provider: Provider


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class Reply:
    """Per-request facts every translation needs, fixed before the upstream call."""

    model: str  # the id the client asked for; every response and chunk carries it
    # one rule for every translated answer: `chatcmpl-` + ours (clients expect the
    # prefix); the provider's own id goes to the usage row (`upstream_id`).  An
    # OpenAI-kind upstream's chunks pass on as they are, with their own id.
    id: str = field(default_factory=lambda: "chatcmpl-" + hex_id(96))
    upstream_id: str | None = None
    created: int = 0
    include_usage: bool = False
    # characters of answer text sent so far: the completion estimate when no usage comes
    relayed_chars: int = 0
    # a chunk may be handed on as the upstream's own JSON bytes (chat clients); dialects
    # that re-render every chunk want the parsed dict instead of bytes to parse again
    as_bytes: bool = True

    def chunk(self, choices: list[Json], usage: Json | None = None) -> Json:
        out: Json = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = usage
        return out

    def delta(self, delta: Json, finish_reason: str | None = None, index: int = 0) -> Json:
        self.relayed_chars += text_chars(delta)
        return self.chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def completion(self, choices: list[Json], usage: Json | None) -> Json:
        out: Json = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out


def text_chars(message: Json) -> int:
    """Characters of model output in a message or delta: text, reasoning, refusal, tool
    calls' names and arguments (what `limits.estimate_text_tokens` turns into tokens)."""
    n = 0
    for key in ("content", "reasoning_content", "refusal"):
        value = message.get(key)
        if type(value) is str:
            n += len(value)
    calls = message.get("tool_calls")
    if type(calls) is list:
        for call in calls:
            fn = call.get("function") if type(call) is dict else None
            if type(fn) is dict:
                n += sum(len(v) for k in ("name", "arguments") if type(v := fn.get(k)) is str)
    return n


def usage_dict(prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0, total: int | None = None) -> Json:
    usage: Json = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if total is None else total,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    return usage


class StreamTranslator:
    """Turns one upstream stream into OpenAI chunks, event by event.

    `feed` returns the chunks to send now; it raises a `GatewayError` for an
    error event.  `finish` is called at upstream EOF and returns the closing
    chunks, or raises when the stream ended before the upstream said it was
    complete.  `usage` holds OpenAI-shaped usage once known."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.usage: Json | None = None

    def feed(self, event: Event) -> list[Chunk]:
        raise NotImplementedError

    def finish(self) -> list[Chunk]:
        raise NotImplementedError

    def closing(self, finishes: list[tuple[int, str]]) -> list[Json]:
        """The finish chunk per choice, then the usage chunk when the client asked."""
        out = [self.reply.delta({}, reason, index) for index, reason in finishes]
        if self.reply.include_usage:
            out.append(self.reply.chunk([], self.usage))
        return out


def truncated(provider: Provider) -> UpstreamError:
    return UpstreamError(
        f"The {provider.name} stream ended before the answer was complete.", code="upstream_stream_truncated"
    )


class Adapter:
    """Base of the provider adapters; each subclass speaks one upstream protocol."""

    kind: ClassVar[str]

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    # -- chat ------------------------------------------------------------------------------
    def chat_request(self, body: Json, route: Route, stream: bool) -> UpstreamRequest:
        raise NotImplementedError

    def chat_response(self, data: bytes, route: Route, reply: Reply) -> Json:
        raise NotImplementedError

    def stream_translator(self, route: Route, reply: Reply) -> StreamTranslator:
        raise NotImplementedError

    # -- embeddings ------------------------------------------------------------------------
    def embeddings_request(self, body: Json, route: Route) -> UpstreamRequest:
        raise InvalidRequest(
            f"Model '{route.model.id}' does not support embeddings.", param="model", code="unsupported_model"
        )

    def embeddings_response(self, data: bytes, body: Json, route: Route) -> Json:
        raise NotImplementedError

    # -- errors ----------------------------------------------------------------------------
    def error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        """An upstream error answer; the body may be anything, JSON or not."""
        try:
            body: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            body = None
        return self.error_from_body(status, body, headers)

    def error_from_body(self, status: int, body: Any, headers: Mapping[str, str]) -> GatewayError:
        """Map the provider's parsed error body (None when it was not JSON)."""
        raise NotImplementedError

    # -- shared mechanism ------------------------------------------------------------------
    def parse_json(self, data: bytes) -> Json:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"The {self.provider.name} provider returned invalid JSON.") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"The {self.provider.name} provider returned an unexpected body.")
        return parsed

    def upstream_error(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> GatewayError:
        """Map an upstream failure to what our client should see.

        The caller's mistakes (4xx) keep their status; the operator's (a rejected
        upstream key: 401/403) and the provider's (5xx) become 502, overload 503,
        upstream timeouts 504.  Messages are scrubbed of the provider key."""
        name = self.provider.name
        message = self.scrub(message) or f"The {name} provider answered HTTP {status}."
        headers = {"Retry-After": retry_after} if retry_after else None
        if status in (401, 403):
            return UpstreamError(
                f"The {name} provider rejected the gateway's credentials (HTTP {status}); "
                f"the operator must check providers.{name}.api_key.",
                code="upstream_auth_failed",
            )
        if status == 429:
            return RateLimited(
                message, type=type or "rate_limit_error", code=code or "rate_limit_exceeded", headers=headers,
                retryable=True,
            )  # fmt: skip
        if status == 404:
            return NotFound(message, param=param, code=code or "model_not_found")
        if status in (503, 529):
            return ServiceUnavailable(
                f"The {name} provider is overloaded or unavailable: {message}",
                headers=headers or {"Retry-After": "1"},
                retryable=True,
            )
        if status in (408, 504):
            return UpstreamTimeout(f"The {name} provider timed out: {message}", retryable=True)
        if 400 <= status < 500:
            return GatewayError(message, status=status, type=type or "invalid_request_error", code=code, param=param)
        return UpstreamError(f"The {name} provider failed (HTTP {status}): {message}", retryable=status >= 500)

    def scrub(self, text: str) -> str:
        for key in (self.provider.api_key, *self.provider.api_keys):
            if key and key in text:
                text = text.replace(key, "[redacted]")
        return text

    def missing_key_error(self) -> ServiceUnavailable:
        """No upstream key: permanent until the operator acts, so the SDKs must not retry
        it; the variable to set is the operator's business and goes to the log only."""
        return ServiceUnavailable(
            f"Provider '{self.provider.name}' is not configured on this gateway (it has no API key); "
            "contact the gateway's operator.",
            code="provider_not_configured",
            headers={"x-should-retry": "false"},
        )
