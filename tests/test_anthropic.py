"""The Anthropic adapter: golden streams from recorded traffic, and acceptance through
the official `openai` SDK against a fake Anthropic that enforces the Messages API rules.

Golden files live in tests/golden/anthropic/<fixture stem>.json; run with
UPDATE_GOLDEN=1 to rewrite them from what the adapter emits now (then review the diff).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from conftest import PRO_KEY, UPSTREAM_KEY, Gateway, base_config
from fake_anthropic import check, error_body
from fakes import CHUNKINGS, FakeUpstream, chunked, fixture_bytes, fixture_json, json_reply, sse_from_jsonl, sse_reply
from openai_schema import validate_chunk, validate_completion, validate_error

from gateway.config import Model, Provider
from gateway.errors import GatewayError
from gateway.providers.anthropic import BLOCKS_PREFIX, JSON_TOOL, AnthropicAdapter
from gateway.providers.base import Reply, Route
from gateway.sse import SSEDecoder

GOLDEN = Path(__file__).parent / "golden" / "anthropic"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
STREAMS = (
    "anthropic_stream_text.sse",
    "anthropic_stream_tool_use.sse",
    "anthropic_stream_thinking_tool_use.sse",
    "anthropic_stream_refusal.sse",
    "anthropic_stream_error_overloaded.sse",
    "anthropic_stream_thinking_text.jsonl",
    "anthropic_stream_tool_no_args.jsonl",
)
MESSAGES = (
    "anthropic_message_text.json",
    "anthropic_message_tool_use.json",
    "anthropic_message_thinking_tool_use.json",
)
HELLO = [{"role": "user", "content": "Hello"}]
AUTH = {"Authorization": f"Bearer {PRO_KEY}"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Get weather information for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "the city"}},
            "required": ["location"],
        },
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()


# -- helpers ------------------------------------------------------------------------------


def recorded_stream(name: str) -> bytes:
    return sse_from_jsonl(name, event_names=True) if name.endswith(".jsonl") else fixture_bytes(name)


def anthropic_sse(*events: dict[str, Any]) -> bytes:
    """Frame events the way Anthropic does: `event:` line, `data:` line, blank line."""
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


def message_start(usage: dict[str, int] | None = None, msg_id: str = "msg_test") -> dict[str, Any]:
    usage = usage or {"input_tokens": 10, "output_tokens": 1}
    return {
        "type": "message_start",
        "message": {"id": msg_id, "type": "message", "role": "assistant", "model": "m", "content": [], "usage": usage},
    }


def tool_block(index: int, tool_id: str, name: str, *fragments: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}},
        }
    ]
    for fragment in fragments:
        events.append(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": fragment},
            }
        )
    return [*events, {"type": "content_block_stop", "index": index}]


def text_block(index: int, *texts: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}} for t in texts),
        {"type": "content_block_stop", "index": index},
    ]


def ending(stop_reason: str, output_tokens: int = 5) -> list[dict[str, Any]]:
    return [
        {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": output_tokens}},
        {"type": "message_stop"},
    ]


def message(*content: dict[str, Any], stop_reason: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": list(content),
        "stop_reason": stop_reason,
        "usage": usage or {"input_tokens": 10, "output_tokens": 5},
    }


def error_reply(status: int, type: str, text: str, headers: dict[str, str] | None = None) -> list[Any]:
    # three copies: a gateway that retries retryable failures sees the same answer every time
    return [json_reply(error_body(type, text), status, headers) for _ in range(3)]


def normalised(chunks: list[Any]) -> list[Any]:
    """Our chunks with the wall-clock `created` and our random `chatcmpl-` id pinned (one
    id for the whole answer, checked here), for comparison with golden files."""
    ids = {c["id"] for c in chunks if isinstance(c, dict) and "created" in c}
    assert len(ids) <= 1 and all(i.startswith("chatcmpl-") for i in ids), ids
    return [
        {**c, "created": 0, "id": "chatcmpl-unused"} if isinstance(c, dict) and "created" in c else c for c in chunks
    ]


def golden(stem: str, actual: Any = None) -> Any:
    """The expected output stored for a fixture; with UPDATE_GOLDEN=1 and `actual`, rewrite it first."""
    path = GOLDEN / f"{stem}.json"
    if UPDATE and actual is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(actual, option=orjson.OPT_INDENT_2) + b"\n")
    return orjson.loads(path.read_bytes())


def sse_data(raw: bytes) -> list[Any]:
    """The data payloads of our SSE answer; `[DONE]` kept as the string."""
    out: list[Any] = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: "):
            payload = event[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def delta_text(chunks: list[Any], field: str) -> str:
    return "".join((c.choices[0].delta.model_dump().get(field) or "") for c in chunks if c.choices)


PROVIDER = Provider(name="claude", kind="anthropic", base_url="http://anthropic.test", api_key="k", api_key_env=None)
ROUTE = Route(
    Model(id="claude-small", provider="claude", upstream="claude-small-2024", owned_by="x", created=1), PROVIDER
)


def translate(payload: bytes, chunking: str, include_usage: bool = True) -> list[Any]:
    """What the adapter emits for an upstream stream cut into reads as `chunking` says;
    a failure is the last item, as the error body plus its status."""
    translator = AnthropicAdapter(PROVIDER).stream_translator(
        ROUTE, Reply(model="claude-small", id="chatcmpl-unused", created=0, include_usage=include_usage)
    )
    decoder, out = SSEDecoder(), []
    try:
        for piece in chunked(payload, chunking):
            for event in decoder.feed(piece):
                out.extend(translator.feed(event))
        for event in decoder.close():
            out.extend(translator.feed(event))
        out.extend(translator.finish())
    except GatewayError as exc:
        out.append({**exc.body(), "status": exc.status})
    return out


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def anthropic(fake_server: Any) -> tuple[FakeUpstream, str]:
    return await fake_server(check)


@pytest.fixture
def upstream(anthropic: tuple[FakeUpstream, str]) -> FakeUpstream:
    return anthropic[0]


@pytest.fixture
async def gateway(start_gateway: Any, anthropic: tuple[FakeUpstream, str], tmp_path: Path) -> Gateway:
    """Provider `claude` (kind anthropic): models claude-small (-> claude-small-2024) and claude-large."""
    return await start_gateway(base_config({"claude": ("anthropic", anthropic[1])}, str(tmp_path / "usage.db")))


# -- golden streams -----------------------------------------------------------------------


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("name", STREAMS)
def test_golden_stream_translation(name: str, chunking: str) -> None:
    got = translate(recorded_stream(name), chunking)
    assert got == golden(Path(name).stem, got if chunking == "whole" else None)
    for chunk in got:
        if "error" in chunk:
            validate_error({"error": chunk["error"]})
        else:
            validate_chunk(chunk)


@pytest.mark.parametrize("name", STREAMS)
def test_golden_stream_without_include_usage(name: str) -> None:
    """The same chunks, minus the usage chunk and the `usage: null` keys."""
    expected = [
        {k: v for k, v in c.items() if k not in ("usage", "status")}
        for c in golden(Path(name).stem)
        if c.get("choices") != []
    ]
    got = [{k: v for k, v in c.items() if k != "status"} for c in translate(recorded_stream(name), "whole", False)]
    assert got == expected


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("name", [s for s in STREAMS if "error" not in s])
async def test_golden_stream_through_the_gateway(
    gateway: Gateway, upstream: FakeUpstream, http: Any, name: str, chunking: str
) -> None:
    """The exact bytes a client receives for a recorded stream cut into hostile reads."""
    upstream.script(sse_reply(recorded_stream(name), chunking))
    body = {"model": "claude-small", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{gateway.url}/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status == 200
        events = sse_data(await resp.read())
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        validate_chunk(chunk)
    assert normalised(events[:-1]) == golden(Path(name).stem)


@pytest.mark.parametrize("name", MESSAGES)
async def test_golden_message(gateway: Gateway, upstream: FakeUpstream, name: str) -> None:
    upstream.script(json_reply(fixture_json(name)))
    completion = await gateway.client().chat.completions.create(model="claude-small", messages=HELLO)
    got = completion.model_dump(exclude_unset=True)
    validate_completion(got)
    assert normalised([got]) == [golden(Path(name).stem, normalised([got])[0])]


# -- the fake itself: it must accept what the API accepts and refuse what it refuses -------


def test_fake_accepts_the_recorded_requests() -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    for name in ("anthropic_request_thinking_tools.json", "anthropic_request_tool_result_roundtrip.json"):
        assert check("/v1/messages", headers, fixture_json(name)) is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda b: b.pop("max_tokens"), "max_tokens"),
        (lambda b: b.update(temperature=1.5), "temperature"),
        (lambda b: b.update(n=2), "Extra inputs"),
        (lambda b: b["messages"].insert(0, {"role": "assistant", "content": "hi"}), "first message"),
        (lambda b: b["messages"].append({"role": "user", "content": "again"}), "alternate"),
        (lambda b: b["messages"].__setitem__(1, {"role": "assistant", "content": "ok"}), "tool_use_id"),
        (lambda b: b["messages"][0]["content"][0].update(text=""), "non-empty"),
        (lambda b: b["messages"].__setitem__(2, {"role": "user", "content": "no result"}), "without `tool_result`"),
        (lambda b: b.update(stop_sequences=["\n"]), "non-whitespace"),
    ],
)
def test_fake_refuses_what_anthropic_refuses(change: Any, words: str) -> None:
    body = fixture_json("anthropic_request_tool_result_roundtrip.json")
    change(body)
    reply = check("/v1/messages", {"x-api-key": "k", "anthropic-version": "2023-06-01"}, body)
    assert reply is not None and reply.status == 400 and words in reply.json["error"]["message"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda b: b["thinking"].update(budget_tokens=512), "1024"),
        (lambda b: b["thinking"].update(budget_tokens=4096), "max_tokens"),
        (lambda b: b.update(temperature=0.5), "temperature"),
        (lambda b: b.update(tool_choice={"type": "any"}), "tool_choice"),
        (
            lambda b: b["messages"].extend(
                [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}],
                    },
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
                ]
            ),
            "must start with a thinking block",
        ),
    ],
)
def test_fake_enforces_thinking_rules(change: Any, words: str) -> None:
    body = fixture_json("anthropic_request_thinking_tools.json")
    change(body)
    reply = check("/v1/messages", {"x-api-key": "k", "anthropic-version": "2023-06-01"}, body)
    assert reply is not None and reply.status == 400 and words in reply.json["error"]["message"]


# -- requests: OpenAI -> Anthropic ----------------------------------------------------------


async def test_text_request_and_response(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(fixture_json("anthropic_message_text.json")))
    completion = await gateway.client().chat.completions.create(
        model="claude-small",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
            {"role": "developer", "content": [{"type": "text", "text": "In Portuguese."}]},
            {"role": "user", "content": [{"type": "text", "text": "please"}]},
        ],
        seed=7,
        store=False,
        metadata={"app": "test"},
        frequency_penalty=0,
    )
    validate_completion(completion.model_dump(exclude_unset=True))
    assert completion.id.startswith("chatcmpl-") and completion.model == "claude-small"  # one rule for every id
    assert (await gateway.usage_rows())[-1]["upstream_id"] == "msg_01KrnBffuzxt8ttHq7iiZe7n"  # Anthropic's, kept
    assert completion.choices[0].message.content.startswith("Olá!") and completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        16,
        34,
        50,
    )
    sent = upstream.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == UPSTREAM_KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-small-2024",
        "max_tokens": 4096,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "In Portuguese."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hello"}, {"type": "text", "text": "please"}]}
        ],
    }


async def test_sampling_parameters(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(*(json_reply(fixture_json("anthropic_message_text.json")) for _ in range(2)))
    client = gateway.client()
    await client.chat.completions.create(
        model="claude-small",
        messages=HELLO,
        temperature=1.6,
        top_p=0.9,
        stop="END",
        max_tokens=50,
        max_completion_tokens=60,
        user="alice@example.com",
    )
    sent = upstream.last.json
    assert sent["temperature"] == 1.0  # OpenAI's hotter-than-1 range is clamped to Anthropic's maximum
    assert sent["top_p"] == 0.9 and sent["stop_sequences"] == ["END"] and sent["max_tokens"] == 60
    assert sent["metadata"] == {"user_id": hashlib.sha256(b"alice@example.com").hexdigest()}
    await client.chat.completions.create(model="claude-small", messages=HELLO, temperature=0.3, stop=["a", "b"])
    assert upstream.last.json["temperature"] == 0.3 and upstream.last.json["stop_sequences"] == ["a", "b"]


async def test_max_tokens_defaults_per_model(start_gateway: Any, anthropic: Any, tmp_path: Path) -> None:
    fake, url = anthropic
    doc = base_config({"claude": ("anthropic", url)}, str(tmp_path / "u.db"))
    doc["providers"]["claude"]["max_tokens"] = 2000
    doc["models"][0]["max_tokens"] = 1000
    gw = await start_gateway(doc)
    fake.script(*(json_reply(fixture_json("anthropic_message_text.json")) for _ in range(3)))
    await gw.client().chat.completions.create(model="claude-small", messages=HELLO)
    assert fake.last.json["max_tokens"] == 1000  # the model's own default
    await gw.client().chat.completions.create(model="claude-large", messages=HELLO)
    assert fake.last.json["max_tokens"] == 2000  # the provider's
    await gw.client().chat.completions.create(model="claude-large", messages=HELLO, reasoning_effort="low")
    assert fake.last.json["max_tokens"] == 3024 and fake.last.json["thinking"]["budget_tokens"] == 1024


async def test_provider_headers_and_base_url(start_gateway: Any, anthropic: Any, tmp_path: Path) -> None:
    fake, url = anthropic
    doc = base_config({"claude": ("anthropic", url + "/v1")}, str(tmp_path / "u.db"))
    doc["providers"]["claude"]["headers"] = {"anthropic-beta": "interleaved-thinking-2025-05-14"}
    gw = await start_gateway(doc)
    fake.script(json_reply(fixture_json("anthropic_message_text.json")))
    await gw.client().chat.completions.create(model="claude-small", messages=HELLO)
    assert fake.last.path == "/v1/messages"
    assert fake.last.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"


async def test_conversation_shape(gateway: Gateway, upstream: FakeUpstream) -> None:
    """Leading assistant, repeated roles, empty messages and a trailing prefill all become a valid request."""
    upstream.script(json_reply(fixture_json("anthropic_message_text.json")))
    await gateway.client().chat.completions.create(
        model="claude-small",
        messages=[
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "one"},
            {"role": "user", "content": ""},
            {"role": "system", "content": "Mid-conversation rule."},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "The answer is "},
        ],
    )
    sent = upstream.last.json
    assert sent["system"] == [{"type": "text", "text": "Mid-conversation rule."}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi! How can I help?"}]},
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The answer is"}]},
    ]


async def test_system_only_conversation_is_answered(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(fixture_json("anthropic_message_text.json")))
    await gateway.client().chat.completions.create(
        model="claude-small", messages=[{"role": "system", "content": "Say hello in Portuguese."}]
    )
    assert upstream.last.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello in Portuguese."}]}
    ]
    assert "system" not in upstream.last.json


async def test_images(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(fixture_json("anthropic_message_text.json")))
    completion = await gateway.client().chat.completions.create(
        model="claude-small",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content
    assert upstream.last.json["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"stop": ["\n"]}, "stop"),
        ({"temperature": 2.5}, "temperature"),
        ({"reasoning_effort": "huge"}, "reasoning_effort"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}}, None),
        ({"tools": [{"type": "function", "function": {"name": JSON_TOOL}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, None),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}],
                    }
                ]
            },
            None,
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                    },
                    {"role": "user", "content": "never mind"},
                ]
            },
            "messages[1]",
        ),
    ],
)
async def test_requests_anthropic_cannot_honour_are_400(
    gateway: Gateway, upstream: FakeUpstream, http: Any, extra: dict[str, Any], param: str | None
) -> None:
    body = {"model": "claude-small", "messages": HELLO, **extra}
    async with http.post(f"{gateway.url}/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status == 400
        err = await resp.json()
    validate_error(err)
    assert err["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert err["error"]["param"] == param
    else:
        assert err["error"]["param"]
    assert upstream.requests == []  # refused before anything reached Anthropic


# -- tools ----------------------------------------------------------------------------------


async def test_multi_turn_tools(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(
        json_reply(fixture_json("anthropic_message_tool_use.json")),
        json_reply(message({"type": "text", "text": "It is 40 C in Florence."})),
    )
    client = gateway.client()
    history: list[Any] = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "What's the weather in Florence,Italy?"},
    ]
    first = await client.chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], max_tokens=4000
    )
    validate_completion(first.model_dump(exclude_unset=True))
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_01XLb9pzgfLa2EMyqWot6Ezt" and call.function.name == "weather"
    assert orjson.loads(call.function.arguments) == {"location": "Florence,Italy"}
    assert upstream.last.json["tools"] == fixture_json("anthropic_request_thinking_tools.json")["tools"]
    history += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "40 C"}]
    second = await client.chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], max_tokens=4000
    )
    assert second.choices[0].message.content == "It is 40 C in Florence."
    recorded = fixture_json("anthropic_request_tool_result_roundtrip.json")
    sent = upstream.last.json
    assert sent["system"] == recorded["system"] and sent["tools"] == recorded["tools"]
    assert sent["messages"][:2] == recorded["messages"][:2]  # the assistant turn comes back exactly as recorded
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01XLb9pzgfLa2EMyqWot6Ezt", "content": "40 C"}],
    }


async def test_parallel_tools_streamed_and_answered_in_one_turn(gateway: Gateway, upstream: FakeUpstream) -> None:
    stream = anthropic_sse(
        message_start(),
        *text_block(0, "Checking both."),
        *tool_block(1, "toolu_a", "weather", "", '{"location":', ' "Paris"}'),
        *tool_block(2, "toolu_b", "weather", '{"location": "Rome"}'),
        *ending("tool_use"),
    )
    upstream.script(sse_reply(stream, "bytes"), json_reply(message({"type": "text", "text": "Both sunny."})))
    client = gateway.client()
    history: list[Any] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="claude-small", messages=history, tools=[WEATHER_TOOL], parallel_tool_calls=False, stream=True
        )
    ]
    assert upstream.last.json["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    for c in chunks:
        validate_chunk(c.model_dump(exclude_unset=True))
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "args": ""})
            entry["id"] += tc.id or ""
            entry["name"] += tc.function.name or ""
            entry["args"] += tc.function.arguments or ""
    assert sorted(calls) == [0, 1]  # tool calls counted from 0, whatever the content block index
    assert [orjson.loads(calls[i]["args"]) for i in (0, 1)] == [{"location": "Paris"}, {"location": "Rome"}]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    history += [
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": calls[i]["id"],
                    "type": "function",
                    "function": {"name": "weather", "arguments": calls[i]["args"]},
                }
                for i in (0, 1)
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_b", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_a", "content": [{"type": "text", "text": "sunny too"}]},
        {"role": "user", "content": "Thanks!"},
    ]
    await client.chat.completions.create(model="claude-small", messages=history, tools=[WEATHER_TOOL])
    assert upstream.last.json["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {"location": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny too"},
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", {"type": "none"}),
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"}),
    ],
)
async def test_tool_choice(gateway: Gateway, upstream: FakeUpstream, choice: Any, expected: Any) -> None:
    upstream.script(json_reply(fixture_json("anthropic_message_tool_use.json")))
    await gateway.client().chat.completions.create(
        model="claude-small", messages=HELLO, tools=[WEATHER_TOOL], tool_choice=choice
    )
    assert upstream.last.json["tool_choice"] == expected


async def test_tool_without_input_gets_empty_object(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(
        json_reply(message({"type": "tool_use", "id": "toolu_x", "name": "ping", "input": {}}, stop_reason="tool_use"))
    )
    completion = await gateway.client().chat.completions.create(
        model="claude-small", messages=HELLO, tools=[{"type": "function", "function": {"name": "ping"}}]
    )
    assert completion.choices[0].message.tool_calls[0].function.arguments == "{}"
    assert upstream.last.json["tools"] == [{"name": "ping", "input_schema": {"type": "object", "properties": {}}}]


# -- thinking -----------------------------------------------------------------------------


async def test_thinking_round_trip(gateway: Gateway, upstream: FakeUpstream) -> None:
    recorded = fixture_json("anthropic_message_thinking_tool_use.json")
    upstream.script(json_reply(recorded), json_reply(message({"type": "text", "text": "It is sunny."})))
    client = gateway.client()
    history: list[Any] = [{"role": "user", "content": "What's the weather in Florence, Italy?"}]
    first = await client.chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], reasoning_effort="medium"
    )
    validate_completion(first.model_dump(exclude_unset=True))
    assert upstream.last.json["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert upstream.last.json["max_tokens"] == 8192
    msg = first.choices[0].message
    extra = msg.model_extra or {}
    assert extra["reasoning_content"] == recorded["content"][0]["thinking"]
    assert extra["reasoning_signature"] == recorded["content"][0]["signature"]
    history += [msg, {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "sunny"}]
    second = await client.chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], reasoning_effort="medium"
    )
    assert second.choices[0].message.content == "It is sunny."  # the fake enforced the thinking-first rule
    sent = upstream.last.json["messages"][1]
    assert sent["content"][0] == recorded["content"][0]  # the thinking block, exactly as Anthropic sent it
    assert sent["content"][1]["type"] == "tool_use"


async def test_thinking_round_trip_streamed(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(
        sse_reply(fixture_bytes("anthropic_stream_thinking_tool_use.sse"), "split_utf8"),
        json_reply(message({"type": "text", "text": "Sunny."})),
    )
    client = gateway.client()
    history: list[Any] = [{"role": "user", "content": "What's the weather in Florence, Italy?"}]
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="claude-small", messages=history, tools=[WEATHER_TOOL], reasoning_effort="high", stream=True
        )
    ]
    reasoning, signature = delta_text(chunks, "reasoning_content"), delta_text(chunks, "reasoning_signature")
    assert reasoning.startswith("The user is asking for weather") and signature.startswith("EtYDCkYI")
    args = "".join(tc.function.arguments or "" for c in chunks for tc in c.choices[0].delta.tool_calls or [])
    history += [
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": reasoning,
            "reasoning_signature": signature,
            "tool_calls": [
                {
                    "id": "toolu_01Js4AMfx5qpTLhwTusnvT68",
                    "type": "function",
                    "function": {"name": "weather", "arguments": args},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01Js4AMfx5qpTLhwTusnvT68", "content": "sunny"},
    ]
    await client.chat.completions.create(
        model="claude-small", messages=history, reasoning_effort="high", tools=[WEATHER_TOOL]
    )
    assert upstream.last.json["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": reasoning,
        "signature": signature,
    }


async def test_thinking_stream_accumulated_by_the_sdk_helper(gateway: Gateway, upstream: FakeUpstream) -> None:
    """openai's own stream accumulator ends with a message that carries the round-trip fields."""
    upstream.script(sse_reply(recorded_stream("anthropic_stream_thinking_text.jsonl")))
    async with gateway.client().chat.completions.stream(
        model="claude-small", messages=HELLO, reasoning_effort="low"
    ) as stream:
        final = await stream.get_final_completion()
    extra = final.choices[0].message.model_extra or {}
    assert final.choices[0].message.content == "925 ÷ 5 = 185"
    assert extra["reasoning_content"].endswith("= 185") and extra["reasoning_signature"].startswith("EvQBCkYI")


async def test_several_thinking_blocks_round_trip_losslessly(gateway: Gateway, upstream: FakeUpstream) -> None:
    blocks = [
        {"type": "thinking", "thinking": "First, ", "signature": "c2lnMQ=="},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
        {"type": "thinking", "thinking": "then.", "signature": "c2lnMg=="},
    ]
    upstream.script(
        json_reply(
            message(
                *blocks, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}, stop_reason="tool_use"
            )
        ),
        json_reply(message({"type": "text", "text": "Done."})),
    )
    client = gateway.client()
    history: list[Any] = [{"role": "user", "content": "Go"}]
    first = await client.chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], reasoning_effort="low"
    )
    msg = first.choices[0].message
    assert (msg.model_extra or {})["reasoning_content"] == "First, then."
    assert (msg.model_extra or {})["reasoning_signature"].startswith(BLOCKS_PREFIX)
    history += [msg, {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}]
    await client.chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], reasoning_effort="low"
    )
    assert upstream.last.json["messages"][1]["content"][:3] == blocks


async def test_merged_assistant_turn_starts_with_its_thinking(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(message({"type": "text", "text": "Sunny."})))
    call = {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "assistant", "reasoning_content": "Look.", "reasoning_signature": "c2ln", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
    ]
    await gateway.client().chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], reasoning_effort="low"
    )
    assert [b["type"] for b in upstream.last.json["messages"][1]["content"]] == ["thinking", "text", "tool_use"]


async def test_thinking_turned_off_when_the_client_dropped_it(gateway: Gateway, upstream: FakeUpstream) -> None:
    """A tool loop whose assistant turn lost its thinking block cannot go on with thinking on."""
    upstream.script(json_reply(message({"type": "text", "text": "Sunny."})))
    history = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "reasoning_content": "unsigned thoughts",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
    ]
    completion = await gateway.client().chat.completions.create(
        model="claude-small", messages=history, tools=[WEATHER_TOOL], reasoning_effort="high"
    )
    assert completion.choices[0].message.content == "Sunny."
    sent = upstream.last.json
    assert "thinking" not in sent and sent["max_tokens"] == 4096
    assert sent["messages"][1]["content"] == [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}]


async def test_thinking_turned_off_for_a_prefill(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(message({"type": "text", "text": " 42."})))
    history = [{"role": "user", "content": "The answer?"}, {"role": "assistant", "content": "The answer is"}]
    await gateway.client().chat.completions.create(model="claude-small", messages=history, reasoning_effort="low")
    assert "thinking" not in upstream.last.json


async def test_thinking_blocks_not_sent_when_thinking_is_off(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(message({"type": "text", "text": "Ok."})))
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_content": "t", "reasoning_signature": "c2ln"},
    ]
    await gateway.client().chat.completions.create(model="claude-small", messages=history)
    assert upstream.last.json["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 0.5}, "temperature"),
        ({"top_p": 0.5}, "top_p"),
        ({"tool_choice": "required", "tools": [WEATHER_TOOL]}, "tool_choice"),
        ({"max_completion_tokens": 1000}, "max_completion_tokens"),
    ],
)
async def test_thinking_conflicts_are_400(
    gateway: Gateway, upstream: FakeUpstream, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await gateway.client().chat.completions.create(
            model="claude-small", messages=HELLO, reasoning_effort="medium", **extra
        )
    assert exc.value.param == param
    assert upstream.requests == []


async def test_reasoning_effort_none_and_temperature_one(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(*(json_reply(fixture_json("anthropic_message_text.json")) for _ in range(2)))
    client = gateway.client()
    await client.chat.completions.create(model="claude-small", messages=HELLO, reasoning_effort="none")
    assert "thinking" not in upstream.last.json
    await client.chat.completions.create(
        model="claude-small", messages=HELLO, reasoning_effort="high", temperature=1, max_tokens=5000
    )
    sent = upstream.last.json
    assert "temperature" not in sent and sent["thinking"]["budget_tokens"] == 3976 and sent["max_tokens"] == 5000


# -- JSON mode ----------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def test_json_schema_mode(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(
        json_reply(
            message(
                {"type": "tool_use", "id": "toolu_j", "name": JSON_TOOL, "input": {"city": "Rome"}},
                stop_reason="tool_use",
            )
        )
    )
    completion = await gateway.client().chat.completions.create(
        model="claude-small",
        messages=HELLO,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
    )
    validate_completion(completion.model_dump(exclude_unset=True))
    choice = completion.choices[0]
    assert orjson.loads(choice.message.content) == {"city": "Rome"}
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    sent = upstream.last.json
    assert sent["tools"] == [
        {"name": JSON_TOOL, "description": sent["tools"][0]["description"], "input_schema": SCHEMA}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": JSON_TOOL}


async def test_json_object_mode_streamed(gateway: Gateway, upstream: FakeUpstream) -> None:
    stream = anthropic_sse(
        message_start(), *tool_block(0, "toolu_j", JSON_TOOL, '{"ok"', ": true}"), *ending("tool_use")
    )
    upstream.script(sse_reply(stream, "bytes"))
    chunks = [
        c
        async for c in await gateway.client().chat.completions.create(
            model="claude-small", messages=HELLO, response_format={"type": "json_object"}, stream=True
        )
    ]
    for c in chunks:
        validate_chunk(c.model_dump(exclude_unset=True))
    assert orjson.loads(delta_text(chunks, "content")) == {"ok": True}
    assert all(not c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert upstream.last.json["tools"][0]["input_schema"] == {"type": "object"}


async def test_json_mode_with_client_tools_and_thinking(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(*(json_reply(message({"type": "text", "text": "{}"})) for _ in range(2)))
    client = gateway.client()
    fmt: Any = {"type": "json_object"}
    await client.chat.completions.create(
        model="claude-small", messages=HELLO, tools=[WEATHER_TOOL], response_format=fmt, parallel_tool_calls=False
    )
    sent = upstream.last.json  # call one of the client's tools, or answer through the JSON tool
    assert [t["name"] for t in sent["tools"]] == ["weather", JSON_TOOL]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    await client.chat.completions.create(
        model="claude-small", messages=HELLO, response_format=fmt, reasoning_effort="low"
    )
    sent = upstream.last.json  # forcing a tool is not allowed while thinking: asked for in the system text
    assert sent["tool_choice"] == {"type": "auto"} and JSON_TOOL in sent["system"][-1]["text"]


# -- stop reasons, usage ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
async def test_stop_reasons(gateway: Gateway, upstream: FakeUpstream, stop_reason: str, finish: str) -> None:
    upstream.script(json_reply(message({"type": "text", "text": "partial"}, stop_reason=stop_reason)))
    completion = await gateway.client().chat.completions.create(model="claude-small", messages=HELLO)
    assert completion.choices[0].finish_reason == finish


CACHED_USAGE = {
    "input_tokens": 5,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 20,
    "output_tokens": 1,
}


async def test_usage_counts_cache_tokens_and_reaches_the_log(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(message({"type": "text", "text": "hi"}, **{**CACHED_USAGE, "output_tokens": 7})))
    completion = await gateway.client().chat.completions.create(model="claude-small", messages=HELLO)
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (125, 7, 132)
    assert usage.prompt_tokens_details.cached_tokens == 100
    row = (await gateway.usage_rows())[-1]
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (125, 7, 132)
    assert row["provider"] == "claude" and row["upstream_model"] == "claude-small-2024" and row["status"] == 200


def cached_stream() -> bytes:
    return anthropic_sse(
        message_start(CACHED_USAGE),
        {"type": "ping"},
        *text_block(0, "Hel", "lo"),
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}},  # cumulative: 9, not 12
        {"type": "message_stop"},
    )


async def test_stream_usage_with_include_usage(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(sse_reply(cached_stream(), "coalesced"))
    chunks = [
        c
        async for c in await gateway.client().chat.completions.create(
            model="claude-small", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    ]
    for c in chunks:
        validate_chunk(c.model_dump(exclude_unset=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].id.startswith("chatcmpl-")
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"claude-small"}
    assert (await gateway.usage_rows())[-1]["upstream_id"] == "msg_test"
    assert delta_text(chunks, "content") == "Hello"
    assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (125, 9, 134)
    assert usage.prompt_tokens_details.cached_tokens == 100
    row = (await gateway.usage_rows())[-1]
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"], row["stream"]) == (125, 9, 134, 1)


async def test_stream_usage_hidden_unless_asked_but_logged(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(sse_reply(cached_stream()))
    chunks = [
        c
        async for c in await gateway.client().chat.completions.create(model="claude-small", messages=HELLO, stream=True)
    ]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert "usage" not in chunks[0].model_dump(exclude_unset=True)
    row = (await gateway.usage_rows())[-1]
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (125, 9, 134)


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "type", "sdk_error", "want", "retry_after"),
    [
        (400, "invalid_request_error", openai.BadRequestError, 400, None),
        (401, "authentication_error", openai.InternalServerError, 502, None),
        (402, "billing_error", openai.InternalServerError, 502, None),
        (403, "permission_error", openai.InternalServerError, 502, None),
        (404, "not_found_error", openai.NotFoundError, 404, None),
        (413, "request_too_large", openai.APIStatusError, 413, None),
        (429, "rate_limit_error", openai.RateLimitError, 429, "30"),
        (500, "api_error", openai.InternalServerError, 502, None),
        (529, "overloaded_error", openai.InternalServerError, 503, "20"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_errors(
    gateway: Gateway,
    upstream: FakeUpstream,
    status: int,
    type: str,
    sdk_error: type[Exception],
    want: int,
    retry_after: str | None,
    stream: bool,
) -> None:
    text = f"upstream says {type}; key {UPSTREAM_KEY}"
    upstream.script(*error_reply(status, type, text, {"retry-after": retry_after} if retry_after else None))
    with pytest.raises(sdk_error) as exc:
        await gateway.client().chat.completions.create(model="claude-small", messages=HELLO, stream=stream)
    err = exc.value
    assert err.status_code == want
    validate_error({"error": err.body})
    assert UPSTREAM_KEY not in str(err.body)
    if want < 500 and want != 429:
        assert err.body["type"] == "invalid_request_error" and f"upstream says {type}" in err.body["message"]
    if retry_after:
        assert err.response.headers["retry-after"] == retry_after
    if status == 413:
        assert err.body["code"] == "request_too_large"
    if status in (401, 403):
        assert err.body["code"] == "upstream_auth_failed"


@pytest.fixture
async def slow_anthropic(aiohttp_server: Any, start_gateway: Any, tmp_path: Path) -> Any:
    """A gateway in front of an Anthropic that sends its stream in two parts, a moment apart:
    the second part is certain to arrive after the client has had the first."""

    async def start(first: bytes, second: bytes) -> Gateway:
        async def handle(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(first)
            await asyncio.sleep(0.05)
            await resp.write(second)
            return resp

        app = web.Application()
        app.router.add_post("/v1/messages", handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        url = str(server.make_url("")).rstrip("/")
        return await start_gateway(base_config({"claude": ("anthropic", url)}, str(tmp_path / "slow.db")))

    return start


async def test_error_event_mid_stream_is_the_final_event(slow_anthropic: Any) -> None:
    first = anthropic_sse(message_start(), *text_block(0, "Partial answer")[:2])
    gw = await slow_anthropic(first, fixture_bytes("anthropic_stream_error_overloaded.sse"))
    stream = await gw.client().chat.completions.create(model="claude-small", messages=HELLO, stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert delta_text(got, "content") == "Partial answer"
    assert "overloaded" in exc.value.message and "Overloaded" in exc.value.message
    validate_error({"error": exc.value.body})
    row = (await gw.usage_rows())[-1]
    assert row["status"] == 503 and row["prompt_tokens"] == 10


async def test_error_event_bytes_on_the_wire(slow_anthropic: Any, http: Any) -> None:
    # the role chunk goes out with the first block (its `content` depends on the block's kind)
    first = anthropic_sse(message_start(), *text_block(0)[:1])
    gw = await slow_anthropic(first, fixture_bytes("anthropic_stream_error_overloaded.sse"))
    body = {"model": "claude-small", "messages": HELLO, "stream": True}
    async with http.post(f"{gw.url}/chat/completions", json=body, headers=AUTH) as resp:
        events = sse_data(await resp.read())
    assert resp.status == 200 and "[DONE]" not in events
    assert [e["choices"][0]["delta"] for e in events[:-1]] == [{"role": "assistant", "content": ""}]
    assert events[-1]["error"]["type"] == "server_error" and "Overloaded" in events[-1]["error"]["message"]
    validate_error(events[-1])


@pytest.mark.parametrize("chunking", ["whole", "bytes"])
async def test_stream_cut_before_message_stop_is_an_error(
    gateway: Gateway, upstream: FakeUpstream, chunking: str
) -> None:
    payload = fixture_bytes("anthropic_stream_tool_use.sse")
    payload = payload[: payload.index(b"event: message_delta")]  # the connection ends cleanly, the answer does not
    upstream.script(sse_reply(payload, chunking))
    stream = await gateway.client().chat.completions.create(model="claude-small", messages=HELLO, stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert got and all(c.choices[0].finish_reason is None for c in got)  # never a silent, truncated success
    assert "ended before the answer was complete" in exc.value.message
    row = (await gateway.usage_rows())[-1]
    assert row["status"] == 502 and row["error_code"] == "upstream_stream_truncated"


async def test_error_in_a_200_body_keeps_its_class(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(error_body("invalid_request_error", "messages.0: bad")))
    with pytest.raises(openai.BadRequestError) as exc:
        await gateway.client().chat.completions.create(model="claude-small", messages=HELLO)
    assert "messages.0: bad" in exc.value.message
