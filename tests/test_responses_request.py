"""Responses dialect, client -> hub: `to_hub`, `input_items`, and the provider-state
round trip (a Response's items replayed as the next request's input give the hub
back its reasoning, its signature and its tool-call ids, byte for byte)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from openai_schema import validate_error, validate_response_item_list
from responses_support import completion_of, context, jsonl, load, run

from gateway.dialects import carry
from gateway.dialects.responses.items import input_items
from gateway.dialects.responses.render import render_response
from gateway.dialects.responses.request import to_hub
from gateway.errors import InvalidRequest

Json = dict[str, Any]
ADD = {"properties": {"a": {"description": "first number", "type": "integer"},
                      "b": {"description": "second number", "type": "integer"}},
       "required": ["a", "b"], "type": "object"}  # fmt: skip


def rejected(body: Json, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        to_hub(body, **kwargs)
    assert caught.value.status == 400
    validate_error(caught.value.body())
    return caught.value


# -- recorded requests ----------------------------------------------------------------------


def test_recorded_system_message_stream() -> None:
    assert to_hub(load("openai_responses_request_developer_role_stream.json")) == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant"},
            {"role": "user", "content": "Say hi in Portuguese"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 4000,
    }


def test_recorded_function_call_output_roundtrip() -> None:
    assert to_hub(load("openai_responses_request_function_call_output_roundtrip.json")) == {
        "model": "gpt-5",
        "messages": [
            {"role": "developer", "content": "You are a helpful assistant. Always use both add and multiply at the "
                                             "same time."},
            {"role": "user", "content": "Add and multiply the number 2 and 3"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_inViAUr9eV0GDtyOywkCxp59", "type": "function",
                 "function": {"name": "add", "arguments": '{"a":2,"b":3}'}},
                {"id": "call_Op66UUnzuOoKmgGeFJQJFTUY", "type": "function",
                 "function": {"name": "multiply", "arguments": '{"a":2,"b":3}'}},
            ]},
            {"role": "tool", "tool_call_id": "call_inViAUr9eV0GDtyOywkCxp59", "content": "5"},
            {"role": "tool", "tool_call_id": "call_Op66UUnzuOoKmgGeFJQJFTUY", "content": "6"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 4000,
        "tool_choice": "auto",
        "tools": [
            {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": ADD,
                                              "strict": False}},
            {"type": "function", "function": {"name": "multiply", "description": "Multiply two numbers",
                                              "parameters": ADD, "strict": False}},
        ],
    }  # fmt: skip


def test_recorded_reasoning_include_encrypted() -> None:
    body = load("openai_responses_request_reasoning_include_encrypted.json")
    hub = to_hub(body)
    assert hub["messages"] == [
        {"role": "developer", "content": "You are a helpful assistant"},
        {"role": "user", "content": "What's the weather in Florence, Italy?"},
    ]
    assert hub["reasoning_effort"] == "high"
    assert hub["tools"][0]["function"]["strict"] is False
    for kept in ("store", "include", "reasoning", "metadata"):  # the dialect's, never the upstream's
        assert kept not in hub
    ctx = context(body)
    assert ctx.summaries and ctx.encrypted_content


def test_recorded_temperature_error_matches_openai() -> None:
    error = rejected({"model": "m", "input": "hi", "temperature": -1})
    assert error.body() == {"error": {**load("openai_responses_error_400_decimal_below_min.json")["error"]}}


# -- input ----------------------------------------------------------------------------------


def test_instructions_history_and_input_in_order() -> None:
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "two", "annotations": [], "logprobs": []}]},
    ]  # fmt: skip
    body = {"model": "m", "instructions": "now", "input": "three", "previous_response_id": "resp_1"}
    assert to_hub(body, history)["messages"] == [
        {"role": "system", "content": "now"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]


def test_parts_images_and_files() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
    ]}]}  # fmt: skip
    assert to_hub(body)["messages"][0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    for part, param in (
        ({"type": "input_image", "file_id": "file-1"}, "input[0].content[0].file_id"),
        ({"type": "input_file", "file_url": "https://example.com/a.pdf"}, "input[0].content[0].file_url"),
        ({"type": "input_file", "file_id": "file-1"}, "input[0].content[0].file_id"),
    ):
        assert rejected({"model": "m", "input": [{"role": "user", "content": [part]}]}).param == param


def test_assistant_replay_merges_into_one_message() -> None:
    body = {"model": "m", "input": [
        {"role": "user", "content": "go"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me "},
                                                             {"type": "output_text", "text": "check."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "tw"},
                                                                     {"type": "input_text", "text": "o"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
    ]}  # fmt: skip
    messages = to_hub(body)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert messages[1]["content"] == "Let me check."
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert [m["content"] for m in messages[2:4]] == ["one", "two"]
    assert messages[4] == {"role": "assistant", "content": None, "refusal": "No."}


def test_foreign_reasoning_is_dropped() -> None:
    """OpenAI's own encrypted reasoning means nothing to another upstream."""
    output = load("openai_response_reasoning_encrypted.json")["output"]
    messages = to_hub({"model": "m", "input": [{"role": "user", "content": "q"}, *output]})["messages"]
    assert messages[1] == {"role": "assistant", "content": output[1]["content"][0]["text"]}


def test_item_reference() -> None:
    stored = {"id": "msg_stored", "type": "message", "role": "user", "status": "completed",
              "content": [{"type": "input_text", "text": "from the store"}]}  # fmt: skip
    body = {"model": "m", "input": ["x", {"type": "item_reference", "id": "msg_stored"}][1:]}
    assert to_hub(body, resolve_item={"msg_stored": stored}.get)["messages"] == [
        {"role": "user", "content": "from the store"}
    ]
    body = {"model": "m", "input": [{"role": "user", "content": "a"}, {"type": "item_reference", "id": "nope"}]}
    assert rejected(body, resolve_item={}.get).param == "input[1].id"
    assert rejected(body).param == "input[1].id"


def test_input_items_are_normalised_with_ids() -> None:
    body = load("openai_responses_request_function_call_output_roundtrip.json")
    body["input"].append({"type": "reasoning", "id": "__fake_id__", "summary": []})
    body["input"].append({"type": "message", "id": "msg_kept", "role": "assistant", "content": "ok"})
    items = input_items(body)
    prefixes = [re.match(r"[a-z]+_", item["id"]).group() for item in items]
    assert prefixes == ["msg_", "msg_", "fc_", "fc_", "fco_", "fco_", "rs_", "msg_"]
    assert items[-1]["id"] == "msg_kept" and items[-1]["content"][0]["type"] == "output_text"
    assert items[0]["content"] == [{"type": "input_text", "text": body["input"][0]["content"]}]
    assert len({item["id"] for item in items}) == len(items)
    page = {"object": "list", "data": items, "first_id": items[0]["id"], "last_id": items[-1]["id"], "has_more": False}
    validate_response_item_list(page)
    assert input_items({"model": "m", "input": "hi"})[0]["content"] == [{"type": "input_text", "text": "hi"}]


# -- tools and settings ---------------------------------------------------------------------


def test_tools_and_tool_choice() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
             {"type": "function", "name": "g", "description": "G"}]  # fmt: skip
    hub = to_hub({"model": "m", "input": "x", "tools": tools, "tool_choice": {"type": "function", "name": "f"}})
    assert hub["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}},
        {"type": "function", "function": {"name": "g", "description": "G"}},
    ]
    assert hub["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "g"}]}
    hub = to_hub({"model": "m", "input": "x", "tools": tools, "tool_choice": allowed, "parallel_tool_calls": False})
    assert [t["function"]["name"] for t in hub["tools"]] == ["g"]
    assert (hub["tool_choice"], hub["parallel_tool_calls"]) == ("required", False)
    error = rejected({"model": "m", "input": "x", "tools": [tools[0], {"type": "web_search"}]})
    assert error.param == "tools[1]" and "web_search" in error.message
    assert rejected({"model": "m", "input": "x", "tool_choice": {"type": "web_search_preview"}}).param == "tool_choice"


def test_text_format_and_settings() -> None:
    fmt = {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
    body = {"model": "m", "input": "x", "text": {"format": fmt, "verbosity": "low"}, "max_output_tokens": 16,
            "temperature": 0.5, "top_p": 1, "user": "u", "safety_identifier": "s", "metadata": {"k": "v"},
            "reasoning": {"effort": "minimal"}, "truncation": "auto", "store": True, "include": [],
            "prompt_cache_key": "p", "service_tier": "auto"}  # fmt: skip
    hub = to_hub(body)
    assert hub["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    assert (hub["verbosity"], hub["max_completion_tokens"], hub["temperature"], hub["top_p"]) == ("low", 16, 0.5, 1)
    assert (hub["user"], hub["reasoning_effort"], hub["prompt_cache_key"]) == ("s", "minimal", "p")
    assert {"metadata", "truncation", "store", "include", "safety_identifier"}.isdisjoint(hub)
    assert to_hub({**body, "text": {"format": {"type": "json_object"}}})["response_format"] == {"type": "json_object"}
    assert "response_format" not in to_hub({**body, "text": {"format": {"type": "text"}}})  # fmt: skip


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        ({"max_output_tokens": 15}, "max_output_tokens", "integer_below_min_value"),
        ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"include": ["reasoning.everything"]}, "include[0]", "invalid_value"),
        ({"truncation": "sometimes"}, "truncation", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"safety_identifier": "s" * 65}, "safety_identifier", "string_above_max_length"),
        ({"input": []}, "input", "missing_required_parameter"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "unsupported_value"),
    ],
)
def test_refused_values(change: Json, param: str, code: str) -> None:
    error = rejected({"model": "m", "input": "hi", **change})
    assert (error.param, error.code) == (param, code)
    if param == "background":
        assert "background is not supported" in error.message


def _set(body: Json, path: str, value: Any) -> None:
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    for key in keys[:-1]:
        body = body[key]
    body[keys[-1]] = value


FULL: Json = {
    "model": "m",
    "instructions": "i",
    "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "t"},
                                                         {"type": "input_image", "image_url": "https://x/a.png"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}],
         "encrypted_content": "gAAAA"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "o"},
        {"type": "item_reference", "id": "msg_1"},
    ],
    "tools": [{"type": "function", "name": "f", "parameters": {}, "strict": False, "description": "d"}],
    "tool_choice": {"type": "function", "name": "f"},
    "text": {"format": {"type": "json_schema", "name": "n", "schema": {}, "strict": True}, "verbosity": "low"},
    "reasoning": {"effort": "low", "summary": "auto"},
    "metadata": {"k": "v"},
    "include": ["reasoning.encrypted_content"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("model", 1), ("instructions", 1), ("input", 5), ("input[0]", "x"), ("input[0].type", 1),
        ("input[0].role", "robot"), ("input[0].content", 5), ("input[0].content[0]", 1),
        ("input[0].content[0].text", 1),
        ("input[0].content[1].image_url", 1), ("input[0].content[1].detail", "max"), ("input[1].summary", "x"),
        ("input[1].summary[0].text", 1), ("input[1].encrypted_content", 1), ("input[1].id", 1),
        ("input[2].call_id", 1), ("input[2].name", 1), ("input[2].arguments", {}), ("input[3].output", 1),
        ("input[3].call_id", None), ("input[4].id", 1), ("tools", {}), ("tools[0]", "f"), ("tools[0].name", 1),
        ("tools[0].parameters", "x"), ("tools[0].strict", "yes"), ("tools[0].description", 1), ("tool_choice", 1),
        ("tool_choice.name", 1), ("text", "x"), ("text.format", "x"), ("text.format.type", 1),
        ("text.format.name", 1), ("text.format.schema", "x"), ("text.format.strict", 1), ("text.verbosity", 1),
        ("reasoning", "x"), ("reasoning.effort", 1), ("reasoning.summary", "all"), ("metadata", "x"),
        ("metadata.k", 1), ("include", "x"), ("include[0]", 1), ("max_output_tokens", "16"),
        ("max_output_tokens", True), ("temperature", "1"), ("top_p", []), ("user", 1), ("safety_identifier", 1),
        ("parallel_tool_calls", "yes"), ("stream", 1), ("store", "no"), ("background", "no"),
        ("previous_response_id", 1), ("truncation", 1), ("prompt_cache_key", 1), ("service_tier", 1),
        ("max_tool_calls", "x"), ("top_logprobs", "x"), ("stream_options", "x"),
    ],
)  # fmt: skip
def test_wrong_types_name_the_param(path: str, value: Any) -> None:
    body = copy.deepcopy(FULL)
    stored = {"id": "msg_1", "type": "message", "role": "user", "content": "s"}
    to_hub(copy.deepcopy(body), resolve_item={"msg_1": stored}.get)  # the unchanged body is fine
    _set(body, path, value)
    error = rejected(body, resolve_item={"msg_1": stored}.get)
    assert error.param == path, error.message


# -- provider state round trip --------------------------------------------------------------


def _next_turn(output: list[Json], answer_for: str, result: str = "sunny") -> Json:
    """The request a client sends after running the tool: history replayed as received."""
    result_item = {"type": "function_call_output", "call_id": answer_for, "output": result}
    return {"model": "m", "input": [{"role": "user", "content": "weather?"}, *output, result_item]}


def _assistant(hub: Json) -> Json:
    [assistant] = [m for m in hub["messages"] if m["role"] == "assistant"]
    return assistant


@pytest.mark.parametrize("name", ["openai_chat_completion_reasoning_signature.json",
                                  "openai_chat_completion_gemini_signed_tool_id.json"])  # fmt: skip
@pytest.mark.parametrize("summaries", [True, False])
def test_state_round_trip_non_stream(name: str, summaries: bool) -> None:
    completion = load(name)
    original = completion["choices"][0]["message"]
    response = render_response(completion, context({"reasoning": {"summary": "auto"}} if summaries else {}))
    call = next(item for item in response["output"] if item["type"] == "function_call")
    hub = to_hub(_next_turn(response["output"], call["call_id"]))
    assistant = _assistant(hub)
    for key in ("reasoning_content", "reasoning_signature"):
        assert assistant.get(key) == original.get(key)  # byte for byte
    assert assistant["tool_calls"] == original["tool_calls"]
    assert hub["messages"][-1] == {"role": "tool", "tool_call_id": original["tool_calls"][0]["id"], "content": "sunny"}


@pytest.mark.parametrize("name", ["hub_chunks_anthropic_thinking_tool_use.jsonl",
                                  "hub_chunks_gemini_thought_signed_tool_call.jsonl"])  # fmt: skip
def test_state_round_trip_stream(name: str) -> None:
    """As Codex does: history built from `output_item.done` items; and as the store
    does: the terminal response's output given back as `history`."""
    chunks = jsonl(name)
    original = completion_of(chunks)["choices"][0]["message"]
    events, stream = run(context(), chunks)
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    call = next(item for item in done if item["type"] == "function_call")
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", call["call_id"])
    via_client = to_hub(_next_turn(done, call["call_id"]))
    assert stream.response is not None
    via_store = to_hub(
        {"model": "m", "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]},
        history=[{"role": "user", "content": "weather?"}, *stream.response["output"]],
    )
    assert via_client["messages"] == via_store["messages"]
    assistant = _assistant(via_client)
    for key in ("reasoning_content", "reasoning_signature"):
        assert assistant.get(key) == original.get(key)
    assert [c["id"] for c in assistant["tool_calls"]] == [c["id"] for c in original["tool_calls"]]
    assert via_client["messages"][-1]["tool_call_id"] == original["tool_calls"][0]["id"]


def test_altered_state_is_refused_and_foreign_state_ignored() -> None:
    completion = load("openai_chat_completion_gemini_signed_tool_id.json")
    output = render_response(completion, context())["output"]
    damaged = copy.deepcopy(output)
    damaged[0]["encrypted_content"] = damaged[0]["encrypted_content"][:-7] + "!!"
    error = rejected(_next_turn(damaged, output[1]["call_id"]))
    assert error.param == "input[1].encrypted_content"
    foreign = copy.deepcopy(output)
    foreign[0]["encrypted_content"] = "gAAAAABforeign"
    hub = to_hub(_next_turn(foreign, output[1]["call_id"]))
    assert _assistant(hub)["tool_calls"][0]["id"] == output[1]["call_id"]  # the short id, unmapped


def test_short_call_ids() -> None:
    assert carry.short_call_id("call_abc") == "call_abc"
    assert carry.short_call_id("toolu_014azqsWLU8Djh6RhmBGRC2u") == "toolu_014azqsWLU8Djh6RhmBGRC2u"
    for original in ("functions.Bash:0", "x" * 65, "call_" + "A" * 400):
        short = carry.short_call_id(original)
        assert re.fullmatch(r"call_[A-Za-z0-9_-]{32}", short) and short == carry.short_call_id(original)
    assert carry.short_call_id("a" * 65) != carry.short_call_id("b" * 65)
    state = carry.Carried("thought", "sig==", {"call_x": "functions.Bash:0"})
    assert carry.decode(carry.encode(state)) == state
    assert carry.decode("gAAAAB") is None and carry.decode(None) is None
    with pytest.raises(carry.DamagedState):
        carry.decode(carry.PREFIX + "not base64 json")
