"""Hub output -> Messages answers: the message, errors and the models list.

- Blocks in Anthropic's order: `thinking` (only when the client enabled thinking
  and the hub has `reasoning_content`), `text` (content, or a refusal's text),
  `tool_use` (`input` parsed from the arguments; text that is not a JSON object
  becomes `{}`, logged with the tool's name).  Tool ids outside
  `^[a-zA-Z0-9_-]+$` are shown as `call_` + a hash (state.py).
- State for the next turn (the hub `reasoning_signature`, mapped tool ids) goes
  in the envelope of the last block when that is a thinking block; otherwise in
  one more, empty, thinking block after the tool calls.  Earlier thinking blocks
  carry the empty envelope.  The stream follows the same rule, because in a
  stream the state is only complete at the end (Anthropic signs last), so both
  shapes of one answer are equal.  Without thinking there is nowhere to put
  state: reasoning is not shown, and mapped ids stay mapped (they still match
  between a call and its result; Gemini's signed ids match the pattern as they are).
- stop_reason: `stop` -> `end_turn` (the hub does not say which stop sequence
  matched, so `stop_sequence` is never reported), or `tool_use` when there are
  tool calls whatever the finish reason says (some OpenAI-compatible servers say
  `stop`; Claude Code would end its task), or `refusal` for a refusal text;
  `length` -> `max_tokens`; `content_filter` -> `refusal`.
- usage: `input_tokens` = prompt - cached - cache writes, `cache_read_input_tokens`
  = cached, `cache_creation_input_tokens` = the hub's `cache_write_tokens` (0
  when absent), `output_tokens` = completion (thinking included, as Anthropic counts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from gateway.dialects.messages.request import thinking_enabled
from gateway.dialects.messages.state import EMPTY, client_tool_id, seal
from gateway.errors import GatewayError, InvalidRequest
from gateway.ids import hex_id

if TYPE_CHECKING:
    from gateway.config import Model

Json = dict[str, Any]
log = logging.getLogger(__name__)

_STOP: Final = {
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
}
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class MessageContext:
    """Per-request facts the answer needs, fixed before the upstream call."""

    model: str  # the id the client asked for
    thinking: bool = False  # the client enabled thinking: reasoning and state go out as thinking blocks
    id: str = field(default_factory=lambda: "msg_" + hex_id(96))

    @classmethod
    def for_request(cls, body: Json) -> MessageContext:
        return cls(model=str(body.get("model")), thinking=thinking_enabled(body))


def render_message(completion: Json, ctx: MessageContext) -> Json:
    """The Messages response for a hub `chat.completion`."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    refusal = message.get("refusal")
    text = (message.get("content") or "") + (refusal or "")
    blocks: list[Json] = []
    reasoning = message.get("reasoning_content") if ctx.thinking else None
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": EMPTY})
    if text:
        blocks.append({"type": "text", "text": text})
    ids: dict[str, str] = {}
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call.get("function") or {}
        name = function.get("name") or ""
        call_id = tool_id(call.get("id"), ids)
        arguments = tool_input(function.get("arguments"), name)
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    if ctx.thinking:
        state = seal(message.get("reasoning_signature"), ids)
        if blocks and blocks[-1]["type"] == "thinking":
            blocks[-1]["signature"] = state
        elif state != EMPTY:
            blocks.append({"type": "thinking", "thinking": "", "signature": state})
    return {
        "id": ctx.id,
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": blocks,
        "stop_reason": stop_reason(choice.get("finish_reason"), bool(calls), bool(refusal)),
        "stop_sequence": None,
        "usage": usage(completion.get("usage")),
    }


def tool_id(upstream_id: Any, ids: dict[str, str]) -> str:
    """The id to show for an upstream tool-call id, recording a mapping in `ids`."""
    if not isinstance(upstream_id, str) or not upstream_id:
        return "toolu_" + hex_id(96)  # an upstream without ids: any unique one will do
    shown = client_tool_id(upstream_id)
    if shown != upstream_id:
        ids[shown] = upstream_id
    return shown


def tool_input(arguments: Any, name: str) -> Json:
    """A tool call's arguments as the `input` object ({} when there are none or they are broken)."""
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        log.warning("tool call %r came with arguments that are not a JSON object; sent as {}", name)
        return {}
    return parsed


def stop_reason(finish_reason: Any, called_tools: bool, refused: bool) -> str:
    reason = _STOP.get(finish_reason) if isinstance(finish_reason, str) else None
    if reason == "max_tokens" or reason == "refusal":
        return reason
    if called_tools:
        return "tool_use"
    return "refusal" if refused else "end_turn"


def usage(hub_usage: Json | None) -> Json:
    """Anthropic usage for the hub's OpenAI-shaped usage (zeros when unknown)."""
    hub_usage = hub_usage or {}
    details = hub_usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    return {
        "input_tokens": max((hub_usage.get("prompt_tokens") or 0) - cached - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": hub_usage.get("completion_tokens") or 0,
    }


def render_error(exc: GatewayError) -> tuple[int, Json]:
    """(HTTP status, body) of Anthropic's error envelope for a gateway error.  An
    overload (a retryable 503: upstream overloaded, provider queue full) is 529
    `overloaded_error`, as Anthropic says it; the error's own headers (Retry-After,
    x-should-retry) still belong on the response."""
    status = exc.status
    if status == 503 and exc.retryable:
        status = 529
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    message = exc.message
    if exc.param and exc.param not in message:
        message = f"{exc.param}: {message}"
    return status, {"type": "error", "error": {"type": kind, "message": message}}


def render_model(model: Model) -> Json:
    created = datetime.fromtimestamp(model.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": model.id, "display_name": model.id, "created_at": created}


def render_models(
    models: Sequence[Model], *, limit: int | None = None, after_id: str | None = None, before_id: str | None = None
) -> Json:
    """Anthropic's models page, in the order given.  `limit` (1..1000) and the
    `after_id` / `before_id` cursors page as Anthropic does; no limit = all."""
    ids = [m.id for m in models]
    start, end = 0, len(models)
    for name, cursor in (("after_id", after_id), ("before_id", before_id)):
        if cursor is not None and cursor not in ids:
            raise InvalidRequest(f"{name}: no model '{cursor}' in this list.", param=name, code="invalid_value")
    if after_id is not None:
        start = ids.index(after_id) + 1
    if before_id is not None:
        end = ids.index(before_id)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidRequest("limit: must be an integer between 1 and 1000.", param="limit", code="invalid_value")
        if before_id is not None and after_id is None:
            start = max(start, end - limit)  # the page just before the cursor
        else:
            end = min(end, start + limit)
    page = [render_model(m) for m in models[start:end]] if start < end else []
    more = (end < len(models)) if before_id is None or after_id is not None else start > 0
    return {
        "data": page,
        "has_more": more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
