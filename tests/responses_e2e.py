"""Shared set-up of the Responses acceptance tests (test_responses_acceptance.py,
test_responses_access.py, test_responses_agents.py, test_responses_node.py).

`start_stack` starts a gateway with one validating fake per provider kind: `oai`
(OpenAI), `ant` (Anthropic, checked by fake_anthropic) and `gem` (Gemini, checked
by fake_gemini.GeminiCheck; model `gem-3` is sent upstream as a Gemini 3 model,
which demands thought signatures).  `Stack.client()` is an official AsyncOpenAI
client whose HTTP traffic is tapped: every body the SDK received, byte for byte,
stays in `client.tap`, so the schema checks read the wire, not the SDK's models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP library of openai>=3 (httpx before)
import openai
import orjson
from conftest import PRO_KEY, UPSTREAM_KEY, Gateway, base_config
from fake_anthropic import check as anthropic_check
from fake_gemini import GeminiCheck
from fakes import FakeUpstream, Reply, fixture_bytes, fixture_json, json_reply, sse_from_jsonl, sse_reply
from http_tap import Exchange, Tap
from openai_schema import validate_response
from responses_support import check_events

Json = dict[str, Any]

WEATHER = {  # a Responses function tool (flat shape)
    "type": "function",
    "name": "weather",
    "description": "Get weather information for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "the city"}},
        "required": ["location"],
    },
}
QUESTION = "What's the weather in Florence, Italy?"


# -- the tapped client ---------------------------------------------------------------------


class TappedClient(openai.AsyncOpenAI):
    tap: Tap


# -- the gateway ---------------------------------------------------------------------------


@dataclass
class Stack:
    gw: Gateway
    fakes: dict[str, FakeUpstream]

    def client(self, key: str = PRO_KEY) -> TappedClient:
        tap = Tap()
        client = TappedClient(
            base_url=self.gw.url, api_key=key, max_retries=0, http_client=httpx.AsyncClient(transport=tap)
        )
        client.tap = tap
        self.gw.clients.append(client)
        return client


async def start_stack(fake_server: Any, start_gateway: Any, tmp_path: Path, **extra: Any) -> Stack:
    """`fake_server`, `start_gateway`: conftest's fixtures; `extra` goes into the YAML.

    Models: oai-small/-large, ant-small/-large, gem-small/-large and gem-3
    (upstream gemini-3-pro-preview); free has the -small ones, pro everything."""
    gemini = GeminiCheck(key=UPSTREAM_KEY)
    fakes, urls = {}, {}
    for name, check in (("oai", None), ("ant", anthropic_check), ("gem", gemini)):
        fakes[name], urls[name] = await fake_server(check)
    gemini.fake = fakes["gem"]
    kinds = {"oai": "openai", "ant": "anthropic", "gem": "gemini"}
    doc = base_config({name: (kind, urls[name]) for name, kind in kinds.items()}, str(tmp_path / "usage.db"))
    doc["models"].append({"id": "gem-3", "provider": "gem", "upstream": "gemini-3-pro-preview"})
    doc["tiers"]["pro"]["models"].append("gem-3")
    doc["routing"] = {"attempts": 1}  # each scripted reply answers exactly one request
    doc.update(extra)
    return Stack(await start_gateway(doc), fakes)


# -- recorded answers, per provider kind ----------------------------------------------------

GEMINI3_STREAM = "gemini_stream_function_call_gemini3.jsonl"
GEMINI_CALL = "gemini_generate_content_function_call.json"
ANTHROPIC_THINKING = fixture_json("anthropic_message_thinking_tool_use.json")


def gemini_signature(stream: bool) -> str:
    """The thoughtSignature on the functionCall part of the recorded Gemini answer."""
    answer = orjson.loads(fixture_bytes(GEMINI3_STREAM).splitlines()[0]) if stream else fixture_json(GEMINI_CALL)
    return answer["candidates"][0]["content"]["parts"][0]["thoughtSignature"]


def anthropic_thinking(stream: bool) -> Json:
    """The thinking block of the recorded Anthropic answer, as Anthropic sent it."""
    if not stream:
        return ANTHROPIC_THINKING["content"][0]
    thinking, signature = [], []
    for line in fixture_bytes("anthropic_stream_thinking_tool_use.sse").splitlines():
        if line.startswith(b"data: "):
            event = orjson.loads(line[6:])
            delta = event.get("delta") or {}
            if event["type"] == "content_block_delta" and event["index"] == 0:
                thinking.append(delta.get("thinking", ""))
                signature.append(delta.get("signature", ""))
    return {"type": "thinking", "thinking": "".join(thinking), "signature": "".join(signature)}


def tool_call_reply(kind: str, stream: bool) -> Reply:
    """A recorded answer in which the model calls `weather`."""
    if kind == "oai":
        if stream:
            # the recording calls `get_weather`; renamed to the one tool these tests offer
            recorded = fixture_bytes("openai_chunks_tool_call.sse").replace(b'"get_weather"', b'"weather"')
            return sse_reply(recorded, "split_utf8")
        return json_reply(fixture_json("openai_chat_completion_tool_calls.json"))
    if kind == "ant":
        if stream:
            return sse_reply(fixture_bytes("anthropic_stream_thinking_tool_use.sse"), "split_utf8")
        return json_reply(ANTHROPIC_THINKING)
    if stream:
        return sse_reply(sse_from_jsonl(GEMINI3_STREAM, sep=b"\r\n\r\n"), "bytes")
    return json_reply(fixture_json(GEMINI_CALL))


def text_reply(kind: str, text: str, stream: bool = False) -> Reply:
    """A plain answer `text` in `kind`'s wire format."""
    if kind == "oai":
        if stream:
            return sse_reply(
                b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in openai_text_chunks(text)) + b"data: [DONE]\n\n"
            )
        return json_reply(
            {
                "id": "chatcmpl-e2e",
                "object": "chat.completion",
                "created": 1,
                "model": "oai-small-2024",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34},
            }
        )
    if kind == "ant":
        message = {
            "id": "msg_e2e",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 30, "output_tokens": 4},
        }
        if not stream:
            return json_reply(message)
        events = [
            {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}},
            {"type": "message_stop"},
        ]
        return sse_reply(
            b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
        )
    answer = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 4, "totalTokenCount": 34},
        "modelVersion": "gemini-3-pro-preview",
    }
    return sse_reply(b"data: " + orjson.dumps(answer) + b"\r\n\r\n") if stream else json_reply(answer)


def openai_stream_of(completion: Json) -> Reply:
    """A recorded chat.completion with tool calls, streamed as OpenAI streams one
    (the call's arguments in three fragments, then the finish, then usage)."""
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    message = completion["choices"][0]["message"]

    def chunk(delta: Json, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

    out = [chunk({"role": "assistant", "content": None})]
    for i, call in enumerate(message["tool_calls"]):
        function, args = call["function"], call["function"]["arguments"]
        cuts = [0, len(args) // 3, 2 * len(args) // 3, len(args)]
        out.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                          "function": {"name": function["name"], "arguments": ""}}]}))  # fmt: skip
        for a, b in zip(cuts, cuts[1:], strict=False):
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[a:b]}}]}))
    out.append(chunk({}, completion["choices"][0]["finish_reason"]))
    out.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": completion["usage"]}) + b"\n\n")
    return sse_reply(b"".join(out) + b"data: [DONE]\n\n")


def openai_text_chunks(text: str) -> list[Json]:
    head = {"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1, "model": "oai-small-2024"}
    words = text.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}})
    return chunks


# -- checks --------------------------------------------------------------------------------


def checked_response(exchange: Exchange) -> Json:
    """The raw Response of a non-streamed exchange, validated against OpenAI's schema."""
    assert exchange.status == 200 and exchange.content_type.startswith("application/json"), exchange
    body = exchange.json()
    validate_response(body)
    return body


def checked_stream(exchange: Exchange) -> tuple[list[Json], Json]:
    """The raw events of a streamed exchange, each validated, every stream rule checked
    (responses_support.check_events); returns (events, final Response)."""
    assert exchange.status == 200 and exchange.content_type.startswith("text/event-stream"), exchange
    events = exchange.events()
    check_events(events)
    return events, events[-1]["response"]


# -- the function-tool loop ----------------------------------------------------------------

MODELS = {"oai": "oai-small", "ant": "ant-small", "gem": "gem-3"}  # one per provider kind


def settings(kind: str) -> Json:
    """Claude runs with thinking on (reasoning.effort); the others as they come."""
    return {"reasoning": {"effort": "medium"}} if kind == "ant" else {}


# the recorded calls (upstream id, arguments): what the upstream must get back on turn 2
CALLS = {
    ("oai", False): ("call_IUonKM9GCNis5eMRHuusMqoy", {"location": "Florence, Italy"}),
    ("oai", True): ("call_4XzlGBLtUe9dy3GVNV4jhq7h", {"city": "New York City"}),
    ("ant", False): ("toolu_014azqsWLU8Djh6RhmBGRC2u", {"location": "Florence, Italy"}),
    ("ant", True): ("toolu_01Js4AMfx5qpTLhwTusnvT68", {"location": "Florence, Italy"}),
    ("gem", False): (None, {"location": "Florence,Italy"}),  # Gemini calls have no ids
    ("gem", True): (None, {"location": "San Francisco"}),
}
TOOL_OUTPUT = "sunny, 24C"


def function_call(kind: str, stream: bool, raw: Json) -> Json:
    """Turn 1's one function call, as recorded upstream."""
    calls = [item for item in raw["output"] if item["type"] == "function_call"]
    assert len(calls) == 1, raw["output"]
    call = calls[0]
    assert call["name"] == "weather" and call["status"] == "completed"
    assert json.loads(call["arguments"]) == CALLS[kind, stream][1]
    if kind == "ant":  # the signed thinking travels with the client, in a reasoning item
        reasoning = [item for item in raw["output"] if item["type"] == "reasoning"]
        assert reasoning and all(item["encrypted_content"] for item in reasoning)
        assert reasoning[0]["summary"] == []  # thinking text shown only when reasoning.summary asks for it
    return call


def check_upstream_turn_two(stack: Stack, kind: str, stream: bool, call: Json) -> None:
    """What the upstream received on turn 2: the whole conversation, provider state intact."""
    sent = stack.fakes[kind].last.json
    if kind == "oai":
        messages = sent["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
        assert QUESTION in json.dumps(messages[0])
        (tool_call,) = messages[1]["tool_calls"]
        assert tool_call["id"] == CALLS[kind, stream][0] == call["call_id"]
        assert tool_call["function"]["name"] == "weather"
        assert json.loads(tool_call["function"]["arguments"]) == json.loads(call["arguments"])
        assert messages[2]["tool_call_id"] == tool_call["id"] and TOOL_OUTPUT in json.dumps(messages[2])
        assert [t["function"]["name"] for t in sent["tools"]] == ["weather"]
    elif kind == "ant":
        assert sent["thinking"]["type"] == "enabled"
        messages = sent["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        thinking, tool_use = messages[1]["content"]
        assert thinking == anthropic_thinking(stream)  # byte for byte, signature included
        assert tool_use["type"] == "tool_use" and tool_use["id"] == CALLS[kind, stream][0]
        assert tool_use["input"] == CALLS[kind, stream][1]
        (result,) = messages[2]["content"]
        assert result["type"] == "tool_result" and result["tool_use_id"] == tool_use["id"]
        assert TOOL_OUTPUT in json.dumps(result)
    else:
        contents = sent["contents"]
        assert [c["role"] for c in contents] == ["user", "model", "user"]
        (call_part,) = contents[1]["parts"]
        assert call_part["thoughtSignature"] == gemini_signature(stream)  # byte for byte
        assert call_part["functionCall"] == {"name": "weather", "args": CALLS[kind, stream][1]}
        (answer,) = contents[2]["parts"]
        assert answer["functionResponse"]["name"] == "weather"
        assert TOOL_OUTPUT in json.dumps(answer["functionResponse"]["response"])
