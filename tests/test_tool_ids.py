"""Tool-call ids across providers (issue 13): a client switches model between a tool
call and its answer, through the official SDK, against validating fakes.

Each test lets one provider make the call, then sends the conversation, as the
SDK returned it, to another provider, and checks what that fake received: ids it
accepts, each `tool` answer paired with its call, and an answer.  The fakes refuse
what the real APIs refuse, including the rules this issue is about (the hooks
below add them where the shared fakes do not check them yet)."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fake_anthropic
import fake_gemini
import openai
import orjson
import pytest
from conftest import PRO_KEY, UPSTREAM_KEY, Gateway, base_config
from fake_gemini import GeminiCheck
from fakes import FakeUpstream, Reply, fixture_bytes, fixture_json, json_reply, sse_reply
from openai_schema import validate_chunk, validate_completion

from gateway.providers import tool_ids

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
QUESTION = {"role": "user", "content": "Weather in Florence?"}
PLACEHOLDER = "skip_thought_signature_validator"  # Google's value for calls Gemini did not issue
GEMINI3_SIGNATURE = orjson.loads(fixture_bytes("gemini_stream_function_call_gemini3.jsonl").splitlines()[0])[
    "candidates"
][0]["content"]["parts"][0]["thoughtSignature"]


# -- what the real APIs refuse, where the shared fakes do not check it -------------------


def openai_error(message: str, param: str, code: str) -> Reply:
    return json_reply(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}, 400
    )


def openai_check(path: str, headers: dict[str, str], body: Any) -> Reply | None:
    """OpenAI's rules on tool-call ids: at most 40 characters, and every `tool` message
    answers a call of the assistant message before it."""
    called: set[str] = set()
    for i, message in enumerate(body["messages"]):
        for j, call in enumerate(message.get("tool_calls") or []):
            if len(call["id"]) > 40:
                return too_long(f"messages[{i}].tool_calls[{j}].id", call["id"])
            called.add(call["id"])
        if message["role"] == "tool":
            if len(message["tool_call_id"]) > 40:
                return too_long(f"messages[{i}].tool_call_id", message["tool_call_id"])
            if message["tool_call_id"] not in called:
                return openai_error(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    f"messages.[{i}].role",
                    "invalid_parameter",
                )
    return None


def too_long(param: str, value: str) -> Reply:
    return openai_error(
        f"Invalid '{param}': string too long. Expected a string with maximum length 40, "
        f"but got a string with length {len(value)} instead.",
        param,
        "string_above_max_length",
    )


ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def anthropic_check(path: str, headers: dict[str, str], body: Any) -> Reply | None:
    """fake_anthropic's rules, plus the pattern Anthropic enforces on tool ids."""
    for i, message in enumerate(body.get("messages") or []):
        for j, block in enumerate(message["content"] if isinstance(message.get("content"), list) else []):
            field = {"tool_use": "id", "tool_result": "tool_use_id"}.get(block.get("type"))
            if field and not ANTHROPIC_ID.match(str(block.get(field))):
                error = fake_anthropic.error_body(
                    "invalid_request_error",
                    f"messages.{i}.content.{j}.{block['type']}.{field}: String should match pattern '^[a-zA-Z0-9_-]+$'",
                )
                return json_reply(error, 400)
    return fake_anthropic.check(path, headers, body)


PROTO_BYTES = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")


def proto_bytes(value: Any, where: str) -> None:
    """Google reads `bytes` fields as proto3 JSON does: standard or URL-safe base64,
    padded or not.  fake_gemini takes padded standard base64 only, which would refuse
    Google's own placeholder signature."""
    if not (isinstance(value, str) and PROTO_BYTES.fullmatch(value) and len(value.rstrip("=")) % 4 != 1):
        raise fake_gemini.invalid(f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed for \"{value}\"")


# -- set-up --------------------------------------------------------------------------------


@dataclass
class Providers:
    gw: Gateway
    oai: FakeUpstream
    claude: FakeUpstream
    gem: FakeUpstream


@pytest.fixture
async def providers(fake_server: Any, start_gateway: Any, tmp_path: Path, monkeypatch: Any) -> Providers:
    """One gateway before three validating fakes: oai-small (OpenAI), claude-small
    (Anthropic), gem-small (Gemini 2.5) and gem-3 (gemini-3-pro-preview)."""
    monkeypatch.setattr(fake_gemini, "_check_base64", proto_bytes)
    oai, oai_url = await fake_server(openai_check)
    claude, claude_url = await fake_server(anthropic_check)
    check = GeminiCheck(key=UPSTREAM_KEY)
    gem, gem_url = await fake_server(check)
    check.fake = gem
    upstreams = {"oai": ("openai", oai_url), "claude": ("anthropic", claude_url), "gem": ("gemini", gem_url)}
    doc = base_config(upstreams, str(tmp_path / "usage.db"))
    doc["models"].append({"id": "gem-3", "provider": "gem", "upstream": "gemini-3-pro-preview"})
    doc["tiers"]["pro"]["models"].append("gem-3")
    doc["routing"] = {**doc["routing"], "attempts": 1}  # a refusal reaches the test as it is
    return Providers(await start_gateway(doc), oai, claude, gem)


def short(call_id: str) -> str:
    """The documented short form, computed here independently of the gateway."""
    return "call_" + base64.urlsafe_b64encode(hashlib.sha256(call_id.encode()).digest()).decode()[:32]


def openai_tool_call(*call_ids: str) -> Reply:
    completion = fixture_json("openai_chat_completion_tool_calls.json")
    [call] = completion["choices"][0]["message"]["tool_calls"]
    completion["choices"][0]["message"]["tool_calls"] = [{**copy.deepcopy(call), "id": i} for i in call_ids]
    return json_reply(completion)


def gemini_tool_call(signature: str) -> Reply:
    part = {"functionCall": {"name": "weather", "args": {"location": "Florence"}}, "thoughtSignature": signature}
    candidate = {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
    return json_reply({"candidates": [candidate], "usageMetadata": usage, "responseId": "r1"})


TEXT = {
    "oai": json_reply(fixture_json("openai_chat_completion_text.json")),
    "claude": json_reply(fixture_json("anthropic_message_text.json")),
    "gem": json_reply(fixture_json("gemini_generate_content_text.json")),
}


async def call_tool(p: Providers, model: str, fake: FakeUpstream, reply: Reply, messages: list[Any]) -> list[str]:
    """One turn that ends in tool calls; appends the assistant message (as the SDK gave
    it) and one answer per call to `messages`; returns the call ids the client saw."""
    fake.script(reply)
    answer = await p.gw.client().chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls"
    messages.append(message.model_dump(exclude_none=True))
    ids = [call.id for call in message.tool_calls or []]
    messages += [{"role": "tool", "tool_call_id": i, "content": f"sunny ({n})"} for n, i in enumerate(ids)]
    return ids


async def answer(p: Providers, model: str, fake: FakeUpstream, provider: str, messages: list[Any]) -> Any:
    """The final turn: the upstream must accept the conversation and answer in text."""
    fake.script(TEXT[provider])
    completion = await p.gw.client().chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    validate_completion(completion.model_dump(exclude_unset=True))
    assert completion.choices[0].message.content
    return fake.last.json


# -- the pairs -----------------------------------------------------------------------------


async def test_gemini_ids_to_openai_fit_its_40_characters(providers: Providers) -> None:
    """OpenAI call, then Gemini's signed call, then OpenAI again: the OpenAI id goes back
    untouched, the Gemini one (hundreds of characters) in its short form, the same in the
    call and in its answer."""
    p, messages = providers, [QUESTION]
    [openai_id] = await call_tool(p, "oai-small", p.oai, openai_tool_call("call_IUonKM9GCNis5eMRHuusMqoy"), messages)
    [gemini_id] = await call_tool(p, "gem-small", p.gem, gemini_tool_call(GEMINI3_SIGNATURE), messages)
    assert len(gemini_id) > 400 and "__ts_" in gemini_id
    sent = await answer(p, "oai-small", p.oai, "oai", messages)
    got = sent["messages"]
    assert got[1]["tool_calls"][0]["id"] == got[2]["tool_call_id"] == openai_id
    assert got[3]["tool_calls"][0]["id"] == got[4]["tool_call_id"] == short(gemini_id)
    assert len(short(gemini_id)) <= 40
    # nothing else changed: the rest of the body is the client's
    expected = copy.deepcopy(messages)
    expected[3]["tool_calls"][0]["id"] = expected[4]["tool_call_id"] = short(gemini_id)
    assert got == expected
    # the next turn maps the same way: no store, the same id every time
    assert (await answer(p, "oai-small", p.oai, "oai", messages))["messages"] == got


async def test_gemini_ids_to_anthropic_leave_the_signature_behind(providers: Providers) -> None:
    """Gemini 3's signed id reaches Anthropic short (no Gemini state), and back at
    Gemini the client's original id still carries the signature."""
    p, messages = providers, [QUESTION]
    [gemini_id] = await call_tool(p, "gem-3", p.gem, gemini_tool_call(GEMINI3_SIGNATURE), messages)
    sent = await answer(p, "claude-small", p.claude, "claude", messages)
    tool_use = next(b for b in sent["messages"][1]["content"] if b["type"] == "tool_use")
    tool_result = sent["messages"][2]["content"][0]
    assert tool_use["id"] == tool_result["tool_use_id"] == short(gemini_id)
    assert GEMINI3_SIGNATURE.rstrip("=") not in orjson.dumps(sent).decode().replace("-", "+").replace("_", "/")
    sent = await answer(p, "gem-3", p.gem, "gem", messages)
    assert sent["contents"][1]["parts"][0]["thoughtSignature"] == GEMINI3_SIGNATURE


async def test_openai_ids_to_gemini3_get_the_placeholder_signature(providers: Providers) -> None:
    """Gemini 3 refuses an unsigned call; the first call of the turn gets Google's
    placeholder, the parallel ones nothing (as Gemini signs its own)."""
    p, messages = providers, [QUESTION]
    await call_tool(p, "oai-small", p.oai, openai_tool_call("call_IUonKM9GCNis5eMRHuusMqoy", "call_2nd"), messages)
    sent = await answer(p, "gem-3", p.gem, "gem", messages)
    calls = sent["contents"][1]["parts"]
    assert [part.get("thoughtSignature") for part in calls] == [PLACEHOLDER, None]
    assert [part["functionCall"]["name"] for part in calls] == ["weather", "weather"]
    assert [part["functionResponse"]["name"] for part in sent["contents"][2]["parts"]] == ["weather", "weather"]


async def test_anthropic_ids_to_gemini3_streamed(providers: Providers, http: Any) -> None:
    p, messages = providers, [QUESTION]
    [claude_id] = await call_tool(
        p, "claude-small", p.claude, json_reply(fixture_json("anthropic_message_tool_use.json")), messages
    )
    assert claude_id.startswith("toolu_")
    p.gem.script(sse_reply(fixture_bytes("gemini_stream_text.sse")))
    stream = await p.gw.client().chat.completions.create(model="gem-3", messages=messages, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Olá!"
    model_turn = p.gem.last.json["contents"][1]
    assert model_turn["parts"][0] == {"text": "I'll check the weather in Florence, Italy for you."}
    assert model_turn["parts"][1]["thoughtSignature"] == PLACEHOLDER


async def test_ids_anthropic_refuses_go_up_in_short_form(providers: Providers) -> None:
    """Kimi's `functions.weather:0` (an OpenAI-compatible server's own format) breaks
    Anthropic's pattern; it goes up short, and back to OpenAI-kind servers untouched."""
    p, messages = providers, [QUESTION]
    kimi = "functions.weather:0"
    await call_tool(p, "oai-small", p.oai, openai_tool_call(kimi), messages)
    sent = await answer(p, "claude-small", p.claude, "claude", messages)
    tool_use = next(b for b in sent["messages"][1]["content"] if b["type"] == "tool_use")
    assert tool_use["id"] == sent["messages"][2]["content"][0]["tool_use_id"] == short(kimi)
    sent = await answer(p, "oai-small", p.oai, "oai", messages)
    assert sent["messages"][1]["tool_calls"][0]["id"] == sent["messages"][2]["tool_call_id"] == kimi
    # a call left unanswered: the 400 names the id the client sent, not its short form
    with pytest.raises(openai.BadRequestError) as exc:
        await p.gw.client().chat.completions.create(model="claude-small", messages=[*messages[:2], QUESTION])
    assert kimi in exc.value.message and short(kimi) not in exc.value.message


# -- the pieces on their own -----------------------------------------------------------------


def test_short_forms_fit_every_upstream() -> None:
    for original in ("x" * 65, "functions.Bash:0", "call_" + "A" * 24 + "__ts_" + GEMINI3_SIGNATURE):
        mapped = short(original)
        assert re.fullmatch(r"call_[A-Za-z0-9_-]{32}", mapped)
        assert tool_ids.for_anthropic(original) == mapped
    assert tool_ids.for_openai("x" * 41) == short("x" * 41)
    for kept in ("call_IUonKM9GCNis5eMRHuusMqoy", "toolu_01XLb9pzgfLa2EMyqWot6Ezt", "x" * 40):
        assert tool_ids.for_openai(kept) == tool_ids.for_anthropic(kept) == kept
    assert tool_ids.for_anthropic("x" * 64) == "x" * 64
    assert tool_ids.for_openai("functions.Bash:0") == "functions.Bash:0"  # OpenAI-kind: length only


def test_the_client_body_is_never_changed() -> None:
    """The hub body goes to every attempt: a fallback to Gemini needs the long ids back."""
    long_id = "call_" + "A" * 24 + "__ts_" + "B" * 100
    messages = [
        QUESTION,
        {"role": "assistant", "tool_calls": [{"id": long_id, "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": long_id, "content": "ok"},
    ]
    before = copy.deepcopy(messages)
    fitted = tool_ids.openai_messages(messages)
    assert messages == before and fitted is not None
    assert fitted[1]["tool_calls"][0]["id"] == fitted[2]["tool_call_id"] == short(long_id)
    assert fitted[0] is messages[0]  # untouched messages are shared, not copied
    assert tool_ids.openai_messages(before[:1]) is None


# -- translated streams open as OpenAI's do ------------------------------------------------


def first_delta(raw: bytes) -> Any:
    return orjson.loads(raw.split(b"\n\n")[0].removeprefix(b"data: "))["choices"][0]["delta"]


def tool_only_stream() -> bytes:
    """The recorded Anthropic tool stream without the text block before the call."""
    events = fixture_bytes("anthropic_stream_tool_use.sse").split(b"\n\n")
    text_block = [e for e in events if b'"index":0' in e and b"content_block" in e]
    return b"\n\n".join(e for e in events if e not in text_block).replace(b'"index":1', b'"index":0')


async def opening(p: Providers, http: Any, model: str, recording: bytes) -> Any:
    """The delta of the first chunk a client gets for this recorded upstream stream."""
    (p.claude if model.startswith("claude") else p.gem).script(sse_reply(recording))
    request = {"model": model, "messages": [QUESTION], "stream": True}
    headers = {"Authorization": f"Bearer {PRO_KEY}"}
    async with http.post(f"{p.gw.url}/chat/completions", json=request, headers=headers) as resp:
        raw = await resp.read()
    assert resp.status == 200, raw
    events = [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    for event in events:
        validate_chunk(event)
    return events[0]["choices"][0]["delta"]


@pytest.mark.parametrize(
    ("model", "tool_call", "text"),
    [
        ("claude-small", tool_only_stream(), fixture_bytes("anthropic_stream_text.sse")),
        ("gem-small", fixture_bytes("gemini_stream_function_call.sse"), fixture_bytes("gemini_stream_text.sse")),
    ],
)
async def test_streams_open_as_openai_does(
    providers: Providers, http: Any, model: str, tool_call: bytes, text: bytes
) -> None:
    """OpenAI opens a tool-call answer with `"content": null` and a text answer with
    `""` (tests/fixtures/openai_chunks_tool_call.sse, openai_chunks_text_usage.sse)."""
    assert first_delta(fixture_bytes("openai_chunks_tool_call.sse"))["content"] is None
    assert first_delta(fixture_bytes("openai_chunks_text_usage.sse"))["content"] == ""
    assert await opening(providers, http, model, tool_call) == {"role": "assistant", "content": None}
    assert await opening(providers, http, model, text) == {"role": "assistant", "content": ""}


def test_the_gateways_own_reasoning_signature_never_reaches_an_openai_kind_server() -> None:
    from gateway.providers.tool_ids import openai_messages

    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok", "reasoning_content": "thought", "reasoning_signature": "EqQBCkgIAR"},
    ]
    fitted = openai_messages(messages)
    assert fitted is not None and fitted[1] == {"role": "assistant", "content": "ok", "reasoning_content": "thought"}
    assert messages[1]["reasoning_signature"] == "EqQBCkgIAR"  # the client's body is untouched
    assert openai_messages(messages[:1]) is None  # nothing to change: the body goes up as it came
