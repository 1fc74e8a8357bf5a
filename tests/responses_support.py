"""Helpers for the Responses dialect tests: fixtures, a chunk accumulator, a stream
runner, and the checks every stream of events must pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from openai_schema import validate_response, validate_response_event

from gateway.dialects.responses.context import ResponseContext
from gateway.dialects.responses.stream import ResponseStream

FIXTURES = Path(__file__).parent / "fixtures"
CLOCK = 1782321659.5  # completed_at of every test response


def load(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def sse_data(name: str) -> list[Any]:
    """The JSON payloads of a recorded SSE file (`[DONE]` left out)."""
    out = []
    for line in (FIXTURES / name).read_bytes().splitlines():
        if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def jsonl(name: str) -> list[Any]:
    return [orjson.loads(line) for line in (FIXTURES / name).read_bytes().splitlines() if line.strip()]


def context(body: dict[str, Any] | None = None, **changes: Any) -> ResponseContext:
    ctx = ResponseContext.from_request({"model": "test-model", "input": "hi", **(body or {})})
    ctx.clock = lambda: CLOCK
    for key, value in changes.items():
        setattr(ctx, key, value)
    return ctx


def completion_of(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat.completion a client would assemble from hub chunks (the test's own
    accumulator: concatenate deltas, tool calls by index)."""
    texts: dict[str, list[str]] = {"content": [], "reasoning_content": [], "refusal": [], "reasoning_signature": []}
    calls: dict[int, dict[str, Any]] = {}
    finish, usage = None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            for key, parts in texts.items():
                if delta.get(key):
                    parts.append(delta[key])
            for fragment in delta.get("tool_calls") or ():
                call = calls.setdefault(fragment["index"], {"id": None, "type": "function",
                                                            "function": {"name": "", "arguments": ""}})  # fmt: skip
                call["id"] = fragment.get("id") or call["id"]
                function = fragment.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts["content"]) or None}
    for key in ("refusal", "reasoning_content", "reasoning_signature"):
        if texts[key]:
            message[key] = "".join(texts[key])
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def run(ctx: ResponseContext, chunks: list[dict[str, Any]], usage: Any = None) -> tuple[list[Any], ResponseStream]:
    stream = ResponseStream(ctx)
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    events += stream.finish(usage)
    return events, stream


def check_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rule a Responses stream must keep (dialects.md A6/A7); returns the
    items of the `output_item.done` events, in order."""
    for event in events:
        validate_response_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    terminal = {"response.completed", "response.incomplete", "response.failed"}
    assert events[-1]["type"] in terminal
    assert sum(e["type"] in terminal for e in events) == 1
    done_items: list[dict[str, Any]] = []
    open_item: dict[str, Any] | None = None
    deltas: dict[tuple[str, int], list[str]] = {}
    for event in events[2:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_item is None, "an item was added while another was open"
            assert event["output_index"] == len(done_items)
            open_item = event["item"]
            assert open_item["id"]
            continue
        assert open_item is not None, f"{kind} outside an item"
        if "output_index" in event:
            assert event["output_index"] == len(done_items)
        if "item_id" in event:
            assert event["item_id"] == open_item["id"]
        if kind.endswith(".delta"):
            deltas.setdefault((kind, event.get("content_index", event.get("summary_index", 0))), []).append(
                event["delta"]
            )
        elif kind == "response.output_text.done":
            assert event["text"] == "".join(deltas.pop(("response.output_text.delta", event["content_index"]), []))
        elif kind == "response.function_call_arguments.done":
            assert event["name"] == open_item["name"]
            assert event["arguments"] == "".join(deltas.pop(("response.function_call_arguments.delta", 0), []))
        elif kind == "response.reasoning_summary_text.done":
            sent = deltas.pop(("response.reasoning_summary_text.delta", event["summary_index"]), [])
            assert event["text"] == "".join(sent)
        elif kind == "response.output_item.done":
            assert event["item"]["id"] == open_item["id"]
            assert event["item"]["type"] == open_item["type"]
            done_items.append(event["item"])
            open_item = None
    assert open_item is None or events[-1]["type"] == "response.failed"
    final = events[-1]["response"]
    validate_response(final)
    assert final["output"] == done_items
    return done_items


def collapsed_types(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of the same delta type collapsed (delta counts differ)."""
    out: list[str] = []
    for event in events:
        kind = event["type"]
        if not (kind.endswith(".delta") and out and out[-1] == kind):
            out.append(kind)
    return out
