"""Acceptance (issue 12): who may read, delete and continue a stored response, and the
rules `/v1/responses` shares with chat: tiers (403/404), bad input (400 naming the
param), one usage row per create, tier limits (429 with x-ratelimit-* headers).
Errors are read raw off the wire and validated against OpenAI's error schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import FREE_KEY, PRO_KEY
from openai_schema import validate_error
from responses_e2e import Stack, TappedClient, checked_response, start_stack, text_reply

HELLO = "Hello"
UNKNOWN_ID = "resp_" + "0" * 50


@pytest.fixture
async def stack(fake_server: Any, start_gateway: Any, tmp_path: Path) -> Stack:
    return await start_stack(fake_server, start_gateway, tmp_path)


def error_of(client: TappedClient, status: int) -> dict[str, Any]:
    """The raw error body of the client's last exchange, validated."""
    exchange = client.tap.last
    assert exchange.status == status, (exchange.status, bytes(exchange.body))
    body = exchange.json()
    validate_error(body)
    return body["error"]


async def stored_response(stack: Stack) -> str:
    """A response stored under alice's key (PRO_KEY): its id."""
    stack.fakes["oai"].script(text_reply("oai", "Hi there."))
    client = stack.client(PRO_KEY)
    created = await client.responses.create(model="oai-small", input=HELLO)
    checked_response(client.tap.last)
    return created.id


async def refused_everything(stack: Stack, client: TappedClient, response_id: str) -> list[dict[str, Any]]:
    """Read, list, delete, cancel and continue `response_id`, every one refused; the errors."""
    errors = []
    for call in (
        lambda: client.responses.retrieve(response_id),
        lambda: client.responses.input_items.list(response_id),
        lambda: client.responses.delete(response_id),
        lambda: client.responses.cancel(response_id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call()
        errors.append(error_of(client, 404))
    calls = len(stack.fakes["oai"].requests)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as exc:
            await client.responses.create(
                model="oai-small", input=HELLO, previous_response_id=response_id, stream=stream
            )
        assert exc.value.code == "previous_response_not_found" and exc.value.param == "previous_response_id"
        errors.append(error_of(client, 400))
    assert len(stack.fakes["oai"].requests) == calls  # refused before any upstream call
    return errors


async def test_another_key_sees_nothing_of_a_stored_response(stack: Stack) -> None:
    response_id = await stored_response(stack)
    bob = stack.client(FREE_KEY)  # another key name, another tier
    errors = await refused_everything(stack, bob, response_id)
    assert errors[0]["code"] == "response_not_found"
    # an unknown id answers exactly alike: nobody learns that the id exists elsewhere
    unknown = await refused_everything(stack, bob, UNKNOWN_ID)
    assert [{**e, "message": e["message"].replace(UNKNOWN_ID, response_id)} for e in unknown] == errors
    alice = stack.client(PRO_KEY)
    stored = await alice.responses.retrieve(response_id)
    assert stored.output_text == "Hi there."  # bob's delete did nothing
    checked_response(alice.tap.last)

    # nor can bob reach it through an item_reference or count tokens on it
    reference = {"type": "item_reference", "id": stored.output[0].id}
    with pytest.raises(openai.BadRequestError) as exc:
        await bob.responses.create(model="oai-small", input=[reference])
    assert exc.value.param == "input[0].id" and error_of(bob, 400)["code"] == "item_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        await bob.responses.input_tokens.count(model="oai-small", input=HELLO, previous_response_id=response_id)
    assert exc.value.code == "previous_response_not_found" and error_of(bob, 400)["param"] == "previous_response_id"
    # alice can do both
    count = await alice.responses.input_tokens.count(
        model="oai-small", input=[reference], previous_response_id=response_id
    )
    assert alice.tap.last.json()["object"] == "response.input_tokens" and count.input_tokens > 0
    stack.fakes["oai"].script(text_reply("oai", "Hello again."))
    await alice.responses.create(model="oai-small", input=[reference, {"role": "user", "content": "Again?"}])
    checked_response(alice.tap.last)
    sent = stack.fakes["oai"].last.json["messages"]
    assert [m["role"] for m in sent] == ["assistant", "user"] and "Hi there." in str(sent[0]["content"])


async def test_the_owner_cannot_cancel_a_finished_response(stack: Stack) -> None:
    response_id = await stored_response(stack)
    alice = stack.client(PRO_KEY)
    with pytest.raises(openai.BadRequestError):
        await alice.responses.cancel(response_id)  # only background responses can be cancelled
    error_of(alice, 400)


async def test_store_false_keeps_nothing(stack: Stack) -> None:
    stack.fakes["oai"].script(text_reply("oai", "Hi there."), text_reply("oai", "Hi there.", stream=True))
    client = stack.client(PRO_KEY)
    created = await client.responses.create(model="oai-small", input=HELLO, store=False)
    assert checked_response(client.tap.last)["store"] is False
    async with client.responses.stream(model="oai-small", input=HELLO, store=False) as events:
        streamed = await events.get_final_response()
    for response_id in (created.id, streamed.id):
        await refused_everything(stack, client, response_id)


async def test_tiers_and_unknown_models_as_for_chat(stack: Stack) -> None:
    bob = stack.client(FREE_KEY)
    messages: Any = [{"role": "user", "content": HELLO}]
    for model, error, status in (("oai-large", openai.PermissionDeniedError, 403), ("nope", openai.NotFoundError, 404)):
        with pytest.raises(error):
            await bob.chat.completions.create(model=model, messages=messages)
        chat = error_of(bob, status)
        for stream in (False, True):
            with pytest.raises(error):
                await bob.responses.create(model=model, input=HELLO, stream=stream)
            assert error_of(bob, status) == chat
        with pytest.raises(error):
            await bob.responses.input_tokens.count(model=model, input=HELLO)
        assert error_of(bob, status) == chat
    assert chat["code"] == "model_not_found"
    assert not any(fake.requests for fake in stack.fakes.values())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 42}, "input"),
        ({"input": [{"role": "user", "content": 42}]}, "input[0].content"),
        ({"input": [{"type": "function_call_output", "call_id": 7, "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": None}]}]}, "input[0].content[0].text"),
        ({"instructions": ["be brief"]}, "instructions"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "function", "name": 3}]}, "tools[0].name"),
        ({"temperature": "warm"}, "temperature"),
        ({"max_output_tokens": "100"}, "max_output_tokens"),
        ({"reasoning": {"effort": 3}}, "reasoning.effort"),
        ({"store": "yes"}, "store"),
        ({"stream": "yes"}, "stream"),
        ({"previous_response_id": 12}, "previous_response_id"),
        ({"text": {"format": {"type": 1}}}, "text.format.type"),
        ({"model": 5}, "model"),
        ({"input": None}, "input"),
    ],
)
async def test_bad_input_is_a_400_naming_the_param(stack: Stack, body: dict[str, Any], param: str) -> None:
    client = stack.client(PRO_KEY)
    with pytest.raises(openai.BadRequestError) as exc:
        await client.responses.create(**{"model": "oai-small", "input": HELLO, **body})
    error = error_of(client, 400)
    assert error["param"] == param and exc.value.param == param, error
    assert error["type"] == "invalid_request_error"
    assert not stack.fakes["oai"].requests


async def test_one_usage_row_per_create(stack: Stack) -> None:
    client = stack.client(PRO_KEY)
    for kind, model in (("oai", "oai-small"), ("ant", "ant-large"), ("gem", "gem-3")):
        stack.fakes[kind].script(text_reply(kind, "Hi there."), text_reply(kind, "Hi there.", stream=True))
        created = await client.responses.create(model=model, input=HELLO)
        async with client.responses.stream(model=model, input=HELLO) as events:
            await events.get_final_response()
        # reads, listings, counts and deletes are not model calls: no rows
        await client.responses.retrieve(created.id)
        await client.responses.input_items.list(created.id)
        await client.responses.input_tokens.count(model=model, input=HELLO)
        await client.responses.delete(created.id)
    rows = await stack.gw.usage_rows()
    assert [(r["model"], r["stream"]) for r in rows] == [
        (model, stream) for model in ("oai-small", "ant-large", "gem-3") for stream in (0, 1)
    ]
    for row in rows:
        assert row["endpoint"] == "/v1/responses" and row["status"] == 200 and row["key_name"] == "alice"
        assert row["tier"] == "pro" and row["error_code"] is None
        assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (30, 4, 34)
        assert not row["tokens_estimated"]
    assert [r["upstream_model"] for r in rows[::2]] == ["oai-small-2024", "ant-large", "gemini-3-pro-preview"]


async def test_tier_limits_apply(fake_server: Any, start_gateway: Any, tmp_path: Path) -> None:
    keys = [{"name": "alice", "key": "${PRO_KEY}", "tier": "pro", "limits": {"rpm": 1}}]
    stack = await start_stack(fake_server, start_gateway, tmp_path, keys=keys)
    stack.fakes["oai"].script(text_reply("oai", "Hi there."))
    client = stack.client(PRO_KEY)
    first = await client.responses.with_raw_response.create(model="oai-small", input=HELLO)
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as exc:
            await client.responses.create(model="oai-small", input=HELLO, stream=stream)
        assert error_of(client, 429)["code"] == "rate_limit_exceeded"
        headers = exc.value.response.headers
        assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] and int(headers["retry-after"]) >= 1
    assert len(stack.fakes["oai"].requests) == 1
    rows = await stack.gw.usage_rows()
    assert [(r["endpoint"], r["status"]) for r in rows] == [("/v1/responses", s) for s in (200, 429, 429)]
