"""Acceptance: the official `openai` SDK against the gateway, in front of a fake
OpenAI-compatible upstream that replays recorded traffic."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from conftest import FREE_KEY, PRO_KEY, UPSTREAM_KEY, Gateway
from fakes import CHUNKINGS, FakeUpstream, fixture_bytes, fixture_json, json_reply, sse_from_jsonl, sse_reply
from openai_schema import validate, validate_chunk, validate_completion, validate_error

MESSAGES = [{"role": "user", "content": "Hello"}]


async def test_models_list_is_exactly_the_tier(gateway: Gateway) -> None:
    pro = await gateway.client(PRO_KEY).models.list()
    free = await gateway.client(FREE_KEY).models.list()
    assert [m.id for m in pro.data] == ["oai-small", "oai-large"]
    assert [m.id for m in free.data] == ["oai-small"]
    assert all(m.object == "model" and m.owned_by == "oai" and m.created == 1_700_000_000 for m in pro.data)


async def test_models_list_validates_against_the_spec(gateway: Gateway, http: Any) -> None:
    async with http.get(f"{gateway.url}/models", headers={"Authorization": f"Bearer {PRO_KEY}"}) as resp:
        assert resp.status == 200
        validate("ListModelsResponse", await resp.json())


async def test_retrieve_model_and_tier_403(gateway: Gateway) -> None:
    model = await gateway.client(PRO_KEY).models.retrieve("oai-large")
    assert model.id == "oai-large"
    with pytest.raises(openai.PermissionDeniedError) as exc:  # as a call to it answers (routing.resolve)
        await gateway.client(FREE_KEY).models.retrieve("oai-large")
    assert exc.value.code == "model_not_allowed"


async def test_model_ids_may_contain_slashes(start_gateway: Any, openai_upstream: Any, tmp_path: Any) -> None:
    from conftest import base_config

    doc = base_config({"oai": ("openai", openai_upstream[1])}, str(tmp_path / "u.db"))
    doc["models"].append({"id": "org/team/model-x", "provider": "oai"})
    doc["tiers"]["pro"]["models"].append("org/team/model-x")
    gw = await start_gateway(doc)
    model = await gw.client().models.retrieve("org/team/model-x")
    assert model.id == "org/team/model-x"


async def test_chat_non_stream_text(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(fixture_json("openai_chat_completion_text.json")))
    completion = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, seed=7)
    validate_completion(completion.model_dump(exclude_unset=True))
    assert completion.model == "oai-small"
    assert completion.choices[0].message.content.startswith("**Holiday")
    sent = upstream.last
    assert sent.path == "/chat/completions"
    assert sent.json["model"] == "oai-small-2024"  # rewritten to the upstream name
    assert sent.json["seed"] == 7  # unknown-to-us parameters pass through unchanged
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "stream_options" not in sent.json


async def test_chat_non_stream_tool_calls(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(fixture_json("openai_chat_completion_tool_calls.json")))
    completion = await gateway.client().chat.completions.create(
        model="oai-small", messages=fixture_json("openai_request_tool_result_roundtrip.json")["messages"]
    )
    validate_completion(completion.model_dump(exclude_unset=True))
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "weather" and orjson.loads(call.function.arguments) == {"location": "Florence, Italy"}


@pytest.mark.parametrize("chunking", CHUNKINGS)
async def test_chat_stream_text_with_usage(gateway: Gateway, upstream: FakeUpstream, chunking: str) -> None:
    upstream.script(sse_reply(fixture_bytes("openai_chunks_text_usage.sse"), chunking))
    stream = await gateway.client().chat.completions.create(
        model="oai-small", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    for c in chunks:
        validate_chunk(c.model_dump(exclude_unset=True))
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {"oai-small"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("I'm unable to provide real-time weather")
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 44
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert upstream.last.json["stream_options"] == {"include_usage": True}


async def test_chat_stream_usage_hidden_unless_asked(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(sse_reply(fixture_bytes("openai_chunks_text_usage.sse")))
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)  # no usage chunk
    assert all(c.usage is None for c in chunks)
    assert upstream.last.json["stream_options"] == {"include_usage": True}  # asked upstream for the log
    rows = await gateway.usage_rows()
    assert (rows[-1]["prompt_tokens"], rows[-1]["completion_tokens"], rows[-1]["total_tokens"]) == (14, 30, 44)


async def test_chat_stream_jsonl_recording_newer_fields(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(sse_reply(sse_from_jsonl("openai_chunks_text_usage.jsonl") + b"data: [DONE]\n\n", "split_utf8"))
    stream = await gateway.client().chat.completions.create(
        model="oai-large", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    for c in chunks:
        validate_chunk(c.model_dump(exclude_unset=True))
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    expected = "".join(
        orjson.loads(line)["choices"][0]["delta"].get("content") or ""
        for line in fixture_bytes("openai_chunks_text_usage.jsonl").splitlines()
        if line.strip() and orjson.loads(line)["choices"]
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


@pytest.mark.parametrize("name", ["openai_chunks_tool_call.sse", "openai_chunks_tool_calls_parallel.sse"])
async def test_chat_stream_tool_calls(gateway: Gateway, upstream: FakeUpstream, name: str) -> None:
    upstream.script(sse_reply(fixture_bytes(name), "bytes"))
    stream = await gateway.client().chat.completions.create(
        model="oai-small", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    calls: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        validate_chunk(chunk.model_dump(exclude_unset=True))
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "args": ""})
                entry["name"] += tc.function.name or ""
                entry["args"] += tc.function.arguments or ""
    assert calls and all(isinstance(orjson.loads(c["args"]), dict) for c in calls.values())
    assert sorted(calls) == list(range(len(calls)))


async def test_stream_hostile_framing_comments_events_crlf(gateway: Gateway, upstream: FakeUpstream) -> None:
    chunks = [
        line[6:]
        for line in fixture_bytes("openai_chunks_finish_length.sse").split(b"\n")
        if line.startswith(b"data: {")
    ]
    hostile = b": keep-alive\r\n\r\n" + b"".join(
        b"event: message\r\nid: 1\r\ndata: " + c + b"\r\n\r\n: ping\r\n\r\n" for c in chunks
    )
    hostile += b"data: [DONE]\r\n\r\n"
    upstream.script(sse_reply(hostile, "split_crlf"))
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    got = [c async for c in stream]
    assert len(got) == len(chunks) - 1  # all but the usage chunk, which this client did not ask for
    assert got[-1].choices[0].finish_reason == "length"


async def test_stream_very_long_event(gateway: Gateway, upstream: FakeUpstream) -> None:
    big = "x" * 300_000  # over aiohttp's 128 KiB readline limit
    events = [
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "u",
            "choices": [{"index": 0, "delta": d}],
        }
        for d in ({"role": "assistant", "content": ""}, {"content": big})
    ]
    events.append({**events[0], "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    payload = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    upstream.script(sse_reply(payload))
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    got = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in got) == big
    for c in got:
        validate_chunk(c.model_dump(exclude_unset=True))  # finish_reason filled in where upstream omitted it


async def test_stream_raw_bytes_are_openai_framing(gateway: Gateway, upstream: FakeUpstream, http: Any) -> None:
    upstream.script(sse_reply(fixture_bytes("openai_chunks_finish_length.sse")))
    body = {"model": "oai-small", "messages": MESSAGES, "stream": True}
    async with http.post(
        f"{gateway.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {PRO_KEY}"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-request-id"]
        raw = await resp.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    for event in events[:-2]:
        assert event.startswith(b"data: {") and b"\n" not in event
        validate_chunk(orjson.loads(event[6:]))


# -- errors ------------------------------------------------------------------------------


async def test_unknown_key_is_401(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        await gateway.client("sk-wrong").chat.completions.create(model="oai-small", messages=MESSAGES)
    assert exc.value.code == "invalid_api_key"
    validate_error(exc.value.body and {"error": exc.value.body})
    assert "sk-wrong" not in str(exc.value)


async def test_missing_key_is_401(gateway: Gateway, http: Any) -> None:
    async with http.get(f"{gateway.url}/models") as resp:
        assert resp.status == 401
        validate_error(await resp.json())


async def test_unknown_model_is_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        await gateway.client().chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert exc.value.code == "model_not_found" and exc.value.param == "model"


async def test_model_outside_tier_is_403_naming_the_tier(gateway: Gateway, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await gateway.client(FREE_KEY).chat.completions.create(model="oai-large", messages=MESSAGES)
    assert "'free'" in exc.value.message and "upgrade" in exc.value.message
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "oai-small", "messages": []}', "messages"),
        (b'{"model": "oai-small"}', "messages"),
        (b'{"model": "oai-small", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "oai-small", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (
            b'{"model": "oai-small", "messages": [{"role": "user", "content": "x"}], '
            b'"stream_options": {"include_usage": true}}',
            "stream_options",
        ),
    ],
)
async def test_bad_requests_are_400_with_param(gateway: Gateway, http: Any, body: bytes, param: str | None) -> None:
    async with http.post(
        f"{gateway.url}/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {PRO_KEY}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        err = await resp.json()
    validate_error(err)
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param


async def test_sdk_raises_bad_request_for_empty_messages(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await gateway.client().chat.completions.create(model="oai-small", messages=[])
    assert exc.value.param == "messages"


@pytest.mark.parametrize(
    ("status", "fixture", "sdk_error", "want_status"),
    [
        (400, "openai_error_400_unsupported_parameter.json", openai.BadRequestError, 400),
        (400, "openai_error_400_code_null.json", openai.BadRequestError, 400),
        (404, None, openai.NotFoundError, 404),
        (422, None, openai.UnprocessableEntityError, 422),
        (429, "openai_error_429_insufficient_quota.json", openai.RateLimitError, 429),
        (401, None, openai.InternalServerError, 502),
        (403, None, openai.InternalServerError, 502),
        (500, None, openai.InternalServerError, 502),
        (503, None, openai.InternalServerError, 503),
    ],
)
async def test_upstream_errors_keep_openai_shape(
    gateway: Gateway,
    upstream: FakeUpstream,
    status: int,
    fixture: str | None,
    sdk_error: type[Exception],
    want_status: int,
) -> None:
    body = fixture_json(fixture) if fixture else {"error": {"message": f"upstream says {status}", "type": "x"}}
    if status == 401:
        body = {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}", "type": "invalid_request_error"}}
    upstream.script(*[json_reply(body, status, {"Retry-After": "7"} if status == 429 else None)] * 3)
    with pytest.raises(sdk_error) as exc:
        await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES)
    err = exc.value
    # 5xx is retried (3 attempts by default); a 4xx never; a 429 asking for 7 s goes back to the client at once
    assert len(upstream.requests) == (3 if status >= 500 else 1)
    assert err.status_code == want_status
    validate_error({"error": err.body})
    assert UPSTREAM_KEY not in str(err.body)
    if fixture and status < 500:
        assert err.body == fixture_json(fixture)["error"]  # the upstream's 4xx reaches the client intact
    if status == 429:
        assert err.response.headers["retry-after"] == "7"


async def test_upstream_error_before_stream_keeps_status(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(*[json_reply(fixture_json("openai_error_429_insufficient_quota.json"), 429)] * 3)
    with pytest.raises(openai.RateLimitError):
        await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    assert len(upstream.requests) == 3  # retried (no byte had reached the client), then given up


async def test_upstream_dies_mid_stream_gives_final_error_event(gateway: Gateway, upstream: FakeUpstream) -> None:
    payload = fixture_bytes("openai_chunks_text_usage.sse")
    upstream.script(sse_reply(payload[: len(payload) // 2], cut=True))
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert got, "chunks before the failure were delivered"
    assert "ended before" in exc.value.message or "closed" in exc.value.message
    rows = await gateway.usage_rows()
    assert rows[-1]["status"] == 502 and rows[-1]["error_code"].startswith("upstream")


async def test_upstream_error_event_mid_stream(gateway: Gateway, upstream: FakeUpstream) -> None:
    first = fixture_bytes("openai_chunks_finish_length.sse").split(b"\n\n")[0] + b"\n\n"
    err = b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    upstream.script(sse_reply(first + err, "bytes"))  # the first chunk goes out before the error arrives
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 1 and "The server had an error" in exc.value.message


async def test_upstream_error_event_before_any_chunk_is_a_real_status(gateway: Gateway, upstream: FakeUpstream) -> None:
    err = b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    upstream.script(*[sse_reply(err)] * 3)
    with pytest.raises(openai.InternalServerError) as exc:
        await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    assert exc.value.status_code == 502 and "The server had an error" in exc.value.message
    assert len(upstream.requests) == 3  # nothing had reached the client, so it was retried


async def test_connection_refused_is_502(start_gateway: Any, tmp_path: Any) -> None:
    from conftest import base_config

    gw = await start_gateway(base_config({"oai": ("openai", "http://127.0.0.1:9")}, str(tmp_path / "u.db")))
    with pytest.raises(openai.InternalServerError) as exc:
        await gw.client().chat.completions.create(model="oai-small", messages=MESSAGES)
    assert exc.value.status_code == 502 and exc.value.code == "upstream_unreachable"


async def test_upstream_timeout_is_504(start_gateway: Any, openai_upstream: Any, tmp_path: Any) -> None:
    from conftest import base_config
    from fakes import Reply

    fake, url = openai_upstream
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["providers"]["oai"]["timeouts"] = {"first_byte": 0.3}
    gw = await start_gateway(doc)
    fake.script(*[Reply(json={}, delay=5)] * 3)
    with pytest.raises(openai.InternalServerError) as exc:
        await gw.client().chat.completions.create(model="oai-small", messages=MESSAGES)
    assert exc.value.status_code == 504


async def test_provider_without_key_is_503_naming_no_variable(
    start_gateway: Any, openai_upstream: Any, tmp_path: Any
) -> None:
    from conftest import ENV, base_config

    env = {k: v for k, v in ENV.items() if k != "UPSTREAM_KEY"}
    gw = await start_gateway(base_config({"oai": ("openai", openai_upstream[1])}, str(tmp_path / "u.db")), env)
    assert [m.id for m in (await gw.client().models.list()).data] == ["oai-small", "oai-large"]
    with pytest.raises(openai.InternalServerError) as exc:
        await gw.client().chat.completions.create(model="oai-small", messages=MESSAGES)
    assert exc.value.status_code == 503 and exc.value.code == "provider_not_configured"
    assert "UPSTREAM_KEY" not in exc.value.message  # the operator's variable goes to the log only


async def test_embeddings_pass_through(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply(fixture_json("openai_embeddings_response.json")))
    result = await gateway.client().embeddings.create(model="oai-small", input=["sunny day", "rain"])
    validate("CreateEmbeddingResponse", result.model_dump(exclude_unset=True))
    assert result.model == "oai-small"
    assert upstream.last.path == "/embeddings" and upstream.last.json["model"] == "oai-small-2024"
    assert upstream.last.json["encoding_format"] == "base64"  # the SDK's default, passed through
    rows = await gateway.usage_rows()
    assert rows[-1]["endpoint"] == "/v1/embeddings" and rows[-1]["prompt_tokens"] > 0


async def test_embeddings_tier_check(gateway: Gateway, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.client(FREE_KEY).embeddings.create(model="oai-large", input="x")
    assert upstream.requests == []


async def test_healthz_needs_no_key(gateway: Gateway, http: Any) -> None:
    async with http.get(str(gateway.server.make_url("/healthz"))) as resp:
        assert resp.status == 200 and (await resp.json()) == {"status": "ok"}


async def test_unknown_route_is_openai_shaped_404(gateway: Gateway, http: Any) -> None:
    async with http.get(f"{gateway.url}/nope", headers={"Authorization": f"Bearer {PRO_KEY}"}) as resp:
        assert resp.status == 404
        validate_error(await resp.json())
