"""The Messages dialect's request translation, rendering and state envelope (pure, no server).

Recorded Anthropic request bodies (tests/fixtures/anthropic_request_*.json) must give
the hub bodies written out here; hub completions that the Anthropic adapter made from
recorded Anthropic messages (tests/golden/anthropic/) must render back to the recorded
shape; state the gateway hands out must come back byte for byte through to_hub.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import Model
from gateway.dialects import carry
from gateway.dialects.messages.render import MessageContext, render_error, render_message, render_model, render_models
from gateway.dialects.messages.request import count_tokens_body, to_hub
from gateway.dialects.messages.state import EMPTY, client_tool_id, seal, unseal
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Get weather information for a location",
        "parameters": {
            "properties": {"location": {"description": "the city", "type": "string"}},
            "required": ["location"],
            "type": "object",
        },
    },
}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_bytes())


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_bytes())


# -- request -> hub -----------------------------------------------------------------------


EXPECTED_HUB = {
    "anthropic_request_thinking_tools.json": {
        "model": "claude-sonnet-4-20250514",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": "What's the weather in Florence, Italy?"},
        ],
        "max_completion_tokens": 4096,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "reasoning_effort": "medium",  # budget 4000
    },
    "anthropic_request_tool_result_roundtrip.json": {
        "model": "claude-sonnet-4-20250514",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": "What's the weather in Florence,Italy?"},
            {
                "role": "assistant",
                "content": "I'll check the weather in Florence, Italy for you.",
                "tool_calls": [
                    {
                        "id": "toolu_01XLb9pzgfLa2EMyqWot6Ezt",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"location":"Florence,Italy"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01XLb9pzgfLa2EMyqWot6Ezt", "content": "40 C"},
        ],
        "max_completion_tokens": 4000,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
    },
    # an Anthropic signature is not ours: the thinking block is dropped, text and tools stay
    "anthropic_request_sdk_thinking_signature_tool_result.json": {
        "model": "claude-sonnet-4-0",
        "messages": [
            {"role": "user", "content": "What is the largest city in the user country?"},
            {
                "role": "assistant",
                "content": "I'll help you find the largest city in your country. "
                "First, let me determine which country you're from.",
                "tool_calls": [
                    {
                        "id": "toolu_01YGzqpRE16Vricda3Aqcejo",
                        "type": "function",
                        "function": {"name": "get_user_country", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01YGzqpRE16Vricda3Aqcejo", "content": "Mexico"},
        ],
        "max_completion_tokens": 4096,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_user_country",
                    "parameters": {"additionalProperties": False, "properties": {}, "type": "object"},
                },
            }
        ],
        "tool_choice": "auto",
        "reasoning_effort": "medium",  # budget 3000
    },
    # cache_control on system, tool_use and tool_result blocks is dropped
    "anthropic_request_thinking_cache_control_tool_roundtrip.json": {
        "model": "claude-sonnet-4-20250514",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": "What's the weather in Florence, Italy?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_017cWttjFBXZWw8LkJbhpqm1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"location":"Florence, Italy"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_017cWttjFBXZWw8LkJbhpqm1", "content": "40 C"},
        ],
        "max_completion_tokens": 4096,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "reasoning_effort": "medium",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED_HUB))
def test_recorded_requests_give_the_expected_hub_body(name: str) -> None:
    body = fixture(name)
    original = copy.deepcopy(body)
    assert to_hub(body) == EXPECTED_HUB[name]
    assert body == original  # the client's body is read, never changed


def test_count_tokens_body_needs_no_max_tokens_and_drops_cache_control() -> None:
    body = fixture("anthropic_request_count_tokens_cache_ttl.json")
    hub = count_tokens_body(body)
    assert hub["model"] == "claude-sonnet-4-5"
    assert hub["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert hub["messages"][1]["role"] == "user"
    assert hub["messages"][1]["content"] == body["messages"][0]["content"][0]["text"]
    assert set(hub) == {"model", "messages"}  # no stream, no max tokens, no cache hints
    with pytest.raises(InvalidRequest) as err:
        to_hub(body)  # the create endpoint does require max_tokens
    assert err.value.param == "max_tokens"


def test_server_tools_are_refused_and_server_tool_history_is_dropped() -> None:
    body = fixture("anthropic_request_server_tool_history.json")
    with pytest.raises(InvalidRequest) as err:
        to_hub(body)
    assert err.value.param == "tools[0]" and "web_search_20250305" in err.value.message
    del body["tools"], body["tool_choice"]
    hub = to_hub(body)
    assistant = hub["messages"][2]
    texts = [b["text"] for b in body["messages"][1]["content"] if b["type"] == "text"]
    assert assistant == {"role": "assistant", "content": "".join(texts)}  # cited blocks joined, search gone
    assert [m["role"] for m in hub["messages"]] == ["system", "user", "assistant", "user"]


def test_claude_code_style_request() -> None:
    long_user = "user_" + "a" * 64 + "_account_x_session_y"
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.1.abc; cch=123;"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be brief."},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
        ],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}, "strict": True, "cache_control": {"type": "x"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        "metadata": {"user_id": long_user},
        "stop_sequences": ["END"],
        "temperature": 1,
        "top_p": 0.9,
        "top_k": 40,
        "context_management": {"edits": []},
        "service_tier": "auto",
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    assert to_hub(body) == {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_completion_tokens": 32000,
        "stop": ["END"],
        "temperature": 1,
        "top_p": 0.9,
        "top_k": 40,
        "tools": [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "reasoning_effort": "high",
        "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}},
        "user": hashlib.sha256(long_user.encode()).hexdigest(),
    }
    body["metadata"] = {"user_id": "short-id"}
    body["tool_choice"] = {"type": "tool", "name": "Bash"}
    hub = to_hub(body)
    assert hub["user"] == "short-id"
    assert hub["tool_choice"] == {"type": "function", "function": {"name": "Bash"}}
    assert "parallel_tool_calls" not in hub
    body["tools"] = []  # a choice without tools means nothing: OpenAI would refuse it
    hub = to_hub(body)
    assert "tools" not in hub and "tool_choice" not in hub


@pytest.mark.parametrize(
    ("thinking", "effort", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 2047}, None, "low"),
        ({"type": "enabled", "budget_tokens": 2048}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 8191}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 8192}, None, "high"),
        ({"type": "adaptive"}, None, "medium"),
        ({"type": "adaptive", "display": "omitted"}, "max", "max"),
        ({"type": "disabled"}, None, "none"),
        ({"type": "disabled"}, "high", "none"),
        (None, "low", "low"),
        (None, None, None),
    ],
)
def test_thinking_becomes_reasoning_effort(thinking: Any, effort: Any, expected: Any) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    if thinking is not None:
        body["thinking"] = thinking
    if effort is not None:
        body["output_config"] = {"effort": effort}
    assert to_hub(body).get("reasoning_effort") == expected


def test_user_content_blocks_and_tool_results() -> None:
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_a", "name": "shot", "input": {}},
                    {"type": "tool_use", "id": "toolu_b", "name": "ls", "input": {"dir": "/"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "both done"},
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": [{"type": "image", "source": png}]},
                    {"type": "tool_result", "tool_use_id": "toolu_b", "content": "no such dir", "is_error": True},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    {"type": "document", "source": pdf, "title": "spec.pdf"},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
                    {"type": "text", "text": ""},
                ],
            },
        ],
    }
    messages = to_hub(body)["messages"]
    assert messages[1]["tool_calls"][1]["function"]["arguments"] == '{"dir":"/"}'
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": ""},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "Error: no such dir"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "(attachments returned by tool call toolu_a)"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "text", "text": "both done"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                {"type": "file", "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
                {"type": "text", "text": "notes"},
            ],
        },
    ]


def base_body() -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    }


def put(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set body[path] where path is like `messages.1.content.0.input`."""
    *parents, last = path.split(".")
    target: Any = body
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return body


BAD_FIELDS = [
    ("model", 5, "model"),
    ("model", "", "model"),
    ("max_tokens", "10", "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("max_tokens", True, "max_tokens"),
    ("messages", {}, "messages"),
    ("messages", [], "messages"),
    ("messages.0", "hi", "messages[0]"),
    ("messages.0.role", "system", "messages[0].role"),
    ("messages.0.content", 5, "messages[0].content"),
    ("messages.0.content.0", 5, "messages[0].content[0]"),
    ("messages.0.content.0.type", 5, "messages[0].content[0].type"),
    ("messages.0.content.0.type", "video", "messages[0].content[0].type"),
    ("messages.0.content.0.text", 5, "messages[0].content[0].text"),
    ("messages.1.content.0.input", "{}", "messages[1].content[0].input"),
    ("messages.1.content.0.input", {"n": 10**30}, "messages[1].content[0].input"),  # json.loads keeps big ints
    ("messages.1.content.0.id", None, "messages[1].content[0].id"),
    ("messages.1.content.0.name", 7, "messages[1].content[0].name"),
    ("messages.1.content.0.type", "tool_result", "messages[1].content[0].type"),
    ("messages.2.content.0.content", 5, "messages[2].content[0].content"),
    ("messages.2.content.0.content", [{"type": "tool_use"}], "messages[2].content[0].content[0].type"),
    ("messages.2.content.0.is_error", "yes", "messages[2].content[0].is_error"),
    ("messages.2.content.0.tool_use_id", ["x"], "messages[2].content[0].tool_use_id"),
    ("messages.0.content.0", {"type": "image"}, "messages[0].content[0].source"),
    ("messages.0.content.0", {"type": "image", "source": {"type": "ftp"}}, "messages[0].content[0].source.type"),
    (
        "messages.0.content.0",
        {"type": "image", "source": {"type": "base64", "data": 1}},
        "messages[0].content[0].source.media_type",
    ),
    (
        "messages.0.content.0",
        {"type": "image", "source": {"type": "file", "file_id": "f"}},
        "messages[0].content[0].source",
    ),
    (
        "messages.0.content.0",
        {"type": "document", "source": {"type": "url", "url": "u"}},
        "messages[0].content[0].source",
    ),
    ("messages.0.content.0", {"type": "thinking", "thinking": "", "signature": ""}, "messages[0].content[0].type"),
    ("messages.1.content.0", {"type": "thinking", "thinking": "x", "signature": 5}, "messages[1].content[0].signature"),
    ("messages.1.content.0", {"type": "thinking", "thinking": 5, "signature": "s"}, "messages[1].content[0].thinking"),
    ("messages.1.content.0", {"type": "redacted_thinking"}, "messages[1].content[0].data"),
    ("system", 5, "system"),
    ("system", [{"type": "text", "text": 5}], "system[0].text"),
    ("system", [{"type": "image"}], "system[0].type"),
    ("stop_sequences", "END", "stop_sequences"),
    ("stop_sequences", [1], "stop_sequences[0]"),
    ("temperature", 1.5, "temperature"),
    ("temperature", "hot", "temperature"),
    ("top_p", [], "top_p"),
    ("top_k", 0, "top_k"),
    ("stream", "yes", "stream"),
    ("tools", {}, "tools"),
    ("tools", [5], "tools[0]"),
    ("tools", [{"name": "f"}], "tools[0].input_schema"),
    ("tools", [{"name": "", "input_schema": {}}], "tools[0].name"),
    ("tools", [{"name": "f", "input_schema": {}, "description": 5}], "tools[0].description"),
    ("tools", [{"name": "f", "input_schema": {}, "strict": "no"}], "tools[0].strict"),
    ("tools", [{"type": "bash_20250124", "name": "bash"}], "tools[0]"),
    ("tool_choice", "auto", "tool_choice"),
    ("tool_choice", {"type": "some"}, "tool_choice.type"),
    ("tool_choice", {"type": "tool"}, "tool_choice.name"),
    ("tool_choice", {"type": "auto", "disable_parallel_tool_use": 1}, "tool_choice.disable_parallel_tool_use"),
    ("thinking", "on", "thinking"),
    ("thinking", {"type": "enabled"}, "thinking.budget_tokens"),
    ("thinking", {"type": "enabled", "budget_tokens": "1024"}, "thinking.budget_tokens"),
    ("thinking", {"type": "on"}, "thinking.type"),
    ("thinking", {"type": "adaptive", "display": 3}, "thinking.display"),
    ("output_config", [], "output_config"),
    ("output_config", {"effort": "huge"}, "output_config.effort"),
    ("output_config", {"format": "json"}, "output_config.format"),
    ("output_config", {"format": {"type": "json_object"}}, "output_config.format.type"),
    ("output_config", {"format": {"type": "json_schema", "schema": "{}"}}, "output_config.format.schema"),
    ("metadata", "u", "metadata"),
    ("metadata", {"user_id": 5}, "metadata.user_id"),
    ("container", "cntr_1", "container"),
    ("mcp_servers", [], "mcp_servers"),
    ("frequency_penalty", 0.5, "frequency_penalty"),
]


@pytest.mark.parametrize(("path", "value", "param"), BAD_FIELDS, ids=[f"{p}={v!r}" for p, v, _ in BAD_FIELDS])
def test_every_bad_field_is_a_400_naming_it(path: str, value: Any, param: str) -> None:
    body = put(base_body(), path, value)
    with pytest.raises(InvalidRequest) as err:
        to_hub(body)
    assert err.value.param == param
    assert err.value.status == 400


def test_the_base_body_of_the_bad_field_table_is_valid() -> None:
    assert to_hub(base_body())["messages"][-1] == {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}


def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["type", "text", "x"]), inner, max_size=3)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    nest,
    max_leaves=8,
)
PATHS = sorted({p for p, _, _ in BAD_FIELDS if p.count(".") <= 4} | {"messages.2.content.0"})


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), value=JSONISH)
def test_any_value_anywhere_is_translated_or_a_400_never_a_crash(path: str, value: Any) -> None:
    try:
        to_hub(put(base_body(), path, value))
    except InvalidRequest as exc:
        assert exc.param


# -- hub -> Message -----------------------------------------------------------------------


def expected_from_recording(name: str) -> dict[str, Any]:
    """The recorded Anthropic message in the shape we render: our id and model, no `caller`,
    the four usage counts."""
    recorded = fixture(name)
    for block in recorded["content"]:
        block.pop("caller", None)
    recorded["usage"] = {k: recorded["usage"][k] for k in ("input_tokens", "cache_creation_input_tokens",
                                                          "cache_read_input_tokens", "output_tokens")}  # fmt: skip
    recorded["id"], recorded["model"] = "msg_test", "my-model"
    return recorded


@pytest.mark.parametrize("name", ["anthropic_message_text.json", "anthropic_message_tool_use.json"])
def test_render_gives_back_the_recorded_message(name: str) -> None:
    """Anthropic -> hub (the adapter's golden output) -> Messages is the recording again."""
    ctx = MessageContext(model="my-model", id="msg_test")
    message = render_message(golden(f"anthropic/{name}"), ctx)
    assert message == expected_from_recording(name)
    assert list(message) == ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"]


def test_render_reasoning_with_signature_round_trips_byte_for_byte() -> None:
    completion = golden("anthropic/anthropic_message_thinking_tool_use.json")
    hub_message = completion["choices"][0]["message"]
    expected = expected_from_recording("anthropic_message_thinking_tool_use.json")
    # without thinking enabled by the client: no thinking block at all
    plain = render_message(completion, MessageContext(model="my-model", id="msg_test"))
    assert plain["content"] == expected["content"][1:]
    # with it: the thinking block as recorded (our envelope as signature), the state after the call
    message = render_message(completion, MessageContext(model="my-model", thinking=True, id="msg_test"))
    thinking, tool_use, state = message["content"]
    assert thinking == {**expected["content"][0], "signature": EMPTY}
    assert tool_use == expected["content"][1]
    assert state["type"] == "thinking" and state["thinking"] == ""
    assert unseal(state["signature"], "x") is not None
    assert {k: v for k, v in message.items() if k != "content"} == {k: v for k, v in expected.items() if k != "content"}
    # the client replays the turn: the hub gets its reasoning and the upstream signature back, exact
    hub = to_hub(
        {
            "model": "m",
            "max_tokens": 100,
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": message["content"]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "40 C"}],
                },
            ],
        }
    )
    replayed = hub["messages"][1]
    assert replayed["reasoning_content"] == hub_message["reasoning_content"]
    assert replayed["reasoning_signature"] == hub_message["reasoning_signature"]
    assert replayed["tool_calls"][0]["id"] == hub_message["tool_calls"][0]["id"]


def completion_of(message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def test_long_tool_ids_are_mapped_and_restored_through_the_envelope() -> None:
    kimi, mcp = "functions.Bash:0", "codex_mcp__fs__read_exec-" + "9" * 40
    calls = [
        {"id": kimi, "type": "function", "function": {"name": "Bash", "arguments": '{"cmd": "ls"}'}},
        {"id": mcp, "type": "function", "function": {"name": "read", "arguments": "{broken"}},
        {"id": "call_ok_1", "type": "function", "function": {"name": "noop", "arguments": ""}},
    ]
    completion = completion_of({"role": "assistant", "content": "Let me look.", "reasoning_content": "hmm",
                                "tool_calls": calls}, "stop")  # fmt: skip
    message = render_message(completion, MessageContext(model="m", thinking=True))
    kinds = [b["type"] for b in message["content"]]
    assert kinds == ["thinking", "text", "tool_use", "tool_use", "tool_use", "thinking"]
    uses = message["content"][2:5]
    assert uses[0]["id"] == client_tool_id(kimi) and uses[0]["id"].startswith("call_") and len(uses[0]["id"]) == 37
    assert uses[1]["id"] == client_tool_id(mcp) and uses[1]["input"] == {}  # broken arguments -> {}
    assert uses[2]["id"] == "call_ok_1" and uses[2]["input"] == {}
    assert message["stop_reason"] == "tool_use"  # even though the upstream said "stop"
    hub = to_hub(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": message["content"]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": u["id"], "content": "r"} for u in uses],
                },
            ],
        }
    )
    assistant = hub["messages"][1]
    assert [c["id"] for c in assistant["tool_calls"]] == [kimi, mcp, "call_ok_1"]
    assert [m["tool_call_id"] for m in hub["messages"][2:]] == [kimi, mcp, "call_ok_1"]
    assert assistant["reasoning_content"] == "hmm" and "reasoning_signature" not in assistant
    # without thinking the mapped ids still pair a call with its result
    plain = render_message(completion, MessageContext(model="m"))
    assert [b["id"] for b in plain["content"] if b["type"] == "tool_use"] == [u["id"] for u in uses]


@pytest.mark.parametrize(
    ("finish", "message", "stop_reason"),
    [
        ("length", {"content": "The answer is"}, "max_tokens"),
        ("stop", {"content": "Done."}, "end_turn"),
        (None, {"content": "Done."}, "end_turn"),
        ("content_filter", {"content": ""}, "refusal"),
        ("stop", {"content": None, "refusal": "I can't help with that."}, "refusal"),
        ("tool_calls", {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "tool_use"),
        ("length", {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}, "max_tokens"),
    ],
)
def test_stop_reasons(finish: Any, message: dict[str, Any], stop_reason: str) -> None:
    rendered = render_message(completion_of({"role": "assistant", **message}, finish), MessageContext(model="m"))
    assert rendered["stop_reason"] == stop_reason and rendered["stop_sequence"] is None


def test_usage_subtracts_cache_reads_and_writes() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
             "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
             "completion_tokens_details": {"reasoning_tokens": 20}}  # fmt: skip
    rendered = render_message(completion_of({"content": "x"}, "stop", usage), MessageContext(model="m"))
    assert rendered["usage"] == {"input_tokens": 300, "cache_creation_input_tokens": 100,
                                 "cache_read_input_tokens": 600, "output_tokens": 50}  # fmt: skip
    unknown = render_message(completion_of({"content": "x"}, "stop"), MessageContext(model="m"))["usage"]
    assert unknown == dict.fromkeys(rendered["usage"], 0)


def test_context_for_request() -> None:
    ctx = MessageContext.for_request({"model": "claude-x", "thinking": {"type": "adaptive"}})
    assert ctx.model == "claude-x" and ctx.thinking and ctx.id.startswith("msg_") and len(ctx.id) == 28
    assert not MessageContext.for_request({"model": "m", "thinking": {"type": "disabled"}}).thinking
    assert MessageContext.for_request({"model": "m"}).id != ctx.id


# -- state envelope -----------------------------------------------------------------------


def test_envelope_round_trip_and_tampering() -> None:
    signature = "EqEECkYICxgCKkAo3UA4+/=="
    sealed = seal(signature, {"call_x": "functions.Bash:0"})
    assert sealed.startswith("gwr1.") and client_tool_id(sealed[5:]) == sealed[5:]  # URL-safe, no padding
    carried = unseal(sealed, "p")
    assert (
        carried is not None
        and carried.reasoning_signature == signature
        and carried.call_ids == {"call_x": "functions.Bash:0"}
    )
    assert seal(None, {}) == EMPTY and unseal(EMPTY, "p") == type(carried)()
    assert unseal(signature, "p") is None  # an Anthropic signature is not ours
    for bad in (
        "gwr1.!!!",
        "gwr1." + sealed[5:-3],
        "gwr1.WzFd",
        "gwr1.eyJyZWFzb25pbmdfc2lnbmF0dXJlIjo1fQ",
    ):  # garbage, cut, [1], a number
        with pytest.raises(InvalidRequest) as err:
            unseal(bad, "messages[1].content[0].signature")
        assert err.value.param == "messages[1].content[0].signature" and err.value.code == "invalid_signature"


def test_an_envelope_from_the_responses_dialect_is_understood() -> None:
    """One codec for every dialect: state minted for a Responses client (reasoning text
    inside the envelope) comes back whole when the conversation continues here."""
    envelope = carry.encode(carry.Carried("thought", "sig==", {"call_s": "functions.Bash:0"}))
    body = base_body()
    body["messages"][1]["content"].insert(0, {"type": "thinking", "thinking": "", "signature": envelope})
    body["messages"][1]["content"][1]["id"] = body["messages"][2]["content"][0]["tool_use_id"] = "call_s"
    assistant, result = to_hub(body)["messages"][1:3]
    assert (assistant["reasoning_content"], assistant["reasoning_signature"]) == ("thought", "sig==")
    assert assistant["tool_calls"][0]["id"] == result["tool_call_id"] == "functions.Bash:0"


def test_thinking_only_answer_keeps_its_state_in_its_own_block() -> None:
    completion = completion_of({"content": None, "reasoning_content": "deep", "reasoning_signature": "sig=="}, "length")
    message = render_message(completion, MessageContext(model="m", thinking=True))
    assert [b["type"] for b in message["content"]] == ["thinking"]
    assert unseal(message["content"][0]["signature"], "x").reasoning_signature == "sig=="  # type: ignore[union-attr]


# -- errors and models --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (InvalidRequest("bad", param="messages"), 400, "invalid_request_error"),
        (AuthenticationFailed("no key"), 401, "authentication_error"),
        (PermissionDenied("not your tier"), 403, "permission_error"),
        (NotFound("no model"), 404, "not_found_error"),
        (GatewayError("too big", status=413), 413, "request_too_large"),
        (RateLimited("slow down"), 429, "rate_limit_error"),
        (GatewayError("bug"), 500, "api_error"),
        (UpstreamError("upstream broke"), 502, "api_error"),
        (ServiceUnavailable("overloaded", retryable=True), 529, "overloaded_error"),
        (ServiceUnavailable("not configured", code="provider_not_configured"), 503, "api_error"),
        (UpstreamTimeout("slow upstream"), 504, "timeout_error"),
        (GatewayError("conflict", status=409), 409, "invalid_request_error"),
    ],
)
def test_render_error(exc: GatewayError, status: int, kind: str) -> None:
    got_status, body = render_error(exc)
    assert got_status == status
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert exc.message in body["error"]["message"]


def test_render_error_names_the_param() -> None:
    assert render_error(InvalidRequest("Field required.", param="max_tokens"))[1]["error"]["message"] == (
        "max_tokens: Field required."
    )


def test_render_models() -> None:
    models = [Model(id=f"m{i}", provider="p", upstream="u", owned_by="p", created=1747180800 + i) for i in range(5)]
    assert render_model(models[0]) == {"type": "model", "id": "m0", "display_name": "m0",
                                       "created_at": "2025-05-14T00:00:00Z"}  # fmt: skip
    whole = render_models(models)
    assert [m["id"] for m in whole["data"]] == ["m0", "m1", "m2", "m3", "m4"]
    assert (whole["has_more"], whole["first_id"], whole["last_id"]) == (False, "m0", "m4")
    page = render_models(models, limit=2, after_id="m0")
    assert ([m["id"] for m in page["data"]], page["has_more"]) == (["m1", "m2"], True)
    page = render_models(models, limit=2, before_id="m4")
    assert ([m["id"] for m in page["data"]], page["has_more"]) == (["m2", "m3"], True)
    assert render_models([]) == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    for kwargs, param in (({"limit": 0}, "limit"), ({"limit": "5"}, "limit"), ({"after_id": "zz"}, "after_id")):
        with pytest.raises(InvalidRequest) as err:
            render_models(models, **kwargs)
        assert err.value.param == param
