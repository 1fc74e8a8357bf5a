"""Acceptance (issue 13): the official `anthropic` Python SDK drives `/v1/messages` through
the gateway in front of every provider kind: `messages.create` and `messages.stream`
(`get_final_message()`) over a whole tool loop with an image, thinking and stop
sequences, then `count_tokens` and `models.list`.

For the Claude model the gateway must be a pipe: the bytes the fake Anthropic
received equal the bytes the SDK sent but for the model name, the turn-2 thinking
signature arrives byte for byte, and the stream the SDK read is the recorded one,
event for event.  For the OpenAI-kind and Gemini 3 models, each turn is checked on
what the fake upstream received (Gemini's thoughtSignature byte for byte)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from conftest import FREE_KEY, PRO_KEY
from fakes import fixture_bytes, fixture_json, json_reply
from messages_e2e import (
    ANTHROPIC_THINKING_TOOL,
    ANTHROPIC_THINKING_TOOL_STREAM,
    IMAGE,
    PNG,
    QUESTION,
    WEATHER,
    Json,
    Stack,
    TappedAnthropic,
    gemini_signature,
    recorded_signature,
    sse_events,
    start_stack,
    text_reply,
    tool_call_reply,
    with_model,
)

MODELS = {"ant": "ant-small", "oai": "oai-small", "gem": "gem-3"}
UPSTREAM = {"ant": "ant-small-2024", "oai": "oai-small-2024", "gem": "gemini-3-pro-preview"}
THINKING = {"type": "enabled", "budget_tokens": 2048}
STOP = ["END"]
TOOL_OUTPUT = "sunny, 24C"
# the recorded calls: (upstream id, input) the client must see and the upstream get back
CALLS = {
    ("ant", False): ("toolu_014azqsWLU8Djh6RhmBGRC2u", {"location": "Florence, Italy"}),
    ("ant", True): ("toolu_01Js4AMfx5qpTLhwTusnvT68", {"location": "Florence, Italy"}),
    ("oai", False): ("call_IUonKM9GCNis5eMRHuusMqoy", {"location": "Florence, Italy"}),
    ("oai", True): ("call_4XzlGBLtUe9dy3GVNV4jhq7h", {"city": "New York City"}),
    ("gem", False): (None, {"location": "Florence,Italy"}),  # Gemini calls carry no id
    ("gem", True): (None, {"location": "San Francisco"}),
}


@pytest.fixture
async def stack(aiohttp_server: Any, start_gateway: Any, tmp_path: Path) -> Any:
    stack = await start_stack(aiohttp_server, start_gateway, tmp_path)
    yield stack
    await stack.close()


async def ask(client: TappedAnthropic, stream: bool, **body: Any) -> Any:
    """One Messages call through the SDK: create, or stream and get_final_message()."""
    if not stream:
        return await client.messages.create(**body)
    async with client.messages.stream(**body) as events:
        return await events.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("kind", list(MODELS))
async def test_tool_loop_with_image_thinking_and_stop_sequences(stack: Stack, kind: str, stream: bool) -> None:
    fake, client = stack.fake(kind), stack.anthropic()
    fake.script(tool_call_reply(kind, stream), text_reply(kind, stream))
    messages: list[Any] = [{"role": "user", "content": [IMAGE, {"type": "text", "text": QUESTION}]}]
    body = {"model": MODELS[kind], "max_tokens": 4096, "tools": [WEATHER], "thinking": THINKING, "stop_sequences": STOP}

    first = await ask(client, stream, messages=messages, **body)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    upstream_id, arguments = CALLS[kind, stream]
    assert call.name == "weather" and call.input == arguments
    if upstream_id is not None:
        assert call.id == upstream_id
    check_turn_one(stack, kind, stream)

    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": TOOL_OUTPUT}]}
    )
    second = await ask(client, stream, messages=messages, **body)
    assert second.stop_reason == "end_turn" and second.content[-1].type == "text" and second.content[-1].text
    check_turn_two(stack, kind, stream, call.id)
    assert len(fake.requests) == 2


def check_turn_one(stack: Stack, kind: str, stream: bool) -> None:
    fake, sent = stack.fake(kind), stack.clients[-1].tap.last
    received = fake.last.json
    if kind == "ant":
        assert fake.raw[-1] == with_model(sent.sent, MODELS[kind], UPSTREAM[kind])  # a pipe but for the model
        if stream:  # the SDK read the recording itself, event for event, data bytes untouched
            assert sse_events(bytes(sent.body)) == sse_events(fixture_bytes(ANTHROPIC_THINKING_TOOL_STREAM))
        else:
            assert bytes(sent.body) == orjson.dumps(fixture_json(ANTHROPIC_THINKING_TOOL))
    elif kind == "oai":
        assert received["model"] == UPSTREAM[kind] and received["stop"] == STOP
        assert "reasoning_effort" not in received  # Messages thinking is dropped for OpenAI-kind models
        parts = received["messages"][0]["content"]
        assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
        assert parts[1] == {"type": "text", "text": QUESTION}
        assert received["tools"][0]["function"]["name"] == "weather"
    else:
        assert (
            fake.last.path
            == f"/v1beta/models/gemini-3-pro-preview:{'streamGenerateContent' if stream else 'generateContent'}"
        )
        parts = received["contents"][0]["parts"]
        assert parts[0] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
        config = received["generationConfig"]
        assert config["stopSequences"] == STOP and config["thinkingConfig"]["includeThoughts"] is True


def check_turn_two(stack: Stack, kind: str, stream: bool, client_id: str) -> None:
    fake, sent = stack.fake(kind), stack.clients[-1].tap.last
    received = fake.last.json
    if kind == "ant":
        assert fake.raw[-1] == with_model(sent.sent, MODELS[kind], UPSTREAM[kind])
        signature = recorded_signature(stream)
        thinking = received["messages"][1]["content"][0]
        assert thinking["type"] == "thinking" and thinking["signature"] == signature
        assert orjson.dumps(signature) in fake.raw[-1]  # byte for byte on the wire
        assert received["messages"][2]["content"][0]["tool_use_id"] == client_id == CALLS[kind, stream][0]
    elif kind == "oai":
        upstream_id = CALLS[kind, stream][0]
        assert received["messages"][1]["tool_calls"][0]["id"] == upstream_id
        assert received["messages"][2] == {"role": "tool", "tool_call_id": upstream_id, "content": TOOL_OUTPUT}
    else:
        model_turn = received["contents"][1]
        call = next(p for p in model_turn["parts"] if "functionCall" in p)
        assert call["thoughtSignature"] == gemini_signature(stream)  # byte for byte
        assert call["functionCall"]["name"] == "weather"
        response = received["contents"][2]["parts"][0]["functionResponse"]
        assert response["name"] == "weather" and response["response"] == {"result": TOOL_OUTPUT}


async def test_claude_stream_is_the_upstreams_stream_for_the_sdk(stack: Stack) -> None:
    """What the SDK accumulates through the gateway equals what it accumulates from the
    provider itself (the fake Anthropic, spoken to directly, with the same recording)."""
    recording = fixture_bytes(ANTHROPIC_THINKING_TOOL_STREAM)
    stack.ant.script(tool_call_reply("ant", True), tool_call_reply("ant", True))
    body: Json = {"max_tokens": 4096, "tools": [WEATHER], "thinking": THINKING,
                  "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip
    via_gateway = await ask(stack.anthropic(), True, model="ant-small", **body)
    direct = anthropic.AsyncAnthropic(
        base_url=stack.urls["ant"], api_key="sk-direct", default_headers={"x-api-key": "sk-direct"}, max_retries=0
    )
    try:
        from_upstream = await ask(direct, True, model="ant-small-2024", **body)
    finally:
        await direct.close()
    assert via_gateway.model_dump() == from_upstream.model_dump()
    assert sse_events(bytes(stack.clients[-1].tap.last.body)) == sse_events(recording)


@pytest.mark.parametrize("kind", list(MODELS))
async def test_count_tokens(stack: Stack, kind: str) -> None:
    """Claude: Anthropic's own count (the body passed on but for the model); others: the estimate."""
    recorded = fixture_json("anthropic_count_tokens_response.json")
    stack.ant.script(json_reply(recorded))
    client = stack.anthropic()
    messages = [{"role": "user", "content": QUESTION}]
    count = await client.messages.count_tokens(model=MODELS[kind], messages=messages, tools=[WEATHER])
    answer = orjson.loads(bytes(client.tap.last.body))
    if kind == "ant":
        assert count.input_tokens == 1114 and answer == recorded
        assert stack.ant.last.path == "/v1/messages/count_tokens"
        assert stack.ant.raw[-1] == with_model(client.tap.last.sent, "ant-small", "ant-small-2024")
    else:
        assert answer["estimated"] is True and count.input_tokens == answer["input_tokens"] > 0
        assert not stack.fake(kind).requests  # no upstream call for an estimate


async def test_models_list_and_retrieve_in_anthropics_shape(stack: Stack, http: aiohttp.ClientSession) -> None:
    """Anthropic's shape when the request carries anthropic-version (the SDK's always do)."""
    client = stack.anthropic()
    models = [m async for m in client.models.list()]
    assert [m.id for m in models] == [m.id for m in stack.gw.config.models.values()]
    assert all(m.type == "model" and m.display_name == m.id for m in models)
    page = orjson.loads(bytes(client.tap.last.body))
    assert set(page) == {"data", "has_more", "first_id", "last_id"} and page["has_more"] is False
    one = await client.models.retrieve("gem-3")
    assert one.id == "gem-3" and one.type == "model"
    free = [m.id async for m in stack.anthropic(key=FREE_KEY).models.list()]
    assert free == ["ant-small", "oai-small", "gem-small"]
    async with http.get(f"{stack.gw.url}/models", headers={"Authorization": f"Bearer {FREE_KEY}"}) as resp:
        openai_page = await resp.json()  # without anthropic-version: OpenAI's shape, as before
    assert openai_page["object"] == "list" and [m["id"] for m in openai_page["data"]] == free


RECORDED_REQUESTS = sorted(p.name for p in (Path(__file__).parent / "fixtures").glob("anthropic_request_*.json"))


@pytest.mark.parametrize("name", RECORDED_REQUESTS)
async def test_recorded_client_bodies_pass_byte_for_byte(stack: Stack, name: str, http: aiohttp.ClientSession) -> None:
    """Bodies real clients sent (other serialisers: spaces after separators, server-tool
    history, cache_control with ttl) reach Anthropic as they were but for the model."""
    recorded = fixture_bytes(name)
    model = orjson.loads(recorded)["model"]
    sent = with_model(recorded, model, "ant-small")
    stream = orjson.loads(recorded).get("stream") is True
    path = "/v1/messages/count_tokens" if "count_tokens" in name else "/v1/messages"
    stack.ant.check = None  # each was accepted by the real API when recorded; the bytes are what is checked here
    stack.ant.script(text_reply("ant", stream) if "count_tokens" not in name else json_reply({"input_tokens": 7}))
    beta = "interleaved-thinking-2025-05-14"
    headers = {"x-api-key": PRO_KEY, "anthropic-version": "2023-06-01", "anthropic-beta": beta}
    async with http.post(
        f"{stack.root}{path}", data=sent, headers={**headers, "Content-Type": "application/json"}
    ) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer
    assert stack.ant.last.path == path and stack.ant.raw[-1] == with_model(recorded, model, "ant-small-2024")
    assert stack.ant.last.headers["anthropic-beta"] == beta
    if stream:
        assert sse_events(answer) == sse_events(fixture_bytes("anthropic_stream_text.sse"))
