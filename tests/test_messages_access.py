"""Acceptance (issue 13): on `/v1/messages` the gateway keeps the rules it keeps for chat,
answered in Anthropic's error shape ({"type": "error", "error": {"type", "message"}}):
tiers, unknown models and keys, rate limits, one usage row per call (the Anthropic
passthrough's usage included), failures in the middle of a stream, bad input naming
its field, and no secret crossing over (client keys never go upstream, an upstream
key never comes back)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from conftest import FREE_KEY, PRO_KEY, UPSTREAM_KEY
from fakes import fixture_bytes, json_reply, sse_reply
from messages_e2e import (
    LIMITED_KEY,
    QUESTION,
    WEATHER,
    Json,
    Stack,
    error_of,
    sse_events,
    start_stack,
    text_reply,
    tool_call_reply,
)

MODELS = {"ant": "ant-small", "oai": "oai-small", "gem": "gem-small"}
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture
async def stack(aiohttp_server: Any, start_gateway: Any, tmp_path: Path) -> Any:
    stack = await start_stack(aiohttp_server, start_gateway, tmp_path)
    yield stack
    await stack.close()


def no_upstream_call(stack: Stack) -> bool:
    return not (stack.ant.requests or stack.oai.requests or stack.gem.requests)


@pytest.mark.parametrize("kind", list(MODELS))
async def test_a_model_outside_the_tier_is_a_permission_error(stack: Stack, kind: str) -> None:
    client = stack.anthropic(FREE_KEY)
    large = f"{kind}-large"
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        await client.messages.create(model=large, max_tokens=64, messages=MESSAGES)
    assert exc.value.status_code == 403 and error_of(client.tap.last)["type"] == "permission_error"
    assert "free" in exc.value.message  # names the tier
    with pytest.raises(anthropic.PermissionDeniedError):
        await client.messages.count_tokens(model=large, messages=MESSAGES)
    with pytest.raises(anthropic.PermissionDeniedError):
        await client.models.retrieve(large)
    assert error_of(client.tap.last)["type"] == "permission_error"
    assert no_upstream_call(stack)


async def test_an_unknown_model_is_not_found(stack: Stack) -> None:
    client = stack.anthropic()
    for call in (
        client.messages.create(model="claude-nope", max_tokens=64, messages=MESSAGES),
        client.messages.count_tokens(model="claude-nope", messages=MESSAGES),
        client.models.retrieve("claude-nope"),
    ):
        with pytest.raises(anthropic.NotFoundError) as exc:
            await call
        assert exc.value.status_code == 404 and error_of(client.tap.last)["type"] == "not_found_error"
    assert no_upstream_call(stack)


async def test_a_bad_key_is_an_authentication_error(stack: Stack, http: aiohttp.ClientSession) -> None:
    client = stack.anthropic("sk-not-a-key")
    with pytest.raises(anthropic.AuthenticationError) as exc:
        await client.messages.create(model="ant-small", max_tokens=64, messages=MESSAGES)
    assert exc.value.status_code == 401 and error_of(client.tap.last)["type"] == "authentication_error"
    body = {"model": "oai-small", "max_tokens": 64, "messages": MESSAGES}
    for headers in ({"x-api-key": "sk-not-a-key"}, {}):  # Anthropic's own header, or none at all
        async with http.post(f"{stack.root}/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 401
            answer = await resp.json()
        assert answer["type"] == "error" and answer["error"]["type"] == "authentication_error"
    assert no_upstream_call(stack)


@pytest.mark.parametrize("kind", list(MODELS))
async def test_both_key_headers_work_and_no_client_key_goes_upstream(
    stack: Stack, kind: str, http: aiohttp.ClientSession
) -> None:
    fake = stack.fake(kind)
    fake.script(text_reply(kind, False), text_reply(kind, False))
    body = {"model": MODELS[kind], "max_tokens": 64, "messages": MESSAGES}
    headers = {"anthropic-version": "2023-06-01"}
    for auth in ({"x-api-key": PRO_KEY}, {"Authorization": f"Bearer {PRO_KEY}"}):
        async with http.post(f"{stack.root}/v1/messages", json=body, headers={**headers, **auth}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["type"] == "message"
    assert len(fake.requests) == 2
    for received in fake.requests:
        values = " ".join(received.headers.values())
        assert PRO_KEY not in values  # the client's key stays here
        assert UPSTREAM_KEY in values  # the provider's key, in the provider's header
        if kind == "ant":
            assert received.headers["x-api-key"] == UPSTREAM_KEY
            assert received.headers["anthropic-version"] == "2023-06-01"  # the client's, forwarded


async def test_a_key_over_its_rpm_gets_a_rate_limit_error(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stack.ant.script(text_reply("ant", True))
    client = stack.anthropic(LIMITED_KEY)
    async with client.messages.stream(model="ant-small", max_tokens=64, messages=MESSAGES) as events:
        await events.get_final_message()
    with pytest.raises(anthropic.RateLimitError) as exc:
        await client.messages.create(model="oai-small", max_tokens=64, messages=MESSAGES)
    assert exc.value.status_code == 429 and error_of(client.tap.last)["type"] == "rate_limit_error"
    assert int(exc.value.response.headers["retry-after"]) > 0
    assert len(stack.ant.requests) == 1 and not stack.oai.requests
    assert LIMITED_KEY not in caplog.text  # the session-wide secret check does not know this key
    assert not any(LIMITED_KEY.encode() in e.body for e in client.tap.exchanges)


# the usage each recorded answer reports: (prompt, completion) tokens
RECORDED_USAGE = {
    ("ant", False): (424, 118),  # the passthrough reads Anthropic's own usage...
    ("ant", True): (424, 119),  # ...from message_start and message_delta when streamed
    ("oai", False): (61, 16),
    ("oai", True): (44, 16),  # the recording's usage chunk
    ("gem", False): (54, 63),  # candidates 15 + thoughts 48
    ("gem", True): (29, 60),  # candidates 15 + thoughts 45
}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("kind", list(MODELS))
async def test_one_usage_row_per_call_with_the_upstreams_tokens(stack: Stack, kind: str, stream: bool) -> None:
    model = "gem-3" if kind == "gem" else MODELS[kind]
    stack.fake(kind).script(tool_call_reply(kind, stream))
    client = stack.anthropic()
    body: Json = {"model": model, "max_tokens": 1024, "messages": MESSAGES, "tools": [WEATHER]}
    if stream:
        async with client.messages.stream(**body) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**body)
    rows = await stack.gw.usage_rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row["endpoint"], row["model"], row["provider"], row["key_name"], row["tier"]) == (
        "/v1/messages", model, kind, "alice", "pro",
    )  # fmt: skip
    assert row["status"] == 200 and bool(row["stream"]) is stream and not row["tokens_estimated"]
    prompt, completion = RECORDED_USAGE[kind, stream]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    usage = message.usage  # what the client was told agrees with the row
    told = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    assert (told, usage.output_tokens) == (row["prompt_tokens"], row["completion_tokens"])


def failing_stream(kind: str) -> Any:
    """The first events of a recorded stream, then the upstream fails: Anthropic with an
    error event that echoes the provider key, the others by cutting the connection."""
    if kind == "ant":
        events = fixture_bytes("anthropic_stream_text.sse").split(b"\n\n")[:4]
        error = {"type": "error", "error": {"type": "api_error", "message": f"Internal error for {UPSTREAM_KEY}"}}
        # one byte per write: the first read holds no whole event, so the client has its 200 before the error
        return sse_reply(b"\n\n".join(events) + b"\n\nevent: error\ndata: " + orjson.dumps(error) + b"\n\n", "bytes")
    if kind == "ant-cut":  # the connection dropped before message_stop
        return sse_reply(fixture_bytes("anthropic_stream_text.sse").split(b"event: content_block_stop")[0], cut=True)
    if kind == "oai":
        return sse_reply(fixture_bytes("openai_chunks_text_usage.sse").split(b"\n\n")[2] + b"\n\n", cut=True)
    return sse_reply(fixture_bytes("gemini_stream_text_multi_chunk.sse").split(b"\r\n\r\n")[0] + b"\r\n\r\n", cut=True)


@pytest.mark.parametrize("kind", ["ant", "ant-cut", "oai", "gem"])
async def test_an_upstream_failing_mid_stream_is_an_error_event(stack: Stack, kind: str) -> None:
    model = kind.removesuffix("-cut")
    stack.fake(model).script(failing_stream(kind))
    client = stack.anthropic()
    text = ""
    with pytest.raises(anthropic.APIStatusError) as exc:
        async with client.messages.stream(model=MODELS[model], max_tokens=64, messages=MESSAGES) as events:
            async for piece in events.text_stream:
                text += piece
    assert text  # the answer had started: the error came as an event, not as a status
    raw = bytes(client.tap.last.body)
    assert client.tap.last.status == 200 and sse_events(raw)[-1][0] == b"error"
    assert orjson.loads(sse_events(raw)[-1][1])["type"] == "error"
    assert UPSTREAM_KEY not in raw.decode() and UPSTREAM_KEY not in str(exc.value)
    (row,) = await stack.gw.usage_rows()
    assert row["endpoint"] == "/v1/messages" and row["status"] >= 500 and row["error_code"]


BAD_FIELDS = [
    ("max_tokens", "many"),
    ("messages", "hello"),
    ("stream", "yes"),
    ("tools", {"name": "weather"}),
    ("stop_sequences", "END"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f for f, _ in BAD_FIELDS])
@pytest.mark.parametrize("kind", list(MODELS))
async def test_a_wrong_type_is_a_400_naming_the_field(
    stack: Stack, kind: str, field: str, value: Any, http: aiohttp.ClientSession
) -> None:
    body = {"model": MODELS[kind], "max_tokens": 64, "messages": MESSAGES, field: value}
    headers = {"x-api-key": PRO_KEY, "anthropic-version": "2023-06-01"}
    async with http.post(f"{stack.root}/v1/messages", json=body, headers=headers) as resp:
        answer = await resp.json()
        assert resp.status == 400, answer
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert field in answer["error"]["message"]
    if kind != "ant" or field == "stream":  # the gateway judged it; Claude's bad bodies are Anthropic's to judge
        assert no_upstream_call(stack)
    rows = await stack.gw.usage_rows()
    assert [(r["endpoint"], r["status"]) for r in rows] == [("/v1/messages", 400)]


NESTED = {  # the exact path each message must name
    "messages[0].content[0].text": {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    "tools[0].input_schema": {"tools": [{"name": "weather", "input_schema": "object"}]},
    "thinking.budget_tokens": {"thinking": {"type": "enabled", "budget_tokens": "many"}},
    "stop_sequences[0]": {"stop_sequences": [5]},
    "messages[1].content[0].input": {
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": "x"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
        ]
    },
}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("param", list(NESTED))
async def test_a_wrong_type_deep_in_the_body_is_named_by_its_path(
    stack: Stack, param: str, path: str, http: aiohttp.ClientSession
) -> None:
    """Translated models (the gateway reads every field): the message names the exact path."""
    for model in ("oai-small", "gem-3"):
        body = {"model": model, "max_tokens": 64, "messages": MESSAGES, **NESTED[param]}
        async with http.post(f"{stack.root}{path}", json=body, headers={"x-api-key": PRO_KEY}) as resp:
            answer = await resp.json()
            assert resp.status == 400, answer
        assert answer["error"]["type"] == "invalid_request_error" and f"'{param}'" in answer["error"]["message"]
    assert no_upstream_call(stack)


async def test_upstream_errors_keep_anthropics_types(stack: Stack) -> None:
    """An Anthropic 4xx reaches the client as Anthropic said it; the others in its shape."""
    stack.ant.script(json_reply({"type": "error", "error": {"type": "invalid_request_error", "message": "bad x"}}, 400))
    client = stack.anthropic()
    with pytest.raises(anthropic.BadRequestError) as exc:
        await client.messages.create(model="ant-small", max_tokens=64, messages=MESSAGES)
    assert "bad x" in exc.value.message and error_of(client.tap.last)["type"] == "invalid_request_error"
