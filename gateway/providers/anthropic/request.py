"""OpenAI chat body -> Anthropic Messages body: the parameters (unsupported ones
refused, max_tokens, the thinking budget, sampling, stop, user id), with the
conversation from conversation.py and the tools and JSON mode from tools.py."""

from __future__ import annotations

import hashlib
from typing import Any, Final

from gateway.dialects import fields
from gateway.errors import InvalidRequest
from gateway.providers.anthropic.conversation import _append, _conversation
from gateway.providers.anthropic.thinking import _THINKING_TYPES
from gateway.providers.anthropic.tools import _json_mode, _json_schema, _tool_choice, _tools
from gateway.providers.base import Json, Route
from gateway.providers.messages import max_output_tokens, number, reject_unsupported, stop_list

DEFAULT_MAX_TOKENS: Final = 4096
MIN_THINKING_BUDGET: Final = 1024
THINKING_BUDGETS: Final = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32000, "max": 32000}
NO_THINKING: Final = frozenset({"none", "minimal"})

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


# -- thinking round trip -----------------------------------------------------------------


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
