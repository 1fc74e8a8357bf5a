"""Responses dialect, hub output -> Responses: `render_response` and `ResponseStream`.

Hub input comes from recordings: real OpenAI chat streams (the OpenAI passthrough's
hub chunks) and what the Anthropic and Gemini adapters made of recorded upstream
traffic (tests/fixtures/SOURCES.md).  Every event is validated against OpenAI's
`ResponseStreamEvent` schema and every Response against `Response`."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from openai_schema import validate_response, validate_response_event
from responses_support import (
    CLOCK,
    check_events,
    collapsed_types,
    completion_of,
    context,
    jsonl,
    load,
    run,
    sse_data,
)

from gateway.dialects import carry
from gateway.dialects.responses.render import render_response
from gateway.dialects.responses.stream import ResponseStream, frame

CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- recorded traffic validates against the schemas (after the extractor's fix-ups) ---------


@pytest.mark.parametrize(
    "name",
    [
        "openai_responses_stream_text.sse",
        "openai_responses_stream_parallel_function_calls.sse",
        "openai_responses_stream_reasoning_summary_text.sse",
        "openai_responses_event_incomplete_max_output_tokens.sse",
    ],
)
def test_recorded_openai_events_validate(name: str) -> None:
    for event in sse_data(name):
        validate_response_event(event)


@pytest.mark.parametrize(
    "name",
    ["openai_response_text.json", "openai_response_reasoning_function_call.json",
     "openai_response_reasoning_encrypted.json"],
)  # fmt: skip
def test_recorded_openai_responses_validate(name: str) -> None:
    validate_response(load(name))


# -- render_response ------------------------------------------------------------------------


def test_render_text_completion() -> None:
    completion = load("openai_chat_completion_text.json")
    response = render_response(completion, context())
    validate_response(response)
    assert response["status"] == "completed" and response["completed_at"] == int(CLOCK)
    [message] = response["output"]
    text = completion["choices"][0]["message"]["content"]
    assert message["type"] == "message" and message["status"] == "completed" and message["role"] == "assistant"
    assert message["content"] == [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
    usage = completion["usage"]
    assert response["usage"] == {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                                 "cache_write_tokens": 0},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]},
        "total_tokens": usage["total_tokens"],
    }  # fmt: skip


def test_render_echoes_the_request_settings() -> None:
    tool = {"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": True}
    body = {
        "instructions": "Be brief.",
        "tools": [tool],
        "tool_choice": {"type": "function", "name": "weather"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}, "verbosity": "low"},
        "reasoning": {"effort": "low", "summary": "auto"},
        "store": False,
        "metadata": {"run": "7"},
        "max_output_tokens": 500,
        "previous_response_id": "resp_abc",
        "temperature": 0.2,
        "top_p": 0.9,
        "truncation": "auto",
        "parallel_tool_calls": False,
        "user": "u-1",
        "safety_identifier": "s-1",
    }
    ctx = context(body)
    response = render_response(load("openai_chat_completion_text.json"), ctx)
    validate_response(response)
    assert response["id"] == ctx.id and re.fullmatch(r"resp_[0-9a-f]{50}", ctx.id)
    assert response["model"] == "test-model"
    assert response["tools"] == [{**tool, "description": None}]
    for key in (
        "instructions",
        "tool_choice",
        "store",
        "metadata",
        "max_output_tokens",
        "previous_response_id",
        "temperature",
        "top_p",
        "truncation",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
    ):
        assert response[key] == body[key], key  # fmt: skip
    assert response["text"] == body["text"]
    assert response["reasoning"] == {"effort": "low", "summary": "auto"}
    defaults = render_response(load("openai_chat_completion_text.json"), context())
    assert (defaults["store"], defaults["tool_choice"], defaults["tools"], defaults["metadata"]) == (
        True, "auto", [], {})  # fmt: skip
    assert defaults["text"] == {"format": {"type": "text"}, "verbosity": "medium"}


def test_render_tool_calls() -> None:
    completion = load("openai_chat_completion_tool_calls.json")
    response = render_response(completion, context())
    validate_response(response)
    calls = completion["choices"][0]["message"]["tool_calls"]
    assert [item["type"] for item in response["output"]] == ["function_call"] * len(calls)
    for item, call in zip(response["output"], calls, strict=True):
        assert re.fullmatch(r"fc_[0-9a-f]{50}", item["id"])
        assert (item["call_id"], item["name"], item["arguments"], item["status"]) == (
            call["id"], call["function"]["name"], call["function"]["arguments"], "completed")  # fmt: skip


def test_render_reasoning_and_signature() -> None:
    """Reasoning first; Anthropic's signature (which adapters send last) rides in a
    state-only reasoning item after the call: the same layout a stream gets."""
    completion = load("openai_chat_completion_reasoning_signature.json")
    message = completion["choices"][0]["message"]
    response = render_response(completion, context({"reasoning": {"summary": "auto"}}))
    validate_response(response)
    assert [i["type"] for i in response["output"]] == ["reasoning", "function_call", "reasoning"]
    first, call, last = response["output"]
    assert first["summary"] == [{"type": "summary_text", "text": message["reasoning_content"]}]
    assert carry.decode(first["encrypted_content"]) == carry.Carried(reasoning_content=message["reasoning_content"])
    assert last["summary"] == []
    assert carry.decode(last["encrypted_content"]) == carry.Carried(reasoning_signature=message["reasoning_signature"])
    assert call["call_id"] == message["tool_calls"][0]["id"]  # a toolu_ id fits: kept as is
    hidden = render_response(completion, context())  # no summary asked: the text stays in the state only
    assert hidden["output"][0]["summary"] == [] and hidden["output"][0]["encrypted_content"]


def test_render_long_gemini_tool_id() -> None:
    completion = load("openai_chat_completion_gemini_signed_tool_id.json")
    original = completion["choices"][0]["message"]["tool_calls"][0]["id"]
    assert len(original) > 64
    response = render_response(completion, context())
    validate_response(response)
    state, call = response["output"]
    assert state["type"] == "reasoning" and state["summary"] == []
    assert CALL_ID.fullmatch(call["call_id"]) and call["call_id"] == carry.short_call_id(original)
    assert carry.decode(state["encrypted_content"]).call_ids == {call["call_id"]: original}


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_render_incomplete(finish: str, reason: str) -> None:
    completion = load("openai_chat_completion_text.json")
    completion["choices"][0]["finish_reason"] = finish
    response = render_response(completion, context())
    validate_response(response)
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": reason}
    assert response["completed_at"] is None and response["output"][0]["status"] == "incomplete"


# -- ResponseStream -------------------------------------------------------------------------


def test_text_stream_matches_openai() -> None:
    chunks = sse_data("openai_chunks_text_usage.sse")
    ctx = context()
    events, stream = run(ctx, chunks)
    [item] = check_events(events)
    assert events[-1]["type"] == "response.completed" and stream.response is events[-1]["response"]
    assert item["content"][0]["text"] == completion_of(chunks)["choices"][0]["message"]["content"]
    assert stream.response == render_response(completion_of(chunks), ctx)
    recorded = sse_data("openai_responses_stream_text.sse")
    assert collapsed_types(events) == collapsed_types(recorded)
    theirs_by_type = {event["type"]: event for event in recorded}
    for ours in events:  # the keys OpenAI sends, event type by event type (no obfuscation padding)
        theirs = theirs_by_type[ours["type"]]
        assert set(ours) == set(theirs) - {"obfuscation"}, ours["type"]
        for key in ("item", "part", "response"):
            if key in ours:
                assert set(ours[key]) <= set(theirs[key]), (ours["type"], set(ours[key]) ^ set(theirs[key]))


def test_parallel_tool_calls_stream_one_after_the_other() -> None:
    chunks = sse_data("openai_chunks_tool_calls_parallel.sse")
    ctx = context()
    events, stream = run(ctx, chunks)
    items = check_events(events)
    expected = completion_of(chunks)["choices"][0]["message"]["tool_calls"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in items] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in expected
    ]
    assert collapsed_types(events) == collapsed_types(sse_data("openai_responses_stream_parallel_function_calls.sse"))
    # both calls streamed live: the first closed as soon as the second began
    per_call = [sum(e["type"].endswith("arguments.delta") and e["output_index"] == k for e in events) for k in (0, 1)]
    assert min(per_call) > 1
    assert stream.response == render_response(completion_of(chunks), ctx)


def test_interleaved_tool_call_fragments_come_out_one_item_at_a_time() -> None:
    sequential = sse_data("openai_chunks_tool_calls_parallel.sse")
    by_index: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    others = []
    for chunk in sequential:
        calls = chunk["choices"][0]["delta"].get("tool_calls") if chunk["choices"] else None
        if calls:
            by_index[calls[0]["index"]].append(chunk)
        else:
            others.append(chunk)
    interleaved = others[:1]  # the role chunk
    for pair in zip(by_index[0], by_index[1], strict=False):
        interleaved += list(pair)
    longer = max(by_index.values(), key=len)
    interleaved += longer[min(len(by_index[0]), len(by_index[1])) :] + others[1:]
    assert [c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in interleaved[1:5]] == [0, 1, 0, 1]
    ctx = context()
    events, stream = run(ctx, interleaved)
    items = check_events(events)
    expected = completion_of(sequential)["choices"][0]["message"]["tool_calls"]
    assert [(i["call_id"], i["arguments"]) for i in items] == [(c["id"], c["function"]["arguments"]) for c in expected]
    assert stream.response == render_response(completion_of(interleaved), ctx)


@pytest.mark.parametrize("summaries", [True, False])
def test_reasoning_then_text(summaries: bool) -> None:
    chunks = jsonl("hub_chunks_anthropic_thinking_text.jsonl")
    ctx = context({"reasoning": {"effort": "high", "summary": "auto"}} if summaries else {})
    events, stream = run(ctx, chunks)
    items = check_events(events)
    message = completion_of(chunks)["choices"][0]["message"]
    assert [i["type"] for i in items] == ["reasoning", "message", "reasoning"]
    has_summary_events = any(e["type"].startswith("response.reasoning_summary") for e in events)
    assert has_summary_events is summaries
    summary = [{"type": "summary_text", "text": message["reasoning_content"]}] if summaries else []
    assert items[0]["summary"] == summary
    assert items[1]["content"][0]["text"] == message["content"]
    assert carry.decode(items[2]["encrypted_content"]).reasoning_signature == message["reasoning_signature"]
    assert stream.response == render_response(completion_of(chunks), ctx)


def test_reasoning_then_signed_tool_call() -> None:
    """Gemini: the long id arrives while the reasoning item is open, so its map rides
    in that item, before the call."""
    chunks = jsonl("hub_chunks_gemini_thought_signed_tool_call.jsonl")
    ctx = context({"reasoning": {"summary": "detailed"}})
    events, stream = run(ctx, chunks)
    reasoning, call = check_events(events)
    original = completion_of(chunks)["choices"][0]["message"]["tool_calls"][0]["id"]
    assert CALL_ID.fullmatch(call["call_id"])
    state = carry.decode(reasoning["encrypted_content"])
    assert state.call_ids == {call["call_id"]: original} and state.reasoning_content == reasoning["summary"][0]["text"]
    assert stream.response == render_response(completion_of(chunks), ctx)


def test_length_finish_is_incomplete() -> None:
    chunks = sse_data("openai_chunks_finish_length.sse")
    events, stream = run(context({"max_output_tokens": 16}), chunks)
    [item] = check_events(events)
    assert [e["type"] for e in events].count("response.completed") == 0
    recorded = sse_data("openai_responses_event_incomplete_max_output_tokens.sse")[-1]
    final = events[-1]
    assert final["type"] == recorded["type"] == "response.incomplete"
    for key in ("status", "incomplete_details", "completed_at", "max_output_tokens"):
        assert final["response"][key] == recorded["response"][key], key
    assert item["status"] == recorded["response"]["output"][0]["status"] == "incomplete"
    assert stream.response == render_response(completion_of(chunks), stream.ctx)


def test_mid_stream_failure() -> None:
    chunks = sse_data("openai_chunks_text_usage.sse")[:4]
    stream = ResponseStream(context())
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    body = load("openai_error_429_insufficient_quota.json")
    events += stream.fail(body)
    check_events(events)
    error, failed = events[-2:]
    assert error == {"type": "error", "error": body["error"], "sequence_number": error["sequence_number"]}
    assert failed["type"] == "response.failed" and failed["response"] is stream.response
    assert (
        failed["response"]["status"] == "failed" and failed["response"]["output"] == []
    )  # the open message is dropped
    assert failed["response"]["error"] == {"code": "insufficient_quota", "message": body["error"]["message"]}


def test_usage_comes_from_the_usage_chunk_or_the_argument() -> None:
    chunks = sse_data("openai_chunks_text_usage.sse")
    from_chunk = run(context(), chunks)[1].response["usage"]
    assert from_chunk["input_tokens"] == chunks[-1]["usage"]["prompt_tokens"]
    given = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert run(context(), chunks, given)[1].response["usage"]["total_tokens"] == 10


def test_frame() -> None:
    events = ResponseStream(context()).start()
    data = frame(events[0])
    head, body = data.split(b"\n", 1)
    assert head == b"event: response.created" and body.startswith(b"data: ") and body.endswith(b"}\n\n")
    assert orjson.loads(body[6:]) == events[0]
