"""Property: whatever bytes or JSON reach any endpoint, the answer is a well-formed
OpenAI error or a success: never a traceback, never a 500, never a hang."""

from __future__ import annotations

import asyncio
import copy
import logging
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from all_kinds import KINDS, Answers, start_all_kinds
from conftest import PRO_KEY, Gateway
from fakes import FakeUpstream, fixture_json, json_reply
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_schema import validate_error

ENDPOINTS = [("POST", "/chat/completions"), ("POST", "/embeddings"), ("GET", "/models"), ("GET", "/models/x")]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
chat_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["oai-small", "oai-large", "nope", ""]) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {}, optional={"role": st.sampled_from(["user", "tool", "x"]), "content": json_values}
            ),
            max_size=3,
        )
        | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": json_values,
        "input": json_values,
    },
)
bodies = st.one_of(st.binary(max_size=200), json_values.map(orjson.dumps), chat_like.map(orjson.dumps))


async def _check(http: aiohttp.ClientSession, gateway: Gateway, method: str, path: str, body: bytes) -> None:
    async with asyncio.timeout(10):  # never a hang
        async with http.request(
            method, gateway.url + path, data=body, headers={"Authorization": f"Bearer {PRO_KEY}"}
        ) as resp:
            raw = await resp.read()
    assert resp.status < 500 or resp.status in (502, 503, 504), (resp.status, raw[:300])
    if resp.status >= 400:
        validate_error(orjson.loads(raw))
    assert b"Traceback" not in raw


async def test_arbitrary_input_gets_openai_shaped_answers(gateway: Gateway, upstream: FakeUpstream) -> None:
    cases: list[tuple[str, str, bytes]] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(ENDPOINTS), bodies)
    def collect(endpoint: tuple[str, str], body: bytes) -> None:
        cases.append((*endpoint, body))

    collect()  # hypothesis drives a sync function; the requests run on the test's loop below
    cases.append(("POST", "/chat/completions", b'{"model": "oai-small", "messages": [], "n": 1' + b"9" * 40 + b"}"))
    upstream.check = lambda path, headers, body: json_reply(fixture_json("openai_chat_completion_text.json"))
    async with aiohttp.ClientSession() as http:
        for method, path, body in cases:
            await _check(http, gateway, method, path, body)
    assert len(cases) >= 100


# -- type confusion, field by field, against every provider kind ---------------------------
#
# A valid body for each endpoint; each case puts one wrong-typed value (null, bool, number,
# huge number, string, list, object, or a list/object nested up to 1,000 levels) at one
# field the gateway or an adapter reads, and sends it to an OpenAI, an Anthropic or a
# Gemini model (tests/all_kinds.py: fakes that validate like the real APIs).  Whatever
# the value, the answer is a success or an OpenAI error: a 400 of the gateway's names
# the parameter, nothing is a 500 (unless the fake upstream itself failed), and nothing
# is logged at ERROR (a traceback).

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    {"role": "user", "content": "Thanks.", "name": "bob"},
]
# Parents a field needs before it can be confused (their valid shape).
PARENTS: dict[tuple[Any, ...], Any] = {
    ("tool_choice",): {"type": "function", "function": {"name": "lookup"}},
    ("tool_choice", "allowed_tools"): {"mode": "auto", "tools": [{"type": "function", "function": {"name": "lookup"}}]},
    ("response_format",): {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
    },
    ("stream_options",): {"include_usage": True},
}
_PARAMS = ("tools", 0, "function", "parameters")
CHAT_FIELDS: list[tuple[Any, ...]] = [
    ("model",),
    ("messages",),
    ("messages", 0),
    *[("messages", i, "role") for i in range(5)],
    *[("messages", i, "content") for i in range(5)],
    ("messages", 1, "content", 0),
    ("messages", 1, "content", 0, "type"),
    ("messages", 1, "content", 0, "text"),
    ("messages", 1, "content", 0, "cache_control"),
    ("messages", 1, "content", 1, "type"),
    ("messages", 1, "content", 1, "image_url"),
    ("messages", 1, "content", 1, "image_url", "url"),
    ("messages", 1, "content", 1, "input_audio"),
    ("messages", 1, "content", 1, "file"),
    ("messages", 2, "tool_calls"),
    ("messages", 2, "tool_calls", 0),
    ("messages", 2, "tool_calls", 0, "id"),
    ("messages", 2, "tool_calls", 0, "type"),
    ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "name"),
    ("messages", 2, "tool_calls", 0, "function", "arguments"),
    ("messages", 2, "reasoning_content"),
    ("messages", 2, "reasoning_signature"),
    ("messages", 3, "tool_call_id"),
    ("messages", 4, "name"),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "type"),
    ("tools", 0, "function"),
    ("tools", 0, "function", "name"),
    ("tools", 0, "function", "description"),
    ("tools", 0, "function", "strict"),
    _PARAMS,
    *[(*_PARAMS, key) for key in ("type", "properties", "required", "$defs", "allOf", "anyOf", "enum", "items")],
    *[(*_PARAMS, "properties", "q", key) for key in ("type", "$ref", "enum", "const", "items", "format", "nullable")],
    (*_PARAMS, "properties", "q"),
    ("tool_choice",),
    ("tool_choice", "type"),
    ("tool_choice", "function"),
    ("tool_choice", "function", "name"),
    ("tool_choice", "allowed_tools"),
    ("tool_choice", "allowed_tools", "mode"),
    ("tool_choice", "allowed_tools", "tools"),
    ("tool_choice", "allowed_tools", "tools", 0),
    ("response_format",),
    ("response_format", "type"),
    ("response_format", "json_schema"),
    ("response_format", "json_schema", "schema"),
    ("response_format", "json_schema", "name"),
    ("response_format", "json_schema", "strict"),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    *[
        (name,)
        for name in (
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "top_k",
            "stop",
            "n",
            "reasoning_effort",
            "seed",
            "user",
            "safety_identifier",
            "logprobs",
            "top_logprobs",
            "parallel_tool_calls",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "modalities",
            "metadata",
            "store",
            "service_tier",
            "verbosity",
            "prediction",
            "audio",
        )
    ],
]
EMBEDDING_FIELDS: list[tuple[Any, ...]] = [
    ("model",),
    ("input",),
    ("input", 0),
    ("encoding_format",),
    ("dimensions",),
    ("user",),
]


class Deep:
    """A list or object nested `depth` levels, written by hand: orjson writes only 254."""

    def __init__(self, depth: int, kind: str) -> None:
        self.depth, self.kind = depth, kind

    def __repr__(self) -> str:
        return f"Deep({self.depth}, {self.kind!r})"

    def raw(self) -> bytes:
        if self.kind == "[":
            return b"[" * self.depth + b"]" * self.depth
        return b'{"a":' * (self.depth - 1) + b"{}" + b"}" * (self.depth - 1)


_DEEP_MARK = "@@deep@@"
WORDS = st.sampled_from(
    [
        "",
        "auto",
        "none",
        "required",
        "text",
        "json_object",
        "json_schema",
        "function",
        "allowed_tools",
        "user",
        "assistant",
        "tool",
        "high",
        "minimal",
        "object",
        "string",
        "lookup",
        "call_1",
        "#/$defs/x",
        "data:image/png;base64,AAAA",
        "https://example.com/a.png",
        "base64",
    ]
)
KEYS = st.sampled_from(["type", "text", "function", "name", "url", "id", "properties", "$ref", "required"]) | st.text(
    max_size=4
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | WORDS
)
confused = st.one_of(
    scalars,
    st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=8
    ),
    st.builds(Deep, st.integers(2, 1000), st.sampled_from(["[", "{"])),
)


def _put(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set `value` at `path`, giving missing parents their valid shape first."""
    for n in range(1, len(path)):
        if path[:n] in PARENTS and not isinstance(_get(body, path[:n]), dict):
            _put(body, path[:n], copy.deepcopy(PARENTS[path[:n]]))
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _get(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body.get(key) if isinstance(body, dict) else None
    return body


def _encode(body: dict[str, Any]) -> bytes:
    deep: list[Deep] = []

    def default(value: Any) -> str:
        deep.append(value)
        return _DEEP_MARK

    data = orjson.dumps(body, default=default)
    return data.replace(orjson.dumps(_DEEP_MARK), deep[0].raw()) if deep else data


@st.composite
def confused_cases(draw: st.DrawFn) -> tuple[str, bytes]:
    provider = draw(st.sampled_from(sorted(KINDS)))
    if draw(st.integers(0, 5)) == 0:
        body: dict[str, Any] = {"model": f"{provider}-large", "input": ["hello", "world"]}
        path, endpoint = draw(st.sampled_from(EMBEDDING_FIELDS)), "/embeddings"
    else:
        body = {"model": f"{provider}-large", "messages": copy.deepcopy(MESSAGES), "tools": [copy.deepcopy(TOOL)]}
        if draw(st.booleans()):
            body["stream"] = True
        path, endpoint = draw(st.sampled_from(CHAT_FIELDS)), "/chat/completions"
        if path[0] == "stream_options":
            body["stream"] = True
    _put(body, path, draw(confused))
    return endpoint, _encode(body)


@pytest.fixture
async def mixed(fake_server: Any, start_gateway: Any, tmp_path: Path) -> tuple[Gateway, Answers]:
    return await start_all_kinds(fake_server, start_gateway, tmp_path)


def _problem(resp: aiohttp.ClientResponse, raw: bytes, answers: Answers) -> str | None:
    """What is wrong with one answer, or None."""
    if resp.status >= 500 and not (answers.failed and resp.status == 502):
        return "5xx"
    if b"Traceback" in raw:
        return "traceback"
    if resp.content_type == "text/event-stream":
        return None if resp.status == 200 else "stream status"
    data = orjson.loads(raw)
    if resp.status >= 400:
        validate_error(data)
    if (
        resp.status == 400
        and not answers.refused
        and not (isinstance(data["error"]["param"], str) and data["error"]["param"])
    ):
        return "400 without param"
    return None


async def test_type_confusion_in_any_field_is_a_400_never_a_500(
    mixed: tuple[Gateway, Answers], caplog: pytest.LogCaptureFixture
) -> None:
    gateway, answers = mixed
    cases: list[tuple[str, bytes]] = []

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(confused_cases())
    def collect(case: tuple[str, bytes]) -> None:
        cases.append(case)

    collect()
    headers = {"Authorization": f"Bearer {PRO_KEY}", "Content-Type": "application/json"}
    problems: list[tuple[Any, ...]] = []
    async with aiohttp.ClientSession() as http:
        for path, body in cases:
            answers.failed = answers.refused = False
            async with asyncio.timeout(10):  # never a hang
                async with http.post(gateway.url + path, data=body, headers=headers) as resp:
                    raw = await resp.read()
            problem = _problem(resp, raw, answers)
            if problem:
                problems.append((problem, path, body[:300], resp.status, raw[:300]))
    assert not problems, "\n".join(map(str, problems[:10]))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]
    assert len(cases) >= 300
