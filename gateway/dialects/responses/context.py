"""What every Response of one request shares: its id, its time, and the request's
settings echoed back, as OpenAI echoes them (defaults filled in)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.ids import hex_id

Json = dict[str, Any]


def new_response_id() -> str:
    """`resp_` + 50 hex digits, as OpenAI mints them."""
    return "resp_" + hex_id(200)


@dataclass(slots=True)
class ResponseContext:
    """Per-request facts for rendering: fixed before the upstream call.

    `body` is the Responses create body, already checked by `request.to_hub`.
    `summaries`: the client set `reasoning.summary`, so reasoning text is shown as
    summary parts.  `encrypted_content`: the client listed
    `reasoning.encrypted_content` in `include`; the gateway's own state is emitted
    either way (see `stream.py`), so this is informational."""

    id: str
    created_at: int
    model: str  # the id the client asked for
    body: Json
    summaries: bool = False
    encrypted_content: bool = False
    previous_response_id: str | None = None
    clock: Callable[[], float] = time.time  # completed_at; tests pin it
    echo: Json = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.echo = _echo(self.body)

    @classmethod
    def from_request(cls, body: Json, model: str | None = None, response_id: str | None = None) -> ResponseContext:
        """The context of a checked create body (`model` defaults to the body's)."""
        reasoning = body.get("reasoning") or {}
        return cls(
            id=response_id or new_response_id(),
            created_at=int(time.time()),
            model=model or body["model"],
            body=body,
            summaries=bool(reasoning.get("summary") or reasoning.get("generate_summary")),
            encrypted_content="reasoning.encrypted_content" in (body.get("include") or ()),
            previous_response_id=body.get("previous_response_id"),
        )

    def item_id(self, prefix: str, index: int) -> str:
        """The id of output item `index`: OpenAI's prefix, then hex that starts like the
        response's own id (so the same answer always gets the same ids)."""
        return f"{prefix}{self.id[5:45]}{index:010x}"

    def response(
        self,
        status: str,
        output: list[Json],
        usage: Json | None = None,
        *,
        error: Json | None = None,
        incomplete: str | None = None,
    ) -> Json:
        """A Response object in `status` with these items."""
        echo = self.echo
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(self.clock()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": echo["instructions"],
            "max_output_tokens": echo["max_output_tokens"],
            "max_tool_calls": echo["max_tool_calls"],
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo["parallel_tool_calls"],
            "previous_response_id": self.previous_response_id,
            "prompt_cache_key": echo["prompt_cache_key"],
            "prompt_cache_retention": echo["prompt_cache_retention"],
            "reasoning": echo["reasoning"],
            "safety_identifier": echo["safety_identifier"],
            "service_tier": echo["service_tier"],
            "store": echo["store"],
            "temperature": echo["temperature"],
            "text": echo["text"],
            "tool_choice": echo["tool_choice"],
            "tools": echo["tools"],
            "top_logprobs": echo["top_logprobs"],
            "top_p": echo["top_p"],
            "truncation": echo["truncation"],
            "usage": usage,
            "user": echo["user"],
            "metadata": echo["metadata"],
        }


def _default(body: Json, key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _echo(body: Json) -> Json:
    """The request's settings as a Response shows them (OpenAI's defaults filled in)."""
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    tools = [
        {
            "type": "function",
            "name": tool.get("name"),
            "description": tool.get("description"),
            "parameters": tool.get("parameters"),
            "strict": tool.get("strict"),
        }
        for tool in body.get("tools") or ()
    ]
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "parallel_tool_calls": _default(body, "parallel_tool_calls", True),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": {
            "effort": reasoning.get("effort"),
            "summary": reasoning.get("summary") or reasoning.get("generate_summary"),
        },
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": _default(body, "service_tier", "default"),
        "store": _default(body, "store", True),
        "temperature": _default(body, "temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": _default(body, "tool_choice", "auto"),
        "tools": tools,
        "top_logprobs": _default(body, "top_logprobs", 0),
        "top_p": _default(body, "top_p", 1.0),
        "truncation": _default(body, "truncation", "disabled"),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def usage_of(hub: Any) -> Json | None:
    """Chat usage (prompt/completion tokens and their details) as Responses usage."""
    if not isinstance(hub, dict):
        return None
    prompt, completion = _count(hub.get("prompt_tokens")), _count(hub.get("completion_tokens"))
    total = hub.get("total_tokens")
    prompt_details = hub.get("prompt_tokens_details") or {}
    completion_details = hub.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens")),
            "cache_write_tokens": _count(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(completion_details.get("reasoning_tokens"))},
        "total_tokens": total if type(total) is int else prompt + completion,
    }


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0
