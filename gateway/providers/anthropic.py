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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.dialects import fields
from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.providers import tool_ids
from gateway.providers.base import (
    Adapter,
    Json,
    Reply,
    Route,
    StreamTranslator,
    UpstreamRequest,
    truncated,
    usage_dict,
)
from gateway.providers.messages import (
    SYSTEM_ROLES,
    image_of,
    max_output_tokens,
    number,
    parts_of,
    reject_unsupported,
    stop_list,
    text_of,
    tool_arguments,
)
from gateway.sse import Event
from gateway.validation import check_content

ANTHROPIC_VERSION: Final = "2023-06-01"
DEFAULT_MAX_TOKENS: Final = 4096
JSON_TOOL: Final = "json_answer"
MIN_THINKING_BUDGET: Final = 1024
THINKING_BUDGETS: Final = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32000, "max": 32000}
NO_THINKING: Final = frozenset({"none", "minimal"})
BLOCKS_PREFIX: Final = "thinking-blocks.v1:"  # Anthropic signatures are plain base64: never contain ':'
OPENING_TURN: Final = "."  # the API wants a user turn first; the smallest non-empty one

_IMAGE_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_THINKING_TYPES: Final = frozenset({"thinking", "redacted_thinking"})

# Fields this adapter translates, and OpenAI-only fields whose absence upstream changes nothing visible.
_TRANSLATED: Final = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "user",
        "safety_identifier",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
    }
)
_HARMLESS: Final = frozenset({"n", "seed", "store", "metadata", "service_tier", "prompt_cache_key"})
# Values that mean "OpenAI's default": sending them is the same as not sending them.
_NEUTRAL: Final[dict[str, tuple[Any, ...]]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "verbosity": ("medium",),
}

_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server-tool loop paused: what came so far is the answer
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
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


# ---------------------------------------------------------------------------------------
# Request: OpenAI -> Anthropic


def build_messages_request(body: Json, route: Route, stream: bool) -> Json:
    """The Messages API body for an OpenAI chat request (raises `InvalidRequest`)."""
    reject_unsupported(
        {k: v for k, v in body.items() if v not in _NEUTRAL.get(k, ())}, "Anthropic", _TRANSLATED, _HARMLESS
    )
    system, turns = _conversation(body["messages"])
    payload: Json = {"model": route.model.upstream, "messages": turns}
    tools = _tools(body.get("tools"))
    json_schema = _json_schema(body.get("response_format"))
    effort = _effort(body)
    thinking = effort is not None and not _final_turn_lacks_thinking(turns)
    payload["max_tokens"] = _max_tokens(body, route, effort if thinking else None)
    if thinking:
        budget = _thinking_budget(payload["max_tokens"], effort)
        payload["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        _strip_thinking(turns)
    _sampling(body, payload, effort is not None)
    tool_choice = _tool_choice(body, tools, effort is not None)
    if json_schema is not None:
        tools, tool_choice, hint = _json_mode(json_schema, tools, tool_choice, thinking)
        if hint:
            system.append({"type": "text", "text": hint})
    if tools:
        payload["tools"] = tools
        if tool_choice is not None:
            payload["tool_choice"] = tool_choice
    if system:
        payload["system"] = system
    user_id = _user_id(body)
    if user_id:
        payload["metadata"] = {"user_id": user_id}
    if stream:
        payload["stream"] = True
    return payload


def _user_id(body: Json) -> str | None:
    """An opaque id for the end user: Anthropic refuses ids that look like e-mail addresses."""
    name = "safety_identifier" if body.get("safety_identifier") is not None else "user"
    user = body.get(name)
    if user is None or user == "":
        return None
    if not isinstance(user, str):
        raise InvalidRequest(f"'{name}' must be a string.", param=name, code="invalid_type")
    return hashlib.sha256(user.encode()).hexdigest()


def _conversation(messages: list[Any]) -> tuple[list[Json], list[Json]]:
    """(system blocks, alternating user/assistant turns) of an OpenAI message list."""
    system: list[Json] = []
    turns: list[Json] = []
    pending: dict[str, int] = {}  # tool calls of the last assistant turn still waiting for a result
    for i, message in enumerate(messages):
        where, role = f"messages[{i}]", message.get("role")
        check_content(message.get("content"), where)
        if role in SYSTEM_ROLES:
            system.extend(_text_blocks(message.get("content"), where))
            continue
        if role == "tool":
            blocks = [_tool_result(message, where, pending)]
            role = "user"
        else:
            _check_answered(pending, where)
            if role == "user":
                blocks = _user_blocks(message.get("content"), where)
            elif role == "assistant":
                blocks = _assistant_blocks(message, where)
                # the client's ids (errors name them); the blocks carry the ones Anthropic accepts
                pending = {call["id"]: i for call in message.get("tool_calls") or ()}
            else:
                raise InvalidRequest(
                    f"{where}.role '{role}' is not supported by Anthropic models; use 'tool' messages.",
                    param=f"{where}.role",
                    code="invalid_value",
                )
        _append(turns, role, blocks)
    _check_answered(pending, "the end of the messages")
    return _finish_turns(system, turns)


def _append(turns: list[Json], role: str, blocks: list[Json]) -> None:
    """Add a turn, merging it into the previous one when the role repeats (the API alternates)."""
    if not blocks:
        return  # an empty message: the API rejects empty content
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _finish_turns(system: list[Json], turns: list[Json]) -> tuple[list[Json], list[Json]]:
    if not turns:
        if not system:
            raise InvalidRequest("The messages have no content to send.", param="messages", code="invalid_value")
        return [], [{"role": "user", "content": system}]  # system-only: OpenAI answers it, so do we
    for turn in turns:
        if turn["role"] == "assistant":  # merged turns: the API wants all thinking ahead of the rest
            turn["content"].sort(key=lambda b: b["type"] not in _THINKING_TYPES)
    if turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_TURN}]})
    last = turns[-1]["content"][-1]
    if turns[-1]["role"] == "assistant" and last["type"] == "text":
        last["text"] = last["text"].rstrip()  # a prefill may not end in whitespace (blank text never gets here)
    return system, turns


def _check_answered(pending: dict[str, int], where: str) -> None:
    if pending:
        ids = ", ".join(sorted(pending))
        first = min(pending.values())
        raise InvalidRequest(
            f"An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'; messages[{first}] has calls not answered before {where}: {ids}.",
            param=f"messages[{first}]",
            code="invalid_value",
        )


def _text_blocks(content: Any, where: str) -> list[Json]:
    """System text: one block per part, keeping `cache_control`; blank text dropped."""
    blocks = []
    for j, part in enumerate(parts_of(content, where)):
        if part.get("type") != "text":
            raise InvalidRequest(
                f"{where}.content[{j}]: only text parts are allowed here.",
                param=f"{where}.content[{j}]",
                code="invalid_value",
            )
        blocks.extend(_text_block(part, f"{where}.content[{j}]"))
    return blocks


def _text_block(part: Json, where: str) -> list[Json]:
    text = part.get("text")  # a string: check_content saw to it
    if not text.strip():
        return []  # the API rejects empty and blank text blocks
    return [_cached({"type": "text", "text": text}, part, where)]


def _cached(block: Json, part: Json, where: str) -> Json:
    control = fields.obj(part, "cache_control", f"{where}.cache_control")
    if control is not None:
        block["cache_control"] = control
    return block


def _user_blocks(content: Any, where: str) -> list[Json]:
    blocks: list[Json] = []
    for j, part in enumerate(parts_of(content, where)):
        here, kind = f"{where}.content[{j}]", part.get("type")
        if kind == "text":
            blocks.extend(_text_block(part, here))
        elif kind == "image_url":
            blocks.append(_cached(_image_block(part, here), part, here))
        elif kind == "file":
            blocks.append(_cached(_document_block(part, here), part, here))
        else:
            raise InvalidRequest(
                f"{here}: parts of type {kind!r} are not supported by Anthropic models "
                f"(text, image_url and PDF file parts are).",
                param=f"{here}.type",
                code="unsupported_value",
            )
    return blocks


def _image_block(part: Json, where: str) -> Json:
    image = image_of(part, where)
    if image.url is not None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    if image.mime not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"{where}.image_url.url: Anthropic models accept JPEG, PNG, GIF and WebP images, not {image.mime}.",
            param=f"{where}.image_url.url",
            code="invalid_value",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": image.data}}


def _document_block(part: Json, where: str) -> Json:
    spec = part.get("file")
    data = spec.get("file_data") if isinstance(spec, dict) else None
    prefix = "data:application/pdf;base64,"
    if not isinstance(data, str) or not data.startswith(prefix):
        raise InvalidRequest(
            f"{where}.file: Anthropic models accept files as PDF data (file_data: {prefix}...); "
            f"file ids and other types are not supported.",
            param=f"{where}.file",
            code="unsupported_value",
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data[len(prefix) :]},
    }


def _assistant_blocks(message: Json, where: str) -> list[Json]:
    blocks = _thinking_blocks(message, where)
    text = text_of(message.get("content"), where)
    if text.strip():
        blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be an array.", param=f"{where}.tool_calls")
    for j, call in enumerate(calls):
        call_id, name, args = tool_arguments(call, f"{where}.tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": tool_ids.for_anthropic(call_id), "name": name, "input": args})
    return blocks


def _tool_result(message: Json, where: str, pending: dict[str, int]) -> Json:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in pending:
        raise InvalidRequest(
            f"{where}: messages with role 'tool' must be a response to a preceding message with 'tool_calls'; "
            f"no pending call has id {call_id!r}.",
            param=f"{where}.tool_call_id",
            code="invalid_value",
        )
    del pending[call_id]
    block: Json = {"type": "tool_result", "tool_use_id": tool_ids.for_anthropic(call_id)}
    text = text_of(message.get("content"), where)
    if text.strip():
        block["content"] = text
    return block


# -- thinking round trip -----------------------------------------------------------------


def encode_reasoning(blocks: list[Json]) -> str | None:
    """The `reasoning_signature` for a turn's thinking blocks (see the module docstring)."""
    if not blocks:
        return None
    if len(blocks) == 1 and blocks[0]["type"] == "thinking":
        return blocks[0]["signature"]
    return BLOCKS_PREFIX + base64.urlsafe_b64encode(orjson.dumps(blocks)).decode()


def _thinking_blocks(message: Json, where: str) -> list[Json]:
    """The thinking blocks an assistant message carries back, exactly as Anthropic sent them."""
    signature = message.get("reasoning_signature")
    if signature is None or signature == "":
        return []  # reasoning_content alone cannot be replayed: the API needs the signature
    param = f"{where}.reasoning_signature"
    if not isinstance(signature, str):
        raise InvalidRequest(f"{param} must be a string.", param=param, code="invalid_type")
    if not signature.startswith(BLOCKS_PREFIX):
        reasoning = fields.string(message, "reasoning_content", f"{where}.reasoning_content")
        return [{"type": "thinking", "thinking": reasoning or "", "signature": signature}]
    try:
        blocks = orjson.loads(base64.urlsafe_b64decode(signature[len(BLOCKS_PREFIX) :]))
    except (binascii.Error, ValueError):
        blocks = None
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and b.get("type") in _THINKING_TYPES for b in blocks
    ):
        raise InvalidRequest(f"{param} is damaged; send it back as received.", param=param, code="invalid_value")
    return blocks


def _final_turn_lacks_thinking(turns: list[Json]) -> bool:
    """With thinking on, the final assistant turn must start with its thinking when it
    called tools (the loop in progress) or ends the conversation (a prefill)."""
    last = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    if last is None:
        return False
    if last is not turns[-1] and not any(b["type"] == "tool_use" for b in last["content"]):
        return False
    return last["content"][0]["type"] not in _THINKING_TYPES


def _strip_thinking(turns: list[Json]) -> None:
    """Thinking off: the API refuses thinking blocks in the final assistant turn, and ignores them elsewhere."""
    kept: list[Json] = []
    for turn in turns:
        _append(kept, turn["role"], [b for b in turn["content"] if b["type"] not in _THINKING_TYPES])
    turns[:] = kept


def _effort(body: Json) -> str | None:
    """The thinking effort asked for, or None for no thinking."""
    effort = fields.choice(body, "reasoning_effort", "reasoning_effort", (*sorted(NO_THINKING), *THINKING_BUDGETS))
    return None if effort is None or effort in NO_THINKING else effort


def _max_tokens(body: Json, route: Route, effort: str | None) -> int:
    given = max_output_tokens(body)
    if given is not None:
        if effort is not None and given <= MIN_THINKING_BUDGET:
            name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
            raise InvalidRequest(
                f"'{name}' must be over {MIN_THINKING_BUDGET} with 'reasoning_effort' on Anthropic models: "
                f"their smallest thinking budget is {MIN_THINKING_BUDGET} tokens.",
                param=name,
                code="invalid_value",
            )
        return given
    default = route.model.max_tokens or route.provider.max_tokens or DEFAULT_MAX_TOKENS
    if effort is None:
        return default
    return max(default, THINKING_BUDGETS[effort] + default)  # thinking must not eat the answer's room


def _thinking_budget(max_tokens: int, effort: str) -> int:
    # budget_tokens must be >= 1024 and < max_tokens; leave the answer at least 1024 when it can be
    return max(MIN_THINKING_BUDGET, min(THINKING_BUDGETS[effort], max_tokens - MIN_THINKING_BUDGET))


def _sampling(body: Json, payload: Json, thinking: bool) -> None:
    temperature = number(body, "temperature", 0, 2)
    top_p = number(body, "top_p", 0, 1)
    if thinking:
        # Anthropic rejects sampling changes with thinking; OpenAI's reasoning models do the same
        if temperature is not None and temperature != 1:
            raise InvalidRequest(
                "Unsupported value: 'temperature' does not support values other than 1 with 'reasoning_effort' "
                "on Anthropic models.",
                param="temperature",
                code="unsupported_value",
            )
        if top_p is not None and top_p < 0.95:
            raise InvalidRequest(
                "Unsupported value: 'top_p' must be at least 0.95 with 'reasoning_effort' on Anthropic models.",
                param="top_p",
                code="unsupported_value",
            )
        temperature = None
    if temperature is not None:
        payload["temperature"] = min(float(temperature), 1.0)  # same scale; 1..2 is hotter than Anthropic allows
    if top_p is not None:
        payload["top_p"] = top_p
    stops = stop_list(body)
    if stops:
        if any(not s.strip() for s in stops):
            raise InvalidRequest(
                "'stop': Anthropic models do not accept empty or whitespace-only stop sequences.",
                param="stop",
                code="unsupported_value",
            )
        payload["stop_sequences"] = stops


# -- tools and JSON mode -----------------------------------------------------------------


def _tools(raw: Any) -> list[Json]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools", code="invalid_type")
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidRequest(
                f"{where}: only function tools are supported by Anthropic models.",
                param=f"{where}.type",
                code="unsupported_value",
            )
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.function.name is required.", param=f"{where}.function.name")
        if name == JSON_TOOL:
            raise InvalidRequest(
                f"{where}.function.name: '{JSON_TOOL}' is reserved by the gateway for JSON mode.",
                param=f"{where}.function.name",
                code="invalid_value",
            )
        schema = fields.obj(function, "parameters", f"{where}.function.parameters") or {}
        if schema.get("type") not in (None, "object"):  # Anthropic takes object schemas only
            raise InvalidRequest(
                f"{where}.function.parameters.type must be 'object' for Anthropic models.",
                param=f"{where}.function.parameters.type",
                code="invalid_value",
            )
        # the last `type` also replaces a null one, which the API refuses
        entry: Json = {"name": name, "input_schema": {"type": "object", "properties": {}} | schema | {"type": "object"}}
        description = fields.string(function, "description", f"{where}.function.description")
        if description:
            entry["description"] = description
        tools.append(entry)
    return tools


def _tool_choice(body: Json, tools: list[Json], thinking: bool) -> Json | None:
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        mapped: Json | None = {"type": "auto"} if choice == "auto" else None
    elif choice == "none":
        mapped = {"type": "none"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = fields.required_string(choice["function"], "name", "tool_choice.function.name")
        mapped = {"type": "tool", "name": name}
        if mapped["name"] not in {t["name"] for t in tools}:
            raise InvalidRequest(
                f"'tool_choice' names the function {mapped['name']!r}, which is not in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
    else:
        raise InvalidRequest(
            "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", ...} for Anthropic models.",
            param="tool_choice",
            code="unsupported_value",
        )
    if mapped is not None and mapped["type"] in ("any", "tool"):
        if not tools:
            raise InvalidRequest(
                "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice", code="invalid_value"
            )
        if thinking:
            raise InvalidRequest(
                "Anthropic models cannot be forced to call a tool while thinking: use 'tool_choice' 'auto' "
                "or drop 'reasoning_effort'.",
                param="tool_choice",
                code="unsupported_value",
            )
    if (
        fields.boolean(body, "parallel_tool_calls", "parallel_tool_calls") is False
        and tools
        and (mapped is None or mapped["type"] != "none")
    ):
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    return mapped


def _json_schema(response_format: Any) -> Json | None:
    """The schema JSON mode must follow, or None when the client did not ask for JSON."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            return {"type": "object"}
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise InvalidRequest(
                "'response_format.json_schema.schema' must describe a JSON object for Anthropic models.",
                param="response_format.json_schema.schema",
                code="invalid_value",
            )
        return schema
    raise InvalidRequest(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
        param="response_format",
        code="invalid_value",
    )


def _json_mode(
    schema: Json, tools: list[Json], choice: Json | None, thinking: bool
) -> tuple[list[Json], Json | None, str | None]:
    """(tools, tool_choice, system hint) that make the answer arrive as the input of `JSON_TOOL`."""
    kind = choice["type"] if choice else "auto"
    if kind in ("any", "tool"):
        return tools, choice, None  # the client wants a tool call, which is never the JSON answer
    answer = {
        "name": JSON_TOOL,
        "description": "Give your final answer by calling this tool: its input is the answer, as JSON.",
        "input_schema": schema,
    }
    if kind == "none":
        tools = []  # the client's tools may not be called; only the answer tool remains
    tools = [*tools, answer]
    serial = {"disable_parallel_tool_use": True} if choice and choice.get("disable_parallel_tool_use") else {}
    if thinking:  # forcing a tool is not allowed while thinking: ask instead
        hint = f"Answer only by calling the {JSON_TOOL} tool, with no text before or after it."
        return tools, {"type": "auto", **serial}, hint
    if len(tools) > 1:
        hint = f"When you have the final answer, give it by calling the {JSON_TOOL} tool."
        return tools, {"type": "any", **serial}, hint
    return tools, {"type": "tool", "name": JSON_TOOL}, None


# ---------------------------------------------------------------------------------------
# Response: Anthropic -> OpenAI


def _message_from_blocks(blocks: list[Json]) -> tuple[Json, bool]:
    """(OpenAI assistant message, whether it calls client tools) from a message's content blocks."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking: list[Json] = []
    calls: list[Json] = []
    answer: str | None = None
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
            thinking.append(
                {"type": "thinking", "thinking": block.get("thinking") or "", "signature": block.get("signature") or ""}
            )
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": block.get("data") or ""})
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if block.get("name") == JSON_TOOL:
                answer = arguments
            else:
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": arguments},
                    }
                )
        # server-tool blocks and future types carry nothing an OpenAI client could read
    content = answer if answer is not None else "".join(texts)  # JSON mode: the answer alone is the content
    message: Json = {"role": "assistant", "content": content or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    signature = encode_reasoning(thinking)
    if signature:
        message["reasoning_signature"] = signature
    return message, bool(calls)


def _finish_reason(stop_reason: Any, called_tools: bool) -> str:
    reason = _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    if reason == "tool_calls" and not called_tools:
        return "stop"  # only the JSON-mode tool was called: that is a final answer
    return reason


def anthropic_usage(raw: Any) -> Json | None:
    if not isinstance(raw, dict):
        return None
    read, written = _int(raw.get("cache_read_input_tokens")), _int(raw.get("cache_creation_input_tokens"))
    details = raw.get("output_tokens_details")
    reasoning = _int(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    usage = usage_dict(
        _int(raw.get("input_tokens")) + read + written, _int(raw.get("output_tokens")), cached=read, reasoning=reasoning
    )
    usage["prompt_tokens_details"]["cache_write_tokens"] = written
    return usage


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


class _AnthropicStream(StreamTranslator):
    """Messages API events -> OpenAI chunks, one event at a time.

    Content blocks are tracked by Anthropic's block index; tool calls get their
    own running OpenAI index (a text block before a tool must not shift it).  The
    role chunk waits for the first block, which decides its `content`: null before
    a tool call, "" otherwise, as OpenAI opens its own streams."""

    def __init__(self, reply: Reply, adapter: AnthropicAdapter) -> None:
        super().__init__(reply)
        self.adapter = adapter
        self.blocks: dict[int, Json] = {}  # block index -> what we know of that block
        self.thinking: list[Json] = []  # finished thinking blocks, in order, for the signature
        self.calls = 0  # client tool calls emitted so far
        self.raw_usage: Json = {}
        self.stop_reason: Any = None
        self.stopped = False
        self.opened = False  # the role chunk went out

    def feed(self, event: Event) -> list[Json]:
        if self.stopped:
            return []
        data = self.adapter.parse_json(event.data)
        kind = data.get("type")
        if kind == "error":
            raise self.adapter.error_from_body(0, data, {})
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        return handler(self, data) if handler else []  # ping and unknown events carry nothing for us

    def finish(self) -> list[Json]:
        if not self.stopped:
            raise truncated(self.adapter.provider)
        return []

    # -- events ---------------------------------------------------------------------------

    def _on_message_start(self, data: Json) -> list[Json]:
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        if isinstance(message.get("id"), str) and message["id"]:
            self.reply.upstream_id = message["id"]  # Anthropic's id, for the usage row
        self._take_usage(message.get("usage"))
        return []  # the role chunk goes out with the first block (_open)

    def _on_content_block_start(self, data: Json) -> list[Json]:
        block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
        if self.opened:
            return self._start_block(data.get("index"), block)
        tool_call = block.get("type") == "tool_use" and block.get("name") != JSON_TOOL
        return self._open(None if tool_call else "") + self._start_block(data.get("index"), block)

    def _start_block(self, index: Any, block: Json) -> list[Json]:
        kind = block.get("type")
        state: Json = {"type": kind, "args": False}
        self.blocks[index] = state
        if kind == "text":
            return self._content(str(block.get("text") or ""))
        if kind == "thinking":
            state.update(thinking=str(block.get("thinking") or ""), signature=str(block.get("signature") or ""))
            return self._reasoning(state["thinking"])
        if kind == "redacted_thinking":
            self.thinking.append({"type": "redacted_thinking", "data": block.get("data") or ""})
            return []
        if kind != "tool_use":
            return []
        if block.get("name") == JSON_TOOL:
            state["type"] = "answer"  # JSON mode: the tool input is the message content
            return []
        state["call"] = self.calls
        self.calls += 1
        first = {
            "index": state["call"],
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self.reply.delta({"tool_calls": [first]})]

    def _on_content_block_delta(self, data: Json) -> list[Json]:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        state = self.blocks.get(data.get("index"), {})
        kind = delta.get("type")
        if kind == "text_delta":
            return self._content(str(delta.get("text") or ""))
        if kind == "thinking_delta":
            text = str(delta.get("thinking") or "")
            state["thinking"] = state.get("thinking", "") + text
            return self._reasoning(text)
        if kind == "signature_delta":
            state["signature"] = state.get("signature", "") + str(delta.get("signature") or "")
            return []
        if kind == "input_json_delta":
            return self._arguments(state, str(delta.get("partial_json") or ""))
        return []  # citations_delta and future kinds

    def _on_content_block_stop(self, data: Json) -> list[Json]:
        state = self.blocks.get(data.get("index"), {})
        if state.get("type") == "thinking":
            self.thinking.append({"type": "thinking", "thinking": state["thinking"], "signature": state["signature"]})
        if state.get("type") in ("tool_use", "answer") and not state["args"]:
            return self._arguments(state, "{}")  # a tool without input: clients json.loads the arguments
        return []

    def _on_message_delta(self, data: Json) -> list[Json]:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        if delta.get("stop_reason") is not None:
            self.stop_reason = delta["stop_reason"]
        self._take_usage(data.get("usage"))
        return []

    def _on_message_stop(self, data: Json) -> list[Json]:
        self.stopped = True
        out = self._open("")  # an answer without a single block
        signature = encode_reasoning(self.thinking)
        if signature:
            out.append(self.reply.delta({"reasoning_signature": signature}))
        return out + self.closing([(0, _finish_reason(self.stop_reason, self.calls > 0))])

    _handlers: Final = {
        "message_start": _on_message_start,
        "content_block_start": _on_content_block_start,
        "content_block_delta": _on_content_block_delta,
        "content_block_stop": _on_content_block_stop,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
    }

    # -- helpers --------------------------------------------------------------------------

    def _open(self, content: str | None) -> list[Json]:
        if self.opened:
            return []
        self.opened = True
        return [self.reply.delta({"role": "assistant", "content": content})]

    def _content(self, text: str) -> list[Json]:
        return [self.reply.delta({"content": text})] if text else []

    def _reasoning(self, text: str) -> list[Json]:
        return [self.reply.delta({"reasoning_content": text})] if text else []

    def _arguments(self, state: Json, fragment: str) -> list[Json]:
        if not fragment or state.get("type") not in ("tool_use", "answer"):
            return []
        state["args"] = True
        if state["type"] == "answer":
            return self._content(fragment)
        return [self.reply.delta({"tool_calls": [{"index": state["call"], "function": {"arguments": fragment}}]})]

    def _take_usage(self, raw: Any) -> None:
        """Usage is cumulative: every value present replaces the one before."""
        if isinstance(raw, dict):
            self.raw_usage.update({k: v for k, v in raw.items() if v is not None})
            self.usage = anthropic_usage(self.raw_usage)
