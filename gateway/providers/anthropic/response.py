"""Anthropic Message -> OpenAI chat completion: content blocks -> the assistant
message (text, tool calls, reasoning), stop_reason -> finish_reason, usage."""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.providers.anthropic.thinking import encode_reasoning
from gateway.providers.anthropic.tools import JSON_TOOL
from gateway.providers.base import Json, usage_dict

_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a server-tool loop paused: what came so far is the answer
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


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
