"""Acceptance (issue 13): a model switched in the middle of a tool loop, through chat (the
`openai` SDK on /v1/chat/completions) and through Messages (the `anthropic` SDK).

Turn 1 runs on model A, which calls `weather`; turn 2 sends the call and its result
to model B.  The ids B's upstream gets must be ones it accepts, whoever minted them:
OpenAI at most 40 characters (a Gemini id carries its thought signature and runs to
hundreds), Anthropic `^[a-zA-Z0-9_-]+$` (Kimi's ids look like `functions.weather:0`),
and Gemini 3, which refuses a function call without a thought signature, gets one of
Google's documented placeholders for a call it did not make.  The fakes refuse what
the real APIs refuse (messages_e2e), so a bad id fails the turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import Reply, sse_reply
from messages_e2e import (
    ANTHROPIC_ID,
    GEMINI_SENTINELS,
    QUESTION,
    WEATHER,
    Json,
    Stack,
    gemini_signature,
    start_stack,
    text_reply,
    tool_call_reply,
)

MODEL = {"gem": "gem-3", "oai": "oai-small", "kimi": "oai-small", "ant": "ant-small"}
SWITCHES = {
    "gemini3-to-openai": ("gem", "oai"),
    "openai-to-gemini3": ("oai", "gem"),
    "claude-to-gemini3": ("ant", "gem"),
    "kimi-to-claude": ("kimi", "ant"),
}
CHAT_WEATHER = {
    "type": "function",
    "function": {"name": WEATHER["name"], "description": WEATHER["description"], "parameters": WEATHER["input_schema"]},
}
TOOL_OUTPUT = "sunny, 24C"
KIMI_ID = "functions.weather:0"  # Kimi K2's own tool-call id format (OpenAI-compatible server)


@pytest.fixture
async def stack(aiohttp_server: Any, start_gateway: Any, tmp_path: Path) -> Any:
    stack = await start_stack(aiohttp_server, start_gateway, tmp_path)
    yield stack
    await stack.close()


def first_turn(kind: str) -> Reply:
    """A recorded streamed answer calling `weather` (Kimi: OpenAI's recording with Kimi's id)."""
    if kind != "kimi":
        return tool_call_reply(kind, True)
    recorded = tool_call_reply("oai", True).body or b""
    return sse_reply(recorded.replace(b'"call_4XzlGBLtUe9dy3GVNV4jhq7h"', f'"{KIMI_ID}"'.encode()))


def fake_of(stack: Stack, kind: str) -> Any:
    return stack.fake("oai" if kind == "kimi" else kind)


def check_upstream_got_the_call(stack: Stack, b: str) -> None:
    """What B's upstream received on turn 2 (the fake has already judged it acceptable)."""
    received = fake_of(stack, b).last.json
    if b == "oai":
        call_id = received["messages"][1]["tool_calls"][0]["id"]
        assert len(call_id) <= 40 and received["messages"][2]["tool_call_id"] == call_id
    elif b == "ant":
        call_id = received["messages"][1]["content"][-1]["id"]
        assert ANTHROPIC_ID.match(call_id) and received["messages"][2]["content"][0]["tool_use_id"] == call_id
    else:
        parts = received["contents"][1]["parts"]
        call = next(p for p in parts if "functionCall" in p)
        assert call["functionCall"]["name"] == "weather"
        assert call.get("thoughtSignature") in GEMINI_SENTINELS  # a placeholder: no real one exists
        assert received["contents"][2]["parts"][0]["functionResponse"]["name"] == "weather"


@pytest.mark.parametrize(("a", "b"), list(SWITCHES.values()), ids=list(SWITCHES))
async def test_switch_through_chat(stack: Stack, a: str, b: str) -> None:
    fake_of(stack, a).script(first_turn(a))
    fake_of(stack, b).script(text_reply(b, False))
    client = stack.gw.client()
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    stream = await client.chat.completions.create(model=MODEL[a], messages=messages, tools=[CHAT_WEATHER], stream=True)
    calls: dict[int, Json] = {}
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.function.name or "" if delta.function else ""
            call["arguments"] += delta.function.arguments or "" if delta.function else ""
    call = calls[0]
    assert call["name"] == "weather"
    if a == "kimi":
        assert call["id"] == KIMI_ID  # an OpenAI-compatible server's id reaches a chat client as it is
    function = {"name": "weather", "arguments": call["arguments"]}
    messages.append({"role": "assistant", "tool_calls": [{"id": call["id"], "type": "function", "function": function}]})
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": TOOL_OUTPUT})

    answer = await client.chat.completions.create(model=MODEL[b], messages=messages, tools=[CHAT_WEATHER])
    assert answer.choices[0].message.content
    check_upstream_got_the_call(stack, b)
    if a == "gem":  # back to Gemini 3 with the same history: its own signature is still there
        stack.gem.script(text_reply("gem", False))
        await client.chat.completions.create(model=MODEL[a], messages=messages, tools=[CHAT_WEATHER])
        parts = stack.gem.last.json["contents"][1]["parts"]
        assert next(p for p in parts if "functionCall" in p)["thoughtSignature"] == gemini_signature(True)


@pytest.mark.parametrize(("a", "b"), list(SWITCHES.values()), ids=list(SWITCHES))
async def test_switch_through_messages(stack: Stack, a: str, b: str) -> None:
    fake_of(stack, a).script(first_turn(a))
    fake_of(stack, b).script(text_reply(b, False))
    client = stack.anthropic()
    # Claude turns think (as Claude Code asks); a thinking block of Claude's means nothing elsewhere
    thinking: Json = {"thinking": {"type": "enabled", "budget_tokens": 2048}} if a == "ant" else {}
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    body: Json = {"max_tokens": 4096, "tools": [WEATHER]}
    async with client.messages.stream(model=MODEL[a], messages=messages, **body, **thinking) as events:
        first = await events.get_final_message()
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "weather" and ANTHROPIC_ID.match(call.id)  # a Messages client's ids fit Anthropic's rule
    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": TOOL_OUTPUT}]}
    )

    answer = await client.messages.create(model=MODEL[b], messages=messages, **body)
    assert answer.content[-1].type == "text" and answer.content[-1].text
    check_upstream_got_the_call(stack, b)
    if a == "gem":
        stack.gem.script(text_reply("gem", False))
        await client.messages.create(model=MODEL[a], messages=messages, **body)
        parts = stack.gem.last.json["contents"][1]["parts"]
        assert next(p for p in parts if "functionCall" in p)["thoughtSignature"] == gemini_signature(True)
