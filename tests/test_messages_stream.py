"""The Messages dialect's stream: hub chunks in, Anthropic's exact event sequence out.

Hub chunks come from recordings: OpenAI's own chunk streams (tests/fixtures/openai_chunks_*),
and what the Gemini and Anthropic adapters made of recorded upstream streams
(tests/golden/*/): plus a few hand-made sequences for what no recording has
(interleaved parallel fragments, reasoning then text then tools, odd tool ids).
The real check: the framed bytes go to the official anthropic SDK over loopback
HTTP, and its accumulated `get_final_message()` must equal `render_message` of the
same answer (the chunks folded into one chat.completion).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.dialects.messages.render import MessageContext, render_message
from gateway.dialects.messages.state import EMPTY, client_tool_id, unseal
from gateway.dialects.messages.stream import MessageStream, frame
from gateway.errors import ServiceUnavailable, UpstreamError

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
Json = dict[str, Any]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def openai_chunks(name: str) -> list[Json]:
    lines = (FIXTURES / name).read_text().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def golden_chunks(name: str) -> list[Json]:
    data = json.loads((GOLDEN / name).read_bytes())
    return [c for c in data if isinstance(c, dict) and c.get("object") == "chat.completion.chunk"]


def chunk(delta: Json | None = None, finish: str | None = None, usage: Json | None = None) -> Json:
    """A hub chunk as the adapters make them."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices,
            "usage": usage}  # fmt: skip


def call(index: int, id: str | None = None, name: str | None = None, args: str | None = None) -> Json:
    fragment: Json = {"index": index, "function": {}}
    if id is not None:
        fragment["id"], fragment["type"] = id, "function"
    if name is not None:
        fragment["function"]["name"] = name
    if args is not None:
        fragment["function"]["arguments"] = args
    return chunk({"tool_calls": [fragment]})


USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 33,
    "total_tokens": 153,
    "prompt_tokens_details": {"cached_tokens": 20},
    "completion_tokens_details": {"reasoning_tokens": 9},
}
ANTHROPIC_USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 20,
    "output_tokens": 33,
}

# DeepSeek-style: reasoning, then text, then two sequential tool calls
REASON_TEXT_TOOLS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "The user wants "}),
    chunk({"reasoning_content": "two files."}),
    chunk({"content": "Reading "}),
    chunk({"content": "both."}),
    call(0, "call_a", "read", ""),
    call(0, args='{"path": '),
    call(0, args='"a.txt"}'),
    call(1, "call_b", "read", '{"path": "b.txt"}'),
    chunk({}, "tool_calls"),
    chunk(usage=USAGE),
]
# a server that interleaves the fragments of parallel calls (Chat allows it)
INTERLEAVED = [
    chunk({"role": "assistant", "content": None}),
    call(0, "call_x", "search", '{"q":'),
    call(1, "call_y", "fetch", '{"url":'),
    call(0, args=' "cats"'),
    call(1, args=' "https://a.example"}'),
    call(0, args="}"),
    chunk({}, "tool_calls"),
    chunk(usage=USAGE),
]
# ids Anthropic's pattern refuses (Kimi style), broken arguments, a late signature
ODD_IDS = [
    chunk({"reasoning_content": "hmm"}),
    call(0, "functions.Bash:0", "Bash", '{"cmd": "ls"}'),
    call(1, "functions.Read:1", "Read", "{not json"),
    chunk({"reasoning_signature": "c2lnbmF0dXJl"}),
    chunk({}, "stop", USAGE),
]
# a cut-off answer that is all thinking, signed at the end
THINKING_ONLY = [chunk({"reasoning_content": "pondering"}), chunk({"reasoning_signature": "c2ln"}), chunk({}, "length")]
HAND_MADE = {
    "reason_text_tools": REASON_TEXT_TOOLS,
    "interleaved": INTERLEAVED,
    "odd_ids": ODD_IDS,
    "thinking_only": THINKING_ONLY,
}


def start(index: int, block: Json) -> Json:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, delta: Json) -> Json:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def stop(index: int) -> Json:
    return {"type": "content_block_stop", "index": index}


def accumulate(chunks: list[Json]) -> Json:
    """The chat.completion a hub stream amounts to (what the non-stream path would return)."""
    content, refusal, reasoning, signature = "", "", "", ""
    calls: dict[int, Json] = {}
    finish, usage = None, None
    for c in chunks:
        usage = c.get("usage") or usage
        for choice in c.get("choices") or []:
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            refusal += delta.get("refusal") or ""
            reasoning += delta.get("reasoning_content") or ""
            signature += delta.get("reasoning_signature") or ""
            for fragment in delta.get("tool_calls") or []:
                entry = calls.setdefault(fragment["index"], {"id": None, "type": "function",
                                                             "function": {"name": "", "arguments": ""}})  # fmt: skip
                entry["id"] = fragment.get("id") or entry["id"]
                function = fragment.get("function") or {}
                entry["function"]["name"] += function.get("name") or ""
                entry["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: Json = {"role": "assistant", "content": content or None, "refusal": refusal or None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if signature:
        message["reasoning_signature"] = signature
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    completion: Json = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}]}  # fmt: skip
    if usage:
        completion["usage"] = usage
    return completion


def run(chunks: list[Json], ctx: MessageContext, input_tokens: int = 0) -> list[Json]:
    stream = MessageStream(ctx)
    events = stream.start(input_tokens)
    for c in chunks:
        events += stream.feed(c)
    return events + stream.finish()


def check_order(events: list[Json]) -> None:
    """Anthropic's grammar: message_start, blocks 0..n-1 one at a time, message_delta, message_stop."""
    assert events[0]["type"] == "message_start"
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    expected, open_index = 0, None
    for event in events[1:-2]:
        if event["type"] == "content_block_start":
            assert open_index is None and event["index"] == expected
            open_index, expected = event["index"], expected + 1
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
        else:
            assert event["type"] == "content_block_stop" and event["index"] == open_index
            open_index = None
    assert open_index is None


SOURCES = {
    **{f"openai:{n}": openai_chunks(n) for n in (
        "openai_chunks_text_usage.sse", "openai_chunks_tool_call.sse", "openai_chunks_tool_calls_parallel.sse",
        "openai_chunks_finish_length.sse", "openai_chunks_refusal.sse", "openai_chunks_logprobs.sse")},
    **{f"golden:{p.parent.name}/{p.name}": golden_chunks(f"{p.parent.name}/{p.name}")
       for p in sorted(GOLDEN.glob("*/*stream*.json")) if golden_chunks(f"{p.parent.name}/{p.name}")},
    **HAND_MADE,
}  # fmt: skip


# -- exact sequences ----------------------------------------------------------------------


def test_text_stream_exact_events() -> None:
    ctx = MessageContext(model="gpt-x", id="msg_1")
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
              chunk({}, "stop"), chunk(usage=USAGE)]  # fmt: skip
    assert run(chunks, ctx, input_tokens=90) == [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "gpt-x",
         "content": [], "stop_reason": None, "stop_sequence": None,
         "usage": {"input_tokens": 90, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                   "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"input_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20,
                   "output_tokens": 33}},
        {"type": "message_stop"},
    ]  # fmt: skip


def test_tool_only_stream_starts_at_index_0() -> None:
    events = run(openai_chunks("openai_chunks_tool_call.sse"), MessageContext(model="m"))
    check_order(events)
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "call_4XzlGBLtUe9dy3GVNV4jhq7h", "name": "get_weather", "input": {}}}  # fmt: skip
    assert events[2]["delta"]["type"] == "input_json_delta"
    assert json.loads(events[2]["delta"]["partial_json"]) == {"city": "New York City"}
    assert [e["type"] for e in events[3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_reasoning_then_text_then_tools_exact_events() -> None:
    ctx = MessageContext(model="deepseek", thinking=True, id="msg_2")
    events = run(REASON_TEXT_TOOLS, ctx)[1:]
    thinking = {"type": "thinking", "thinking": "", "signature": ""}
    assert events == [
        start(0, thinking),
        delta(0, {"type": "thinking_delta", "thinking": "The user wants "}),
        delta(0, {"type": "thinking_delta", "thinking": "two files."}),
        delta(0, {"type": "signature_delta", "signature": EMPTY}),
        stop(0),
        start(1, {"type": "text", "text": ""}),
        delta(1, {"type": "text_delta", "text": "Reading "}),
        delta(1, {"type": "text_delta", "text": "both."}),
        stop(1),
        start(2, {"type": "tool_use", "id": "call_a", "name": "read", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": '{"path": "a.txt"}'}),
        stop(2),
        start(3, {"type": "tool_use", "id": "call_b", "name": "read", "input": {}}),
        delta(3, {"type": "input_json_delta", "partial_json": '{"path": "b.txt"}'}),
        stop(3),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": ANTHROPIC_USAGE,
        },
        {"type": "message_stop"},
    ]
    # the same answer for a client without thinking: no thinking block, indexes still from 0
    plain = run(REASON_TEXT_TOOLS, MessageContext(model="deepseek"))
    check_order(plain)
    assert [e["content_block"]["type"] for e in plain if e["type"] == "content_block_start"] == [
        "text",
        "tool_use",
        "tool_use",
    ]


def test_interleaved_parallel_fragments_never_interleave_blocks() -> None:
    stream = MessageStream(MessageContext(model="m"))
    events = stream.start()
    per_chunk = [stream.feed(c) for c in INTERLEAVED]
    events += [e for batch in per_chunk for e in batch] + stream.finish()
    check_order(events)
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["id"]) for e in starts] == [(0, "call_x"), (1, "call_y")]
    args = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert [json.loads(a) for a in args] == [{"q": "cats"}, {"url": "https://a.example"}]
    # call_y waited: it opened only once call_x's arguments were whole (the last fragment)
    assert [e["type"] for e in per_chunk[5]] == ["content_block_delta", "content_block_stop", "content_block_start"]


def test_sequential_parallel_calls_still_stream_as_they_come() -> None:
    chunks = openai_chunks("openai_chunks_tool_calls_parallel.sse")
    stream = MessageStream(MessageContext(model="m"))
    stream.start()
    second = next(
        i
        for i, c in enumerate(chunks)
        if c["choices"] and c["choices"][0]["delta"].get("tool_calls", [{}])[0].get("index") == 1
    )
    before = [e for c in chunks[:second] for e in stream.feed(c)]
    at = stream.feed(chunks[second])
    assert [e["type"] for e in before] == ["content_block_start"]  # the first call opened at once
    # the second call's start closes the first (whole JSON by then) and opens index 1 before the end
    assert [(e["type"], e.get("index")) for e in at] == [
        ("content_block_delta", 0), ("content_block_stop", 0), ("content_block_start", 1)]  # fmt: skip


def test_odd_tool_ids_and_late_signature_go_in_a_trailing_state_block() -> None:
    events = run(ODD_IDS, MessageContext(model="m", thinking=True))
    check_order(events)
    blocks = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [b["type"] for b in blocks] == ["thinking", "tool_use", "tool_use", "thinking"]
    assert [b["id"] for b in blocks[1:3]] == [client_tool_id("functions.Bash:0"), client_tool_id("functions.Read:1")]
    signatures = [e["delta"]["signature"] for e in events if e.get("delta", {}).get("type") == "signature_delta"]
    assert signatures[0] == EMPTY
    carried = unseal(signatures[1], "x")
    assert carried is not None and carried.reasoning_signature == "c2lnbmF0dXJl"
    assert carried.call_ids == {blocks[1]["id"]: "functions.Bash:0", blocks[2]["id"]: "functions.Read:1"}
    broken = [e for e in events if e.get("index") == 2 and e["type"] == "content_block_delta"]
    assert broken[0]["delta"]["partial_json"] == "{}"  # not JSON: sent as {}, as render does
    assert events[-2]["delta"]["stop_reason"] == "tool_use"  # the upstream said "stop"


def test_text_amid_a_tool_calls_fragments_waits_and_loses_nothing() -> None:
    chunks = [
        call(0, "call_1", "f", '{"a":'),
        chunk({"content": "(aside)"}),
        chunk({"reasoning_content": "hmm"}),
        call(0, args=" 1}"),
        chunk({}, "tool_calls"),
    ]
    events = run(chunks, MessageContext(model="m", thinking=True))
    check_order(events)
    blocks = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert blocks == ["tool_use", "text", "thinking"]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert deltas[0] == {"type": "input_json_delta", "partial_json": '{"a": 1}'}
    assert deltas[1:3] == [{"type": "text_delta", "text": "(aside)"}, {"type": "thinking_delta", "thinking": "hmm"}]


def test_thinking_only_stream_signs_its_one_block() -> None:
    events = run(THINKING_ONLY, MessageContext(model="m", thinking=True))
    check_order(events)
    assert [e["type"] for e in events].count("content_block_start") == 1
    signature = next(e["delta"]["signature"] for e in events if e.get("delta", {}).get("type") == "signature_delta")
    assert unseal(signature, "x").reasoning_signature == "c2ln"  # type: ignore[union-attr]
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2]["usage"] == {"output_tokens": 0}  # usage unknown: message_start's input count stands


def test_mid_stream_failure_is_an_error_event_and_the_end() -> None:
    stream = MessageStream(MessageContext(model="m"))
    stream.start()
    assert stream.feed(chunk({"content": "partial"}))[-1]["delta"]["text"] == "partial"
    assert stream.fail(ServiceUnavailable("The upstream is overloaded.", retryable=True)) == [
        {"type": "error", "error": {"type": "overloaded_error", "message": "The upstream is overloaded."}}
    ]
    assert stream.feed(chunk({"content": "more"})) == [] and stream.finish() == []


def test_frame_has_the_event_line_the_sdk_needs() -> None:
    assert frame({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert MessageStream(MessageContext(model="m")).ping() == {"type": "ping"}


def test_chunks_may_come_as_json_bytes() -> None:
    chunks = openai_chunks("openai_chunks_text_usage.sse")
    as_bytes = [json.dumps(c).encode() for c in chunks]
    ctx = MessageContext(model="m", id="msg_same")
    assert run(as_bytes, ctx) == run(chunks, ctx)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(SOURCES))
@pytest.mark.parametrize("thinking", [False, True])
def test_every_source_gives_a_well_formed_stream(name: str, thinking: bool) -> None:
    events = run(SOURCES[name], MessageContext(model="m", thinking=thinking))
    check_order(events)
    assert events[-2]["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use", "refusal")


# -- the official SDK reads our bytes -----------------------------------------------------


async def sdk_read(aiohttp_server: ServerFactory, events: list[Json]) -> anthropic.types.Message:
    """Serve the framed events on loopback and let anthropic-python accumulate them."""

    async def messages(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for event in events:  # one write per event, as the gateway sends them
            await response.write(frame(event))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = await aiohttp_server(app)
    async with anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="k", max_retries=0) as client:
        async with client.messages.stream(
            model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            return await stream.get_final_message()


@pytest.mark.parametrize("name", sorted(SOURCES))
@pytest.mark.parametrize("thinking", [False, True])
async def test_sdk_final_message_equals_render_message(
    aiohttp_server: ServerFactory, name: str, thinking: bool
) -> None:
    ctx = MessageContext(model="my-model", thinking=thinking)
    chunks = SOURCES[name]
    final = await sdk_read(aiohttp_server, run(chunks, ctx, input_tokens=7))
    expected = render_message(accumulate(chunks), ctx)
    got = final.to_dict()
    assert got.pop("stop_details", None) is None
    if "usage" not in accumulate(chunks):  # no usage in the stream: the estimate in message_start stands
        expected["usage"]["input_tokens"] = 7
    assert got == expected


async def test_sdk_raises_the_mid_stream_error(aiohttp_server: ServerFactory) -> None:
    stream = MessageStream(MessageContext(model="m"))
    events = stream.start() + stream.feed(chunk({"content": "partial"}))
    events += stream.fail(UpstreamError("The upstream broke mid-answer."))
    with pytest.raises(anthropic.APIStatusError) as err:
        await sdk_read(aiohttp_server, events)
    assert err.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "The upstream broke mid-answer."},
    }
