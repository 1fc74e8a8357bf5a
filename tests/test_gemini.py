"""The Gemini adapter: golden replays of every recorded Gemini fixture, and acceptance
through the official `openai` SDK against a fake Gemini that validates requests the
way the real API does (`fake_gemini.GeminiCheck`).

Golden files live in tests/golden/gemini/<fixture>.json; regenerate them with
`UPDATE_GOLDEN=1 pytest tests/test_gemini.py` and review the diff."""

from __future__ import annotations

import base64
import os
import re
import struct
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from conftest import PRO_KEY, UPSTREAM_KEY, Gateway, base_config
from fake_gemini import GeminiCheck, check_schema, google_error
from fakes import (
    CHUNKINGS,
    FIXTURES,
    FakeUpstream,
    fixture_bytes,
    fixture_json,
    json_reply,
    sse_from_jsonl,
    sse_reply,
)
from openai_schema import validate, validate_chunk, validate_completion, validate_error

from gateway.providers.gemini import clean_schema, gemini_request, new_tool_call_id, signature_of

GOLDEN = Path(__file__).parent / "golden" / "gemini"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
MESSAGES = [{"role": "user", "content": "Hello"}]
GEMINI3_SIGNATURE = orjson.loads(fixture_bytes("gemini_stream_function_call_gemini3.jsonl").splitlines()[0])[
    "candidates"
][0]["content"]["parts"][0]["thoughtSignature"]

STREAMS = sorted(p.name for p in FIXTURES.glob("gemini_stream_*"))
RESPONSES = [
    "gemini_generate_content_text.json",
    "gemini_generate_content_function_call.json",
    "gemini_generate_content_function_call_safety_ratings.json",
    "gemini_prompt_blocked_safety.json",
]
ERRORS = ["gemini_error_429_resource_exhausted.json"]
REQUESTS = ["gemini_request_function_response_roundtrip.json", "gemini_request_thinking_tools.json"]


# -- set-up ------------------------------------------------------------------------------


@pytest.fixture
async def gem(fake_server: Any, start_gateway: Any, tmp_path: Path) -> tuple[Gateway, FakeUpstream, GeminiCheck]:
    """A gateway whose provider `gem` is a validating fake Gemini.

    Models: gem-small (upstream gem-small-2024), gem-large, gem-3 (gemini-3-pro-preview,
    which demands thought signatures) and gem-embed (given with a `models/` prefix)."""
    check = GeminiCheck(key=UPSTREAM_KEY)
    fake, url = await fake_server(check)
    check.fake = fake
    doc = base_config({"gem": ("gemini", url)}, str(tmp_path / "usage.db"))
    doc["models"] += [
        {"id": "gem-3", "provider": "gem", "upstream": "gemini-3-pro-preview"},
        {"id": "gem-embed", "provider": "gem", "upstream": "models/gemini-embedding-001"},
    ]
    doc["tiers"]["pro"]["models"] += ["gem-3", "gem-embed"]
    # Retries and fallback belong to the runtime and are tested there; with one attempt each
    # scripted reply answers exactly one request and an error reaches the client as mapped.
    doc["routing"] = {**doc.get("routing", {}), "attempts": 1}
    return await start_gateway(doc), fake, check


def stream_bytes(name: str) -> bytes:
    """A recorded stream as Gemini frames it on the wire (CRLF CRLF between events)."""
    return fixture_bytes(name) if name.endswith(".sse") else sse_from_jsonl(name, sep=b"\r\n\r\n")


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


def candidate(parts: list[Any], finish: str | None = "STOP", index: int = 0, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index, **extra}
    if finish:
        out["finishReason"] = finish
    return out


def response(*candidates: Any, usage: Any = None, **extra: Any) -> dict[str, Any]:
    usage = usage or {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
    return {"candidates": list(candidates), "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", **extra}


def text_response(text: str = "Hi there", **extra: Any) -> dict[str, Any]:
    return response(candidate([{"text": text}]), responseId="resp-1", **extra)


async def collect(stream: Any) -> list[Any]:
    chunks = [c async for c in stream]
    for c in chunks:
        validate_chunk(c.model_dump(exclude_unset=True))
    return chunks


def reasoning(chunk: Any) -> str:
    return (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""


# -- golden replays --------------------------------------------------------------------


def normalise(value: Any) -> Any:
    """Make generated parts deterministic: ids, timestamps, the random half of tool call ids."""
    seen: dict[str, str] = {}
    text = orjson.dumps(value).decode()
    text = re.sub(r"call_[A-Za-z0-9]{24}", lambda m: seen.setdefault(m[0], f"call_{len(seen):024d}"), text)
    text = re.sub(r'"id":"chatcmpl-[^"]*"', '"id":"chatcmpl-ID"', text)
    text = re.sub(r'"created":\d+', '"created":0', text)
    return orjson.loads(text)


def golden(name: str, actual: Any) -> None:
    path = GOLDEN / (name.rsplit(".", 1)[0] + ".json")
    actual = normalise(actual)
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} is missing: run with UPDATE_GOLDEN=1 to create it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(actual, option=orjson.OPT_INDENT_2) + b"\n")
    assert actual == orjson.loads(path.read_bytes())


def test_every_gemini_fixture_has_a_golden_test() -> None:
    names = {p.name for p in FIXTURES.glob("gemini_*")}
    assert names == set(STREAMS) | set(RESPONSES) | set(ERRORS) | set(REQUESTS)


async def raw_events(gw: Gateway, http: Any, body: dict[str, Any]) -> tuple[int, list[Any]]:
    """POST through the gateway and return what went on the wire, event by event."""
    async with http.post(
        f"{gw.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {PRO_KEY}"}
    ) as resp:
        raw = await resp.read()
        status = resp.status
    if not body.get("stream"):
        return status, [orjson.loads(raw)]
    events = []
    for block in raw.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ") and b"\n" not in block, block
            payload = block[6:]
            events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return status, events


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("name", STREAMS)
async def test_golden_streams(gem: Any, http: Any, name: str, chunking: str) -> None:
    gw, fake, _ = gem
    fake.script(sse_reply(stream_bytes(name), chunking))
    body = {"model": "gem-small", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    status, events = await raw_events(gw, http, body)
    assert status == 200 and events[-1] == "[DONE]"
    for chunk in events[:-1]:
        validate_chunk(chunk)
    assert len({c["id"] for c in events[:-1]}) == 1  # one id for the whole stream
    golden(name, events)


@pytest.mark.parametrize("name", RESPONSES)
async def test_golden_responses(gem: Any, http: Any, name: str) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(fixture_json(name)))
    status, (completion,) = await raw_events(gw, http, {"model": "gem-small", "messages": MESSAGES})
    assert status == 200
    validate_completion(completion)
    golden(name, completion)


@pytest.mark.parametrize("name", ERRORS)
async def test_golden_errors(gem: Any, http: Any, name: str) -> None:
    gw, fake, _ = gem
    error = fixture_json(name)
    fake.script(json_reply(error, error["error"]["code"]))
    async with http.post(
        f"{gw.url}/chat/completions",
        json={"model": "gem-small", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {PRO_KEY}"},
    ) as resp:
        got = {"status": resp.status, "retry_after": resp.headers.get("Retry-After"), "body": await resp.json()}
    validate_error(got["body"])
    golden(name, got)


ROUNDTRIP_SIGNATURE = fixture_json("gemini_request_function_response_roundtrip.json")["contents"][1]["parts"][0][
    "thoughtSignature"
]


def openai_twin(name: str) -> dict[str, Any]:
    """The OpenAI request a client would send for each recorded Gemini request."""
    tools = {
        "weather": ("Get weather information for a location", {"location": ("string", "the city")}),
        "add": ("Add two numbers", {"a": ("integer", "first number"), "b": ("integer", "second number")}),
        "multiply": ("Multiply two numbers", {"a": ("integer", "first number"), "b": ("integer", "second number")}),
    }

    def tool(fn: str) -> dict[str, Any]:
        description, props = tools[fn]
        parameters = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {k: {"type": t, "description": d} for k, (t, d) in props.items()},
            "required": list(props),
            "additionalProperties": False,
        }
        return {"type": "function", "function": {"name": fn, "description": description, "parameters": parameters}}

    if name == "gemini_request_thinking_tools.json":
        return {
            "model": "gem-small",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant"},
                {"role": "user", "content": "What's the weather in Florence, Italy?"},
            ],
            "tools": [tool("weather")],
            "tool_choice": "auto",
            "reasoning_effort": "low",
        }
    add_id, multiply_id = new_tool_call_id(ROUNDTRIP_SIGNATURE), new_tool_call_id()
    call = [
        {"id": add_id, "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}},
        {"id": multiply_id, "type": "function", "function": {"name": "multiply", "arguments": '{"a":2,"b":3}'}},
    ]
    return {
        "model": "gem-small",
        "messages": [
            {
                "role": "system",
                "content": "You are a helpful assistant. Always use both add and multiply at the same time.",
            },
            {"role": "user", "content": "Add and multiply the number 2 and 3"},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "tool_call_id": add_id, "content": "5"},
            {"role": "tool", "tool_call_id": multiply_id, "content": "6"},
        ],
        "tools": [tool("add"), tool("multiply")],
        "tool_choice": "auto",
        "max_tokens": 4000,
    }


def without_ids(request: dict[str, Any]) -> dict[str, Any]:
    """The recorded request minus what we deliberately do not send (part ids, the system role)."""
    out = orjson.loads(orjson.dumps(request))
    for content in out["contents"]:
        for part in content["parts"]:
            for key in ("functionCall", "functionResponse"):
                if key in part:
                    part[key].pop("id", None)
    out.get("systemInstruction", {}).pop("role", None)
    return out


@pytest.mark.parametrize("name", REQUESTS)
async def test_golden_requests(gem: Any, name: str) -> None:
    """The recorded requests Google accepted: the fake accepts them too, and ours match them."""
    gw, fake, _ = gem
    recorded = fixture_json(name)
    assert (
        GeminiCheck(UPSTREAM_KEY)(
            "/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": UPSTREAM_KEY}, recorded
        )
        is None
    )
    fake.script(json_reply(fixture_json("gemini_generate_content_text.json")))
    await gw.client().chat.completions.create(**openai_twin(name))
    sent = fake.last.json
    expected = without_ids(recorded)
    for key in ("contents", "systemInstruction", "tools", "toolConfig"):
        assert sent[key] == expected[key], key
    if name == "gemini_request_thinking_tools.json":
        # same shape; the budget is ours (reasoning_effort "low"), the recording asked for 128
        assert sent["generationConfig"] == {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 1024}}
    else:
        assert sent["generationConfig"] == expected["generationConfig"]
    golden(name, sent)


# -- acceptance through the openai SDK -----------------------------------------------------


async def test_text_non_stream_maps_parameters_and_usage(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(fixture_json("gemini_generate_content_text.json")))
    completion = await gw.client().chat.completions.create(
        model="gem-small",
        messages=MESSAGES,
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        stop=["END"],
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        user="u-1",
        metadata={"a": "b"},
        store=False,
        parallel_tool_calls=False,
    )
    validate_completion(completion.model_dump(exclude_unset=True))
    assert completion.id.startswith("chatcmpl-") and completion.model == "gem-small"
    assert (await gw.usage_rows())[-1]["upstream_id"] == "VgCzac2AGLOHz7IP2pOkkAI"  # Google's id, kept
    assert completion.choices[0].message.content == "Olá!" and completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 26, 37)
    assert usage.completion_tokens_details.reasoning_tokens == 24
    sent = fake.last
    assert sent.path == "/v1beta/models/gem-small-2024:generateContent" and sent.query == {}
    assert sent.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert sent.json["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.9,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
    }
    rows = await gw.usage_rows()
    assert (rows[-1]["prompt_tokens"], rows[-1]["completion_tokens"], rows[-1]["total_tokens"]) == (11, 26, 37)
    assert rows[-1]["provider"] == "gem" and rows[-1]["upstream_model"] == "gem-small-2024"


async def test_text_stream_with_usage(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(sse_reply(stream_bytes("gemini_stream_text_multi_chunk.sse"), "split_crlf"))
    stream = await gw.client().chat.completions.create(
        model="gem-large", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The sum of 2 and 3 is 5. The product of 2 and 3 is 6."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 240
    assert all(c.usage is None for c in chunks[:-1])
    assert fake.last.path == "/v1beta/models/gem-large:streamGenerateContent" and fake.last.query == {"alt": "sse"}


async def test_stream_usage_hidden_unless_asked_but_logged(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(sse_reply(stream_bytes("gemini_stream_text.sse")))
    chunks = await collect(await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    rows = await gw.usage_rows()
    assert (rows[-1]["prompt_tokens"], rows[-1]["completion_tokens"], rows[-1]["total_tokens"]) == (11, 23, 34)
    assert rows[-1]["status"] == 200


async def test_old_models_repeating_stop_finish_once(gem: Any) -> None:
    gw, fake, _ = gem
    events = [response(candidate([{"text": t}], "STOP")) for t in ("a", "b", "c")]
    fake.script(sse_reply(sse(*events)))
    chunks = await collect(await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "abc"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


async def test_multi_turn_system_messages_and_merged_turns(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(text_response()))
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": [{"type": "text", "text": "I am "}, {"type": "text", "text": "Ann."}]},
        {"role": "assistant", "content": "Hello Ann."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "What can I do?"}]},
        {"role": "user", "content": "Tell me a joke."},
    ]
    completion = await gw.client().chat.completions.create(model="gem-small", messages=messages)
    assert completion.choices[0].message.content == "Hi there"
    sent = fake.last.json
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]}
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}, {"text": "I am "}, {"text": "Ann."}]},
        {"role": "model", "parts": [{"text": "Hello Ann."}, {"text": "What can I do?"}]},
        {"role": "user", "parts": [{"text": "Tell me a joke."}]},
    ]


async def test_system_only_request_becomes_the_user_turn(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(text_response()))
    await gw.client().chat.completions.create(model="gem-small", messages=[{"role": "system", "content": "Say hi"}])
    assert fake.last.json["contents"] == [{"role": "user", "parts": [{"text": "Say hi"}]}]
    assert "systemInstruction" not in fake.last.json


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}


async def test_parallel_tool_calls_round_trip(gem: Any) -> None:
    gw, fake, _ = gem
    calls = [
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": ROUNDTRIP_SIGNATURE},
        {"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
        {"functionCall": {"name": "clock"}},
    ]
    fake.script(json_reply(response(candidate(calls))), json_reply(text_response("Sunny, 12:00")))
    client = gw.client()
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris and Rome, and the time?"}]
    first = await client.chat.completions.create(model="gem-small", messages=messages, tools=[WEATHER_TOOL, CLOCK_TOOL])
    validate_completion(first.model_dump(exclude_unset=True))
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    got = choice.message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in got] == [
        ("weather", '{"city":"Paris"}'),
        ("weather", '{"city":"Rome"}'),
        ("clock", "{}"),
    ]
    assert len({c.id for c in got}) == 3 and all(re.fullmatch(r"call_[A-Za-z0-9_-]+", c.id) for c in got)
    assert fake.last.json["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "weather",
                    "description": "Weather for a city",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]},
                },
                {"name": "clock"},  # no properties: Gemini rejects an empty OBJECT
            ]
        }
    ]
    messages.append(choice.message.model_dump(exclude_none=True))
    messages += [
        {"role": "tool", "tool_call_id": got[0].id, "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "tool", "tool_call_id": got[1].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": got[2].id, "content": [{"type": "text", "text": "12:00"}]},
    ]
    second = await client.chat.completions.create(
        model="gem-small", messages=messages, tools=[WEATHER_TOOL, CLOCK_TOOL]
    )
    assert second.choices[0].message.content == "Sunny, 12:00"  # the fake accepted the history
    contents = fake.last.json["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": ROUNDTRIP_SIGNATURE},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
            {"functionCall": {"name": "clock", "args": {}}},
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "weather", "response": {"temp": 21, "sky": "clear"}}},
            {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}},
            {"functionResponse": {"name": "clock", "response": {"result": "12:00"}}},
        ],
    }


async def test_gemini3_signature_round_trip_streamed(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(
        sse_reply(stream_bytes("gemini_stream_function_call_gemini3.jsonl"), "bytes"),
        json_reply(text_response("It is foggy.")),
    )
    client = gw.client()
    messages: list[Any] = [{"role": "user", "content": "Weather in San Francisco?"}]
    tools = [WEATHER_TOOL]
    chunks = await collect(
        await client.chat.completions.create(model="gem-3", messages=messages, tools=tools, stream=True)
    )
    deltas = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].function.name == "weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    call = deltas[0]
    messages.append(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "weather", "arguments": call.function.arguments},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "foggy, 14C"})
    final = await client.chat.completions.create(model="gem-3", messages=messages, tools=tools)
    assert final.choices[0].message.content == "It is foggy."
    sent = fake.last
    assert sent.path == "/v1beta/models/gemini-3-pro-preview:generateContent"
    assert sent.json["contents"][1]["parts"][0]["thoughtSignature"] == GEMINI3_SIGNATURE


async def test_thinking_stream_reasoning_content_then_tool_call(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(sse_reply(stream_bytes("gemini_stream_thought_then_function_call.sse"), "split_utf8"))
    stream = await gw.client().chat.completions.create(
        model="gem-small", messages=MESSAGES, tools=[WEATHER_TOOL], reasoning_effort="low", stream=True
    )
    chunks = await collect(stream)
    thought = "".join(reasoning(c) for c in chunks)
    assert thought.startswith("**Determining the Weather Inquiry**")
    assert not any(c.choices[0].delta.content for c in chunks)  # thoughts never leak into content
    calls = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, "weather")]
    assert orjson.loads(calls[0].function.arguments) == {"location": "Florence, Italy"}
    assert fake.last.json["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 1024}


async def test_thinking_non_stream(gem: Any) -> None:
    gw, fake, _ = gem
    parts = [{"text": "Let me think.", "thought": True}, {"text": "42", "thoughtSignature": ROUNDTRIP_SIGNATURE}]
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 1, "thoughtsTokenCount": 30, "cachedContentTokenCount": 3}
    fake.script(json_reply(response(candidate(parts), usage=usage)))
    completion = await gw.client().chat.completions.create(model="gem-3", messages=MESSAGES, reasoning_effort="medium")
    validate_completion(completion.model_dump(exclude_unset=True))
    message = completion.choices[0].message
    assert message.content == "42" and message.model_extra["reasoning_content"] == "Let me think."
    assert fake.last.json["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingLevel": "HIGH"}
    usage_out = completion.usage
    assert (usage_out.prompt_tokens, usage_out.completion_tokens, usage_out.total_tokens) == (5, 31, 36)
    assert usage_out.completion_tokens_details.reasoning_tokens == 30
    assert usage_out.prompt_tokens_details.cached_tokens == 3


@pytest.mark.parametrize(
    ("model", "effort", "thinking"),
    [
        ("gem-small", "none", {"includeThoughts": False, "thinkingBudget": 0}),
        ("gem-small", "minimal", {"includeThoughts": True, "thinkingBudget": 512}),
        ("gem-small", "medium", {"includeThoughts": True, "thinkingBudget": 8192}),
        ("gem-small", "high", {"includeThoughts": True, "thinkingBudget": 24576}),
        ("gem-3", "low", {"includeThoughts": True, "thinkingLevel": "LOW"}),
        ("gem-3", "xhigh", {"includeThoughts": True, "thinkingLevel": "HIGH"}),
    ],
)
async def test_reasoning_effort_mapping(gem: Any, model: str, effort: str, thinking: dict[str, Any]) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(text_response()))
    await gw.client().chat.completions.create(model=model, messages=MESSAGES, reasoning_effort=effort)
    assert fake.last.json["generationConfig"]["thinkingConfig"] == thinking


PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


async def test_images_audio_and_files(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(text_response("A cat.")))
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=large"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
        {"type": "input_audio", "input_audio": {"data": PIXEL, "format": "wav"}},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PIXEL}", "filename": "a.pdf"}},
    ]
    completion = await gw.client().chat.completions.create(
        model="gem-small", messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content == "A cat."
    assert fake.last.json["contents"][0]["parts"] == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": PIXEL}},
        # http(s) images are not fetched (the adapter is sans-IO): Gemini fetches them itself
        {"fileData": {"fileUri": "https://example.com/cat.jpg?size=large", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "https://example.com/render"}},
        {"inlineData": {"mimeType": "audio/wav", "data": PIXEL}},
        {"inlineData": {"mimeType": "application/pdf", "data": PIXEL}},
    ]


MESSY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "kind": {"const": "report"},
        "title": {"type": ["string", "null"], "format": "uri", "maxLength": 80},
        "score": {"type": "number", "exclusiveMinimum": 0, "format": "double"},
        "level": {"enum": [1, 2, 3], "description": "Severity"},
        "owner": {"$ref": "#/$defs/person"},
        "tags": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "extra": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    },
    "required": ["kind", "owner", "missing"],
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "manager": {"$ref": "#/$defs/person"}},
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "strict": True,
}
CLEAN_SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "kind": {"type": "STRING", "enum": ["report"]},
        "title": {"type": "STRING", "maxLength": 80, "nullable": True},
        "score": {"type": "NUMBER", "format": "double"},
        "level": {"description": "Severity (allowed values: 1, 2, 3)"},
        "owner": {
            "type": "OBJECT",
            "properties": {"name": {"type": "STRING"}, "manager": {"type": "OBJECT"}},
            "required": ["name"],
        },
        "tags": {"type": "ARRAY", "items": {"type": "STRING", "nullable": True}},
        "extra": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
    },
    "required": ["kind", "owner"],
}


def test_clean_schema_keeps_only_what_gemini_accepts() -> None:
    cleaned = clean_schema(MESSY_SCHEMA, "tools[0].function.parameters")
    assert cleaned == CLEAN_SCHEMA
    check_schema(cleaned, "parameters")  # the fake, like Google, accepts it
    assert clean_schema({"type": ["integer", "string", "null"]}, "x") == {
        "anyOf": [{"type": "INTEGER"}, {"type": "STRING"}],
        "nullable": True,
    }
    assert clean_schema({"allOf": [{"properties": {"a": {"type": "string"}}}, {"required": ["a"]}]}, "x") == {
        "type": "OBJECT",
        "properties": {"a": {"type": "STRING"}},
        "required": ["a"],
    }


async def test_json_modes_and_tool_schemas_are_cleaned(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(text_response('{"a": 1}')), json_reply(text_response('{"kind": "report"}')))
    client = gw.client()
    completion = await client.chat.completions.create(
        model="gem-small", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert completion.choices[0].message.content == '{"a": 1}'
    assert fake.last.json["generationConfig"] == {"responseMimeType": "application/json"}
    tool = {"type": "function", "function": {"name": "file_report", "parameters": MESSY_SCHEMA, "strict": True}}
    await client.chat.completions.create(
        model="gem-small",
        messages=MESSAGES,
        tools=[tool],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "report", "schema": MESSY_SCHEMA, "strict": True},
        },
    )
    sent = fake.last.json  # the fake rejects any schema key Gemini does not know
    assert sent["generationConfig"] == {"responseMimeType": "application/json", "responseSchema": CLEAN_SCHEMA}
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"] == CLEAN_SCHEMA


@pytest.mark.parametrize(
    ("choice", "config", "declared"),
    [
        ("none", {"mode": "NONE"}, ["weather", "clock"]),
        ("auto", {"mode": "AUTO"}, ["weather", "clock"]),
        ("required", {"mode": "ANY"}, ["weather", "clock"]),
        ({"type": "function", "function": {"name": "clock"}}, {"mode": "ANY", "allowedFunctionNames": ["clock"]}, None),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "clock"}}]},
            },
            {"mode": "AUTO"},
            ["clock"],
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "clock"}}]},
            },
            {"mode": "ANY", "allowedFunctionNames": ["clock"]},
            None,
        ),
    ],
)
async def test_tool_choice_mapping(gem: Any, choice: Any, config: Any, declared: list[str] | None) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(text_response()))
    await gw.client().chat.completions.create(
        model="gem-small", messages=MESSAGES, tools=[WEATHER_TOOL, CLOCK_TOOL], tool_choice=choice
    )
    sent = fake.last.json
    assert sent["toolConfig"] == {"functionCallingConfig": config}
    names = [d["name"] for d in sent["tools"][0]["functionDeclarations"]]
    assert names == (declared or ["weather", "clock"])


async def test_several_candidates_become_several_choices(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(response(candidate([{"text": "one"}]), candidate([{"text": "two"}], "MAX_TOKENS", 1))))
    completion = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, n=2)
    validate_completion(completion.model_dump(exclude_unset=True))
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (0, "one", "stop"),
        (1, "two", "length"),
    ]
    assert fake.last.json["generationConfig"] == {"candidateCount": 2}


async def test_several_candidates_streamed(gem: Any) -> None:
    gw, fake, _ = gem
    events = [
        response(candidate([{"text": "a"}], None, 0), candidate([{"functionCall": {"name": "clock"}}], None, 1)),
        response(candidate([{"text": "b"}], "STOP", 0), candidate([{"text": ""}], "STOP", 1)),
    ]
    fake.script(sse_reply(sse(*events)))
    stream = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, n=2, stream=True)
    chunks = await collect(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == 0)
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert text == "ab" and finishes == {0: "stop", 1: "tool_calls"}


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
    ],
)
async def test_finish_reasons(gem: Any, finish: str, expected: str) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(response({"finishReason": finish, "index": 0})))  # no content at all, as Gemini does
    completion = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES)
    validate_completion(completion.model_dump(exclude_unset=True))
    assert completion.choices[0].finish_reason == expected and completion.choices[0].message.content is None


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_function_call_is_an_error(gem: Any, stream: bool) -> None:
    gw, fake, _ = gem
    broken = response(
        {"finishReason": "MALFORMED_FUNCTION_CALL", "index": 0, "finishMessage": "Malformed function call: print(x"}
    )
    fake.script(sse_reply(sse(text_response("Let me check."), broken)) if stream else json_reply(broken))
    with pytest.raises(openai.APIError) as exc:
        result = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=stream)
        if stream:
            async for _ in result:
                pass
    assert "malformed function call" in exc.value.message and "print(x" in exc.value.message
    if not stream:
        assert isinstance(exc.value, openai.InternalServerError) and exc.value.status_code == 502


@pytest.mark.parametrize("stream", [False, True])
async def test_blocked_prompt_is_content_filter(gem: Any, stream: bool) -> None:
    gw, fake, _ = gem
    blocked = fixture_json("gemini_prompt_blocked_safety.json")
    fake.script(sse_reply(sse(blocked)) if stream else json_reply(blocked))
    result = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=stream)
    if stream:
        chunks = await collect(result)
        refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        validate_completion(result.model_dump(exclude_unset=True))
        assert result.choices[0].message.content is None
        refusal, finish = result.choices[0].message.refusal, result.choices[0].finish_reason
    assert finish == "content_filter" and "SAFETY" in refusal


def google(status: int, rpc: str, message: str, details: list[Any] | None = None) -> Any:
    return google_error(status, rpc, message, details)


RETRY_INFO = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.1s"}]
KEY_INVALID = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]


@pytest.mark.parametrize(
    ("reply", "sdk_error", "status", "code"),
    [
        (
            google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", RETRY_INFO),
            openai.RateLimitError,
            429,
            "rate_limit_exceeded",
        ),
        (google(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), openai.BadRequestError, 400, None),
        (
            google(400, "INVALID_ARGUMENT", f"API key not valid: {UPSTREAM_KEY}", KEY_INVALID),
            openai.InternalServerError,
            502,
            "upstream_auth_failed",
        ),
        (
            google(403, "PERMISSION_DENIED", "The caller does not have permission"),
            openai.InternalServerError,
            502,
            "upstream_auth_failed",
        ),
        (
            google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
            openai.InternalServerError,
            502,
            "upstream_auth_failed",
        ),
        (
            google(404, "NOT_FOUND", "models/gem-small-2024 is not found for API version v1beta"),
            openai.NotFoundError,
            404,
            "model_not_found",
        ),
        (
            google(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            openai.InternalServerError,
            503,
            None,
        ),
        (
            google(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
            openai.InternalServerError,
            504,
            "timeout",
        ),
        (google(500, "INTERNAL", "An internal error has occurred."), openai.InternalServerError, 502, None),
        (
            google(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
            openai.InternalServerError,
            502,
            None,
        ),
    ],
)
async def test_google_errors_map_to_openai_errors(
    gem: Any, reply: Any, sdk_error: Any, status: int, code: str | None
) -> None:
    gw, fake, _ = gem
    fake.script(reply)
    with pytest.raises(sdk_error) as exc:
        await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES)
    err = exc.value
    assert err.status_code == status
    validate_error({"error": err.body})
    assert UPSTREAM_KEY not in str(err.body)
    if code:
        assert err.code == code
    if status == 429:
        assert err.response.headers["retry-after"] == "3"  # RetryInfo 2.1s, rounded up
    if status == 400:
        assert err.body["message"] == "Request contains an invalid argument."  # the caller's mistake, kept


async def test_a_wrong_upstream_key_is_the_operators_problem(gem: Any) -> None:
    gw, _, check = gem
    check.key = "another-key"  # the fake answers like Google: 400 INVALID_ARGUMENT, reason API_KEY_INVALID
    with pytest.raises(openai.InternalServerError) as exc:
        await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES)
    assert exc.value.status_code == 502 and "providers.gem.api_key" in exc.value.message


async def test_error_event_mid_stream(gem: Any) -> None:
    gw, fake, _ = gem
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    # one byte per write: the first read holds no whole event, so the client has its 200 before the error
    fake.script(sse_reply(sse(response(candidate([{"text": "Hel"}], None)), error), "bytes"))
    stream = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert "overloaded" in exc.value.message and got[-1].choices[0].delta.content == "Hel"
    rows = await gw.usage_rows()
    assert rows[-1]["status"] == 503


async def test_error_event_before_any_byte_keeps_its_status(gem: Any) -> None:
    gw, fake, _ = gem
    error = {"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}}
    fake.script(sse_reply(sse(error)))
    with pytest.raises(openai.RateLimitError) as exc:
        await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=True)
    assert "Quota exceeded." in exc.value.message


async def test_stream_without_finish_reason_is_an_error(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(sse_reply(sse(response(candidate([{"text": "Hel"}], None)))))
    stream = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as exc:
        async for _ in stream:
            pass
    assert "ended before" in exc.value.message
    rows = await gw.usage_rows()
    assert rows[-1]["status"] == 502 and rows[-1]["error_code"] == "upstream_stream_truncated"


async def test_vertex_partial_function_arguments_are_refused(gem: Any) -> None:
    """Vertex-only streamFunctionCallArguments pieces: a clear error, never half a tool call."""
    gw, fake, _ = gem
    fake.script(sse_reply(sse_from_jsonl("vertex_stream_partial_function_args.jsonl", sep=b"\r\n\r\n")))
    with pytest.raises(openai.APIError) as exc:
        stream = await gw.client().chat.completions.create(model="gem-small", messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
    assert "partial function-call arguments" in exc.value.message


async def test_logprobs(gem: Any) -> None:
    gw, fake, _ = gem
    logprobs = {
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}, {"token": "!", "logProbability": -0.5}],
        "topCandidates": [
            {"candidates": [{"token": "Hi", "logProbability": -0.1}, {"token": "Hey", "logProbability": -2.0}]},
            {"candidates": [{"token": "!", "logProbability": -0.5}]},
        ],
    }
    fake.script(json_reply(response(candidate([{"text": "Hi!"}], logprobsResult=logprobs))))
    completion = await gw.client().chat.completions.create(
        model="gem-small", messages=MESSAGES, logprobs=True, top_logprobs=2
    )
    validate_completion(completion.model_dump(exclude_unset=True))
    content = completion.choices[0].logprobs.content
    assert [(t.token, t.logprob) for t in content] == [("Hi", -0.1), ("!", -0.5)]
    assert [t.token for t in content[0].top_logprobs] == ["Hi", "Hey"]
    assert fake.last.json["generationConfig"] == {"responseLogprobs": True, "logprobs": 2}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"verbosity": "low"}, "verbosity"),
        ({"stop": ["a", "b", "c", "d", "e", "f"]}, "stop"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
    ],
)
async def test_unsupported_parameters_are_400_with_param(gem: Any, http: Any, extra: Any, param: str) -> None:
    gw, fake, _ = gem
    _, (err,) = await raw_events(gw, http, {"model": "gem-small", "messages": MESSAGES, **extra})
    validate_error(err)
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}],
            "messages[1].tool_call_id",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}],
            "messages[0].content[0].image_url.url",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA==", "format": "ogg"}}]}],
            "messages[0].content[0].input_audio.format",
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}],
            "messages[0].content[0].file",
        ),
        ([{"role": "function", "name": "f", "content": "x"}], "messages[0].role"),
    ],
)
async def test_bad_messages_are_400_naming_the_message(gem: Any, http: Any, messages: Any, param: str) -> None:
    gw, fake, _ = gem
    status, (err,) = await raw_events(gw, http, {"model": "gem-small", "messages": messages})
    assert status == 400 and err["error"]["param"] == param, err
    assert fake.requests == []


async def test_upstream_name_with_models_prefix(gem: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply(text_response()))
    await gw.client().chat.completions.create(model="gem-embed", messages=MESSAGES)
    assert fake.last.path == "/v1beta/models/gemini-embedding-001:generateContent"


# -- embeddings --------------------------------------------------------------------------

VECTORS = [[0.1, -0.25, 3.5], [1e-3, 0.0, -7.125]]


def float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


@pytest.mark.parametrize("encoding", ["float", "default"])
async def test_embeddings(gem: Any, http: Any, encoding: str) -> None:
    gw, fake, _ = gem
    fake.script(json_reply({"embeddings": [{"values": v} for v in VECTORS]}))
    kwargs: dict[str, Any] = {"encoding_format": "float"} if encoding == "float" else {}
    result = await gw.client().embeddings.create(model="gem-embed", input=["sunny day", "rain"], dimensions=3, **kwargs)
    validate("CreateEmbeddingResponse", result.model_dump(exclude_unset=True))
    assert result.model == "gem-embed" and [d.index for d in result.data] == [0, 1]
    expected = VECTORS if encoding == "float" else [float32(v) for v in VECTORS]
    assert [d.embedding for d in result.data] == expected
    assert result.usage.prompt_tokens == result.usage.total_tokens == 4  # estimated: 9 bytes -> 3, 4 bytes -> 1
    sent = fake.last
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.json == {
        "requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}, "outputDimensionality": 3}
            for t in ("sunny day", "rain")
        ]
    }
    rows = await gw.usage_rows()
    assert rows[-1]["endpoint"] == "/v1/embeddings" and rows[-1]["prompt_tokens"] == 4


async def test_embeddings_base64_on_the_wire(gem: Any, http: Any) -> None:
    gw, fake, _ = gem
    fake.script(json_reply({"embeddings": [{"values": VECTORS[0]}], "usageMetadata": {"promptTokenCount": 7}}))
    async with http.post(
        f"{gw.url}/embeddings",
        json={"model": "gem-embed", "input": "sunny day", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {PRO_KEY}"},
    ) as resp:
        body = await resp.json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == float32(VECTORS[0])  # little-endian float32, as OpenAI sends
    body["data"][0]["embedding"] = float32(VECTORS[0])  # the published schema only knows the float form
    validate("CreateEmbeddingResponse", body)
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}  # Gemini's count when it sends one


async def test_embeddings_reject_token_arrays(gem: Any) -> None:
    gw, fake, _ = gem
    with pytest.raises(openai.BadRequestError) as exc:
        await gw.client().embeddings.create(model="gem-embed", input=[[1, 2, 3]])
    assert exc.value.param == "input" and fake.requests == []


# -- the pieces on their own ---------------------------------------------------------------


def test_tool_call_ids_carry_signatures_losslessly() -> None:
    for signature in (GEMINI3_SIGNATURE, ROUNDTRIP_SIGNATURE, "AB+/", "AB+/Cw==", "ABC="):
        call_id = new_tool_call_id(signature)
        assert re.fullmatch(r"call_[A-Za-z0-9]{24}__ts_[A-Za-z0-9_-]+", call_id)
        assert signature_of(call_id) == signature
    plain = new_tool_call_id()
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", plain) and signature_of(plain) is None
    assert new_tool_call_id() != plain
    assert signature_of("call_abc__ts_not*base64") is None and signature_of("toolu_01XYZ") is None


def test_the_fake_rejects_what_gemini_rejects() -> None:
    check = GeminiCheck()
    path, headers = "/v1beta/models/gemini-3-pro-preview:generateContent", {"x-goog-api-key": "k"}
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}

    def answer(body: Any, where: str = path, head: Any = headers) -> tuple[int, str] | None:
        reply = check(where, head, body)
        return None if reply is None else (reply.status, reply.json["error"]["message"])

    user = {"role": "user", "parts": [{"text": "hi"}]}
    assert answer({"contents": [user]}) is None
    assert answer({"contents": [user]}, head={})[0] == 403
    assert answer({"contents": [user]}, where="/v1beta/models/models/x:generateContent")[0] == 404
    assert "valid role" in answer({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})[1]
    nameless = {"role": "user", "parts": [{"functionResponse": {"response": {}}}]}
    assert "Name cannot be empty" in answer({"contents": [user, call, nameless]})[1]
    scalar = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": "5"}}]}
    assert "protobuf.Struct" in answer({"contents": [user, call, scalar]})[1]
    stranger = {"role": "user", "parts": [{"functionResponse": {"name": "g", "response": {}}}]}
    assert "does not answer" in answer({"contents": [user, call, stranger]})[1]
    ok = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}
    assert "thought_signature" in answer({"contents": [user, call, ok]})[1]  # Gemini 3 wants the signature
    assert answer({"contents": [user, call, ok]}, where="/v1beta/models/gemini-2.5-flash:generateContent") is None
    signed = {"role": "model", "parts": [{**call["parts"][0], "thoughtSignature": "c2ln"}]}
    assert answer({"contents": [user, signed, ok]}) is None
    decl = {"name": "f", "parameters": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}}

    def with_schema(schema: Any) -> Any:
        return answer({"contents": [user], "tools": [{"functionDeclarations": [{**decl, "parameters": schema}]}]})

    assert with_schema(decl["parameters"]) is None
    assert (
        'Unknown name "additionalProperties"' in with_schema({**decl["parameters"], "additionalProperties": False})[1]
    )
    assert "cannot start list" in with_schema({"type": "OBJECT", "properties": {"a": {"type": ["string", "null"]}}})[1]
    assert "non-empty for OBJECT" in with_schema({"type": "OBJECT", "properties": {}})[1]
    assert 'Unknown name "const"' in with_schema({"type": "OBJECT", "properties": {"a": {"const": "x"}}})[1]
    too_many = {"contents": [user], "generationConfig": {"stopSequences": list("abcdef")}}
    assert "at most 5" in answer(too_many)[1]


def test_request_translation_is_pure() -> None:
    """The adapter is sans-IO: the same body gives the same request, nothing fetched, nothing kept."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
    }
    assert gemini_request(body, "gemini-2.5-flash") == gemini_request(body, "gemini-2.5-flash")
    assert gemini_request(body, "gemini-2.5-flash")["contents"][0]["parts"] == [
        {"fileData": {"fileUri": "https://x/y.png", "mimeType": "image/png"}}
    ]
