"""Acceptance (issue 12): the official `openai` Python SDK drives `/v1/responses` through
the gateway on every provider kind: create, stream (the SDK's accumulator), retrieve,
input_items, delete, and a function-tool loop chained with `previous_response_id` or
replayed by the client with `store: false`.  Every Response and every event the SDK
received is validated, raw, against OpenAI's schemas; every turn 2 is checked on
what the fake upstream received (Claude's signed thinking block and Gemini 3's
thoughtSignature byte for byte)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from fakes import json_reply
from openai_schema import validate_response_item_list
from responses_e2e import (
    MODELS,
    QUESTION,
    TOOL_OUTPUT,
    WEATHER,
    Json,
    Stack,
    TappedClient,
    anthropic_thinking,
    check_upstream_turn_two,
    checked_response,
    checked_stream,
    function_call,
    gemini_signature,
    settings,
    start_stack,
    text_reply,
    tool_call_reply,
)

KINDS = list(MODELS)


@pytest.fixture
async def stack(fake_server: Any, start_gateway: Any, tmp_path: Path) -> Stack:
    return await start_stack(fake_server, start_gateway, tmp_path)


async def create(client: TappedClient, stream: bool, **body: Any) -> tuple[Any, Json]:
    """One create, streamed through the SDK's accumulator or not: (SDK object, raw Response)."""
    if not stream:
        response = await client.responses.create(**body)
        return response, checked_response(client.tap.last)
    async with client.responses.stream(**body) as events:
        seen = [event.type async for event in events]
        response = await events.get_final_response()
    raw_events, final = checked_stream(client.tap.last)
    assert seen == [e["type"] for e in raw_events]  # the SDK saw every event the gateway sent
    assert response.id == final["id"] and response.status == "completed"
    return response, final


# -- create, stream, retrieve, input_items, delete ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_create_retrieve_input_items_delete(stack: Stack, kind: str) -> None:
    stack.fakes[kind].script(text_reply(kind, "Sunny all week."))
    client = stack.client()
    created, raw = await create(
        client, False, model=MODELS[kind], input="Hello", instructions="Be brief.", metadata={"case": "e2e"}
    )
    assert created.output_text == "Sunny all week."
    assert raw["status"] == "completed" and raw["model"] == MODELS[kind] and raw["metadata"] == {"case": "e2e"}
    assert raw["usage"]["input_tokens"] == 30 and raw["usage"]["output_tokens"] == 4
    assert raw["usage"]["total_tokens"] == 34
    assert "Be brief." in json.dumps(stack.fakes[kind].last.json)  # the instructions went upstream

    retrieved = await client.responses.retrieve(created.id)
    assert checked_response(client.tap.last) == raw and retrieved.output_text == "Sunny all week."

    items = await client.responses.input_items.list(created.id)
    page = client.tap.last.json()
    validate_response_item_list(page)
    assert [(i.type, i.role) for i in items.data] == [("message", "user")]  # instructions are not input
    assert page["data"][0]["content"] == [{"type": "input_text", "text": "Hello"}]

    await client.responses.delete(created.id)
    assert client.tap.last.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(created.id)


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_accumulates_the_final_response(stack: Stack, kind: str) -> None:
    stack.fakes[kind].script(text_reply(kind, "Sunny all week, mostly.", stream=True))
    client = stack.client()
    final, raw = await create(client, True, model=MODELS[kind], input=[{"role": "user", "content": "Hello"}])
    assert final.output_text == "Sunny all week, mostly."
    assert raw["usage"]["total_tokens"] == 34
    assert [item["type"] for item in raw["output"]] == ["message"]
    retrieved = await client.responses.retrieve(final.id)
    assert checked_response(client.tap.last) == raw  # stored as streamed, before response.completed
    assert retrieved.output_text == final.output_text


class Weather(pydantic.BaseModel):
    city: str
    temp: int


@pytest.mark.parametrize("kind", KINDS)
async def test_parse_structured_output(stack: Stack, kind: str) -> None:
    """`responses.parse(text_format=...)`: the schema reaches each upstream in its own
    form and the answer comes back as the parsed model."""
    answer = {"city": "Florence", "temp": 24}
    if kind == "ant":  # Claude answers a JSON schema through the tool the gateway forces
        block = {"type": "tool_use", "id": "toolu_json", "name": "json_answer", "input": answer}
        usage = {"input_tokens": 30, "output_tokens": 4}
        message = {"id": "msg_json", "type": "message", "role": "assistant", "model": "claude-test",
                   "content": [block], "stop_reason": "tool_use", "usage": usage}  # fmt: skip
        stack.fakes[kind].script(json_reply(message))
    else:
        stack.fakes[kind].script(text_reply(kind, json.dumps(answer)))
    client = stack.client()
    parsed = await client.responses.parse(model=MODELS[kind], input="Weather in Florence?", text_format=Weather)
    raw = checked_response(client.tap.last)
    assert parsed.output_parsed == Weather(**answer)
    assert raw["text"]["format"]["type"] == "json_schema" and raw["text"]["format"]["name"] == "Weather"
    sent = json.dumps(stack.fakes[kind].last.json)
    assert '"city"' in sent and '"temp"' in sent  # the schema went upstream


# -- the function-tool loop -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
async def test_tool_loop_with_previous_response_id(stack: Stack, kind: str, stream: bool) -> None:
    fake = stack.fakes[kind]
    fake.script(tool_call_reply(kind, stream), text_reply(kind, "It is sunny in Florence.", stream))
    client = stack.client()
    body = {"model": MODELS[kind], "tools": [WEATHER], **settings(kind)}
    first, raw = await create(client, stream, input=QUESTION, **body)
    call = function_call(kind, stream, raw)
    output = [{"type": "function_call_output", "call_id": call["call_id"], "output": TOOL_OUTPUT}]
    second, raw2 = await create(client, stream, input=output, previous_response_id=first.id, **body)
    assert second.output_text == "It is sunny in Florence."
    assert raw2["previous_response_id"] == first.id
    check_upstream_turn_two(stack, kind, stream, call)
    assert len(fake.requests) == 2

    # input_items of turn 2: its own input only; the chain is held by previous_response_id
    await client.responses.input_items.list(second.id, order="asc")
    page = client.tap.last.json()
    validate_response_item_list(page)
    assert [(i["type"], i.get("call_id")) for i in page["data"]] == [("function_call_output", call["call_id"])]

    # turn 3 chains on turn 2: the upstream gets all five turns, turn 1's state still intact
    fake.script(text_reply(kind, "Rain tomorrow.", stream))
    third, _ = await create(client, stream, input="And tomorrow?", previous_response_id=second.id, **body)
    assert third.output_text == "Rain tomorrow."
    sent = fake.last.json
    if kind == "oai":
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "assistant", "user"]
        assert sent["messages"][1]["tool_calls"][0]["id"] == call["call_id"]
    elif kind == "ant":
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user", "assistant", "user"]
        assert sent["messages"][1]["content"][0] == anthropic_thinking(stream)
    else:
        assert [c["role"] for c in sent["contents"]] == ["user", "model", "user", "model", "user"]
        assert sent["contents"][1]["parts"][0]["thoughtSignature"] == gemini_signature(stream)
    for text in (QUESTION, TOOL_OUTPUT, "It is sunny in Florence.", "And tomorrow?"):
        assert text in json.dumps(sent)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
async def test_tool_loop_with_store_false(stack: Stack, kind: str, stream: bool) -> None:
    """The client keeps the conversation: turn 1's output items go back in `input`."""
    fake = stack.fakes[kind]
    fake.script(tool_call_reply(kind, stream), text_reply(kind, "It is sunny in Florence.", stream))
    client = stack.client()
    body = {"model": MODELS[kind], "tools": [WEATHER], "store": False, **settings(kind)}
    history: list[Any] = [{"role": "user", "content": QUESTION}]
    first, raw = await create(client, stream, input=history, **body)
    assert raw["store"] is False
    call = function_call(kind, stream, raw)
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        await client.responses.retrieve(first.id)
    history += first.output  # the SDK's objects, as OpenAI's docs replay them
    history.append({"type": "function_call_output", "call_id": call["call_id"], "output": TOOL_OUTPUT})
    second, raw2 = await create(client, stream, input=history, **body)
    assert second.output_text == "It is sunny in Florence."
    check_upstream_turn_two(stack, kind, stream, call)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(second.id)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_claude_thinking_as_a_summary_replayed_with_encrypted_content(stack: Stack, stream: bool) -> None:
    """`reasoning.summary` shows Claude's thinking as summary text; a stateless client
    (store false, include reasoning.encrypted_content) replays it and Anthropic gets
    the signed block back unchanged."""
    fake = stack.fakes["ant"]
    fake.script(tool_call_reply("ant", stream), text_reply("ant", "It is sunny in Florence.", stream))
    client = stack.client()
    body = {
        "model": "ant-large",
        "tools": [WEATHER],
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "high", "summary": "auto"},
    }
    history: list[Any] = [{"role": "user", "content": QUESTION}]
    first, raw = await create(client, stream, input=history, **body)
    thinking = anthropic_thinking(stream)
    summaries = [s["text"] for item in raw["output"] if item["type"] == "reasoning" for s in item["summary"]]
    assert summaries == [thinking["thinking"]]
    assert fake.last.json["thinking"]["type"] == "enabled"
    call = next(item for item in raw["output"] if item["type"] == "function_call")
    history += raw["output"]  # the raw items this time, as a client without the SDK's models keeps them
    history.append({"type": "function_call_output", "call_id": call["call_id"], "output": TOOL_OUTPUT})
    second, _ = await create(client, stream, input=history, **body)
    assert second.output_text == "It is sunny in Florence."
    assert fake.last.json["messages"][1]["content"][0] == thinking
