"""Anthropic Messages API behind the OpenAI Chat Completions contract.

The client speaks OpenAI; this module turns its request into a Messages API call
and every answer (JSON, SSE event, error) back into OpenAI's shapes.  The choices
where the two APIs do not line up, all deliberate:

- **System text.**  Every `system` and `developer` message, wherever it stands, is
  one block of `system`, in order.  A conversation with nothing but system text is
  sent as one user turn, so it still gets an answer as it would from OpenAI.
- **Turns.**  Consecutive same-role messages are merged (`tool` messages become
  `tool_result` blocks of one user turn, results first); empty ones are dropped; a
  conversation that opens with an assistant turn gets a one-character user turn
  (".") in front, because the API insists on a user turn first.  The OpenAI rules
  on tool calls (every call answered by the next `tool` messages, no stray results)
  are checked here and answered with OpenAI's 400, naming the message.
- **Tool-call ids** from another provider that Anthropic would refuse (Kimi's
  `functions.Bash:0`) or that carry another provider's state (Gemini's signed
  ids) go up in a short deterministic form, the same for the `tool_use` and its
  `tool_result` (tool_ids.py); Anthropic's own ids go up as they are.
- **max_tokens.**  Anthropic requires it: when the client sends neither
  `max_completion_tokens` nor `max_tokens`, the model's `max_tokens:` from the
  config is used, else the provider's, else `DEFAULT_MAX_TOKENS` (4096).
- **temperature.**  Both APIs divide the logits by the same temperature and both
  default to 1, so 0..1 is sent unchanged; OpenAI's 1..2 (hotter than Anthropic
  allows) is clamped to 1.0.  Scaling everything by 1/2 would silently turn a
  client's "default randomness" (1.0) into 0.5.
- **stop.**  A string becomes a one-item `stop_sequences`.  A whitespace-only stop
  (say "\\n") is a 400: Anthropic refuses it and dropping it would change the answer.
- **user / safety_identifier -> metadata.user_id**, as the sha256 hex of the
  value: Anthropic wants an opaque id and rejects ones that look like an e-mail
  address or phone number, which OpenAI clients often send.
- **JSON mode** (`response_format` json_object / json_schema) uses a forced tool,
  `json_answer`, whose `input_schema` is the client's schema (`{"type":"object"}`
  for json_object); its input comes back as the message `content` (streamed as
  `content` deltas) with `finish_reason` "stop".  That works on every Claude
  model, unlike `output_config.format`.  When the client also passes tools the
  choice is `any` (call one of yours, or answer through `json_answer`); with
  thinking on, forcing is not allowed, so the choice is `auto` and the system text
  asks for the tool: best effort there, and a streamed answer may then carry a
  sentence of text before the JSON.  A client tool may not be called `json_answer`.
- **reasoning_effort -> thinking** `{"type": "enabled", "budget_tokens": N}`:
  low 1024, medium 4096, high 16384, xhigh/max 32000; none/minimal -> no thinking.
  Without a client `max_tokens` the output budget becomes budget + the default, so
  the visible answer keeps its room; with one, the budget shrinks to fit (the API
  wants 1024 <= budget < max_tokens).  As with OpenAI's reasoning models, a
  `temperature` other than 1, `top_p` below 0.95 (Anthropic's floor when
  thinking) and a forced `tool_choice` are 400s.
- **Thinking round trip.**  Thinking comes back as `reasoning_content` (the field
  DeepSeek-style clients read: on the message, or as deltas) plus
  `reasoning_signature`, an extra string on the message (one delta just before
  the finish chunk when streaming, so clients that concatenate deltas get it
  whole).  It is Anthropic's own signature when the turn had exactly one
  thinking block; otherwise (several blocks, or `redacted_thinking`) it is
  `thinking-blocks.v1:` + base64url(JSON of the blocks, exactly as received).  An
  assistant message sent back with these fields is sent to Anthropic with its
  thinking block(s) first, unmodified, so a tool loop with thinking works.  When
  thinking is on but the final assistant turn has `tool_use` (or is a trailing
  prefill) without thinking (the client dropped the extra fields), thinking is
  turned off for that request: the API would refuse it otherwise, and itself
  suggests exactly that.  Thinking blocks are never sent when thinking is off
  (the API refuses that too).
- **Parameters.**  `n` > 1, `logprobs`, non-zero penalties, `logit_bias`, audio
  and other things Anthropic cannot do are 400s naming the parameter; values
  equal to OpenAI's defaults, and `seed`, `store`, `metadata`, `service_tier`,
  `prompt_cache_key`, `verbosity` "medium"... are dropped, as they change nothing
  the client could see.  A part's `cache_control` (Anthropic prompt caching, as
  some OpenAI clients send it) is passed through.  A tool's `strict` is dropped.
- **Response.**  Text blocks are joined; `tool_use` -> `tool_calls` (the `toolu_`
  id kept, `"{}"` for a tool without input); the id of the answer is Anthropic's
  `msg_` id; stop_reason -> finish_reason as `_FINISH` says (refusal ->
  content_filter, pause_turn -> stop with what was produced so far).  Usage:
  prompt = input + cache read + cache creation, cached = cache read, cache writes
  in `cache_write_tokens`; stream usage is cumulative (the last value wins).
- **Errors.**  Anthropic's statuses go through `Adapter.upstream_error`: 401/403
  and 500 -> 502, 529 overloaded -> 503 with Retry-After, 429 keeps Retry-After,
  413 stays 413; 402 billing is the operator's problem -> 502.  An `error` event
  mid-stream is mapped the same way (by its type) and ends the stream.

Modules: request.py (the Messages body: parameters, thinking budget, sampling),
conversation.py (messages -> system blocks and turns), tools.py (tools,
tool_choice, JSON mode), thinking.py (the `reasoning_signature` codec),
response.py (Message -> chat completion, usage), stream.py (events -> chunks);
here: the adapter and its error mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.providers.anthropic.conversation import OPENING_TURN
from gateway.providers.anthropic.request import (
    DEFAULT_MAX_TOKENS,
    MIN_THINKING_BUDGET,
    NO_THINKING,
    THINKING_BUDGETS,
    build_messages_request,
)
from gateway.providers.anthropic.response import _finish_reason, _message_from_blocks, anthropic_usage
from gateway.providers.anthropic.stream import _AnthropicStream
from gateway.providers.anthropic.thinking import BLOCKS_PREFIX, encode_reasoning
from gateway.providers.anthropic.tools import JSON_TOOL
from gateway.providers.base import Adapter, Json, Reply, Route, StreamTranslator, UpstreamRequest

__all__ = [
    "ANTHROPIC_VERSION",
    "BLOCKS_PREFIX",
    "DEFAULT_MAX_TOKENS",
    "JSON_TOOL",
    "MIN_THINKING_BUDGET",
    "NO_THINKING",
    "OPENING_TURN",
    "THINKING_BUDGETS",
    "AnthropicAdapter",
    "anthropic_usage",
    "build_messages_request",
    "encode_reasoning",
]

ANTHROPIC_VERSION: Final = "2023-06-01"

# Anthropic's error types by the HTTP status they come with (for errors met mid-stream).
_ERROR_STATUS: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicAdapter(Adapter):
    kind = "anthropic"

    def chat_request(self, body: Json, route: Route, stream: bool) -> UpstreamRequest:
        payload = build_messages_request(body, route, stream)
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION, **self.provider.headers}
        if self.provider.api_key:
            headers["x-api-key"] = self.provider.api_key
        base = self.provider.base_url.removesuffix("/v1")  # accept either spelling of the base URL
        return UpstreamRequest(f"{base}/v1/messages", headers, orjson.dumps(payload))

    def chat_response(self, data: bytes, route: Route, reply: Reply) -> Json:
        message = self.parse_json(data)
        if message.get("type") == "error":
            raise self.error_from_body(0, message, {})
        content = message.get("content")
        if not isinstance(content, list):
            raise UpstreamError(f"The {self.provider.name} provider returned a message without content.")
        if isinstance(message.get("id"), str) and message["id"]:
            reply.upstream_id = message["id"]  # Anthropic's id: support tickets quote it (the usage row keeps it)
        out, called_tools = _message_from_blocks([b for b in content if isinstance(b, dict)])
        choice = {
            "index": 0,
            "message": out,
            "logprobs": None,
            "finish_reason": _finish_reason(message.get("stop_reason"), called_tools),
        }
        return reply.completion([choice], anthropic_usage(message.get("usage")))

    def stream_translator(self, route: Route, reply: Reply) -> StreamTranslator:
        return _AnthropicStream(reply, self)

    def error_from_body(self, status: int, body: Any, headers: Mapping[str, str]) -> GatewayError:
        """`status` 0: an error inside a 200 answer or a stream; its type tells the status."""
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            err = {}
        err_type = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message") or "")
        if not status:
            status = _ERROR_STATUS.get(err_type or "", 500)
        if status == 402:  # the gateway's Anthropic account cannot pay: not the caller's doing
            return UpstreamError(
                f"The {self.provider.name} provider refused the request for billing reasons (HTTP 402).",
                code="upstream_billing",
            )
        code = "request_too_large" if status == 413 else None
        return self.upstream_error(
            status,
            message,
            type="invalid_request_error" if 400 <= status < 500 and status != 429 else None,
            code=code,
            retry_after=_header(headers, "retry-after"),
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
