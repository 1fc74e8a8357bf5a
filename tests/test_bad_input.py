"""Bad input gets an OpenAI-shaped 400 naming the parameter (401 for a bad key), never a
500, a traceback or a hang (issue 11, item 9).

Each case here was a 500 with a logged traceback, or a wrong value the gateway silently
coerced, before.  tests/test_fuzz.py covers the same ground by property."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from all_kinds import Answers, start_all_kinds
from conftest import PRO_KEY, Gateway
from openai_schema import validate_error

from gateway import handlers
from gateway.errors import InvalidRequest, error_middleware
from gateway.validation import MAX_DEPTH, parse_body, read_json

MESSAGES = [{"role": "user", "content": "Hi"}]
REPLAYED = {"role": "assistant", "content": "Hello", "reasoning_signature": "c2lnbmF0dXJl"}  # a turn with thinking
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}},
}


@pytest.fixture
async def kinds(fake_server: Any, start_gateway: Any, tmp_path: Path) -> tuple[Gateway, Answers]:
    return await start_all_kinds(fake_server, start_gateway, tmp_path)


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """After the test: nothing at ERROR (a traceback) in any log."""
    yield
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]


async def post(gateway: Gateway, body: Any, path: str = "/chat/completions", **headers: str) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        auth = {"Authorization": f"Bearer {PRO_KEY}", "Content-Type": "application/json", **headers}
        async with http.post(gateway.url + path, data=data, headers=auth) as resp:
            raw = await resp.read()
    assert b"Traceback" not in raw
    return resp.status, orjson.loads(raw)


def assert_400(status: int, answer: Any, param: str, code: str | None = None) -> None:
    assert status == 400, answer
    validate_error(answer)
    assert answer["error"]["param"] == param, answer
    assert answer["error"]["type"] == "invalid_request_error"
    if code is not None:
        assert answer["error"]["code"] == code, answer


# -- the cases of the issue --------------------------------------------------------------


@pytest.mark.parametrize("model", ["oai-large", "ant-large", "gem-large"])
@pytest.mark.parametrize(
    ("role", "code"),
    [
        (["user"], "invalid_type"),
        ({"role": "user"}, "invalid_type"),
        (5, "invalid_type"),
        (None, "missing_required_parameter"),
    ],
)
async def test_role_of_the_wrong_type(
    kinds: tuple[Gateway, Answers], no_errors_logged: Any, model: str, role: Any, code: str
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": role, "content": "Hi"}]
    status, answer = await post(kinds[0], {"model": model, "messages": messages})
    assert_400(status, answer, "messages[1].role", code)
    assert "'messages[1].role'" in answer["error"]["message"]


@pytest.mark.parametrize("model", ["oai-large", "ant-large", "gem-large"])
@pytest.mark.parametrize("calls", [7, "call_1", {"id": "call_1"}])
async def test_tool_calls_not_an_array(
    kinds: tuple[Gateway, Answers], no_errors_logged: Any, model: str, calls: Any
) -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": calls}]
    status, answer = await post(kinds[0], {"model": model, "messages": messages})
    assert_400(status, answer, "messages[1].tool_calls", "invalid_type")


@pytest.mark.parametrize("model", ["ant-large", "gem-large"])
@pytest.mark.parametrize("effort", [["high"], {"level": "high"}, 3])
async def test_reasoning_effort_not_a_string(
    kinds: tuple[Gateway, Answers], no_errors_logged: Any, model: str, effort: Any
) -> None:
    status, answer = await post(kinds[0], {"model": model, "messages": MESSAGES, "reasoning_effort": effort})
    assert_400(status, answer, "reasoning_effort", "invalid_type")


def nested(depth: int, kind: str) -> bytes:
    """A list or object `depth` levels deep, written by hand (orjson writes at most 254)."""
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize("model", ["oai-large", "ant-large", "gem-large"])
@pytest.mark.parametrize("depth", [255, 600, 1022])  # with the two levels above it: 257 to 1,024
@pytest.mark.parametrize("kind", ["[", "{"])
async def test_deep_nesting_is_refused_at_the_door(
    kinds: tuple[Gateway, Answers], no_errors_logged: Any, model: str, depth: int, kind: str
) -> None:
    body = b'{"model":"%s","messages":[{"role":"user","content":%s}]}' % (model.encode(), nested(depth - 2, kind))
    status, answer = await post(kinds[0], body)
    assert_400(status, answer, "messages", "nesting_too_deep")
    assert f"deeper than {MAX_DEPTH} levels" in answer["error"]["message"]


async def test_deep_nesting_with_a_limited_key(
    fake_server: Any, start_gateway: Any, tmp_path: Path, no_errors_logged: Any
) -> None:
    """A key with limits has its prompt's tokens estimated by a walk of the body
    (limits._chars), which used to hit the recursion limit."""
    limited = {"name": "alice", "key": "${PRO_KEY}", "tier": "pro", "limits": {"tpm": 1000000}}
    gateway, _ = await start_all_kinds(fake_server, start_gateway, tmp_path, keys=[limited])
    tools = b'[{"type":"function","function":{"name":"f","parameters":%s}}]' % nested(1000, "{")
    body = b'{"model":"oai-large","messages":[{"role":"user","content":"Hi"}],"tools":%s}' % tools
    status, answer = await post(gateway, body)
    assert_400(status, answer, "tools", "nesting_too_deep")


async def test_depth_rule_boundary(kinds: tuple[Gateway, Answers], no_errors_logged: Any) -> None:
    """The body object is level 1: MAX_DEPTH levels pass, one more is refused."""
    for kind in "[{":
        assert parse_body(b'{"input":%s}' % nested(MAX_DEPTH - 1, kind))["input"]
        with pytest.raises(InvalidRequest) as refused:
            parse_body(b'{"input":%s}' % nested(MAX_DEPTH, kind))
        assert refused.value.param == "input"
    # through the gateway: the body, messages, the message, and the rest in `content`
    for depth, status in ((MAX_DEPTH, 200), (MAX_DEPTH + 1, 400)):
        content = nested(depth - 3, "[")
        body = b'{"model":"oai-large","messages":[{"role":"user","content":%s}]}' % content
        assert (await post(kinds[0], body))[0] == status


async def test_non_utf8_byte_in_the_key_is_a_401(kinds: tuple[Gateway, Answers], no_errors_logged: Any) -> None:
    """aiohttp keeps such a byte as a lone surrogate, which cannot be hashed as UTF-8."""
    url = kinds[0].server.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer sk-\xff\xfe-key\r\n"
        b"Connection: close\r\n\r\n"
    )
    async with asyncio.timeout(10):
        raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), raw[:300]
    answer = orjson.loads(body)
    validate_error(answer)
    assert answer["error"]["code"] == "invalid_api_key"


# -- every other field the adapters read, with the wrong type ----------------------------


def _with(path: tuple[Any, ...], value: Any, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
        "tools": [orjson.loads(orjson.dumps(TOOL))],
        **extra,
    }
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


_PARAMS = ("tools", 0, "function", "parameters")
_ALLOWED = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}
CONFUSIONS = [
    # (models, path in the body, wrong value, the param the 400 names, extra top-level fields)
    ("ant gem", ("messages", 0, "content", 0, "text"), 5, "messages[0].content[0].text", {}),
    ("ant gem", ("messages", 0, "content", 0, "text"), ["Hi"], "messages[0].content[0].text", {}),
    ("ant gem", ("messages", 0, "content", 0), "Hi", "messages[0].content[0]", {}),
    ("ant", ("messages", 0, "content", 0, "cache_control"), "ephemeral", "messages[0].content[0].cache_control", {}),
    ("ant", ("messages", 1), {**REPLAYED, "reasoning_content": ["thought"]}, "messages[1].reasoning_content", {}),
    ("ant gem", ("tools", 0, "function", "description"), 5, "tools[0].function.description", {}),
    (
        "ant gem",
        ("tool_choice",),
        {"type": "function", "function": {"name": ["lookup"]}},
        "tool_choice.function.name",
        {},
    ),
    ("ant", (*_PARAMS, "type"), "string", "tools[0].function.parameters.type", {}),
    ("ant", ("parallel_tool_calls",), "no", "parallel_tool_calls", {}),
    (
        "oai ant gem",
        ("stream_options", "include_usage"),
        "yes",
        "stream_options.include_usage",
        {"stream": True, "stream_options": {}},
    ),
    ("gem", ("logprobs",), "yes", "logprobs", {}),
    ("gem", ("tool_choice", "allowed_tools", "tools"), 5, "tool_choice.allowed_tools.tools", {"tool_choice": _ALLOWED}),
    (
        "gem",
        ("tool_choice", "allowed_tools", "mode"),
        ["auto"],
        "tool_choice.allowed_tools.mode",
        {"tool_choice": _ALLOWED},
    ),
    ("gem", (*_PARAMS, "required"), 5, "tools[0].function.parameters", {}),
    ("gem", (*_PARAMS, "required"), True, "tools[0].function.parameters", {}),
    ("gem", (*_PARAMS, "required"), [["q"]], "tools[0].function.parameters", {}),
    (
        "gem",
        (*_PARAMS, "properties"),
        {"q": {"properties": {"z": {}}, "required": 5}},
        "tools[0].function.parameters",
        {},
    ),
    # accepted: a null `type` means "object" to Anthropic's API; allOf merges only same-typed keys
    ("ant", (*_PARAMS, "type"), None, None, {}),
    ("gem", _PARAMS, {"type": "object", "properties": 5, "allOf": [{"properties": {"a": {}}}]}, None, {}),
]


@pytest.mark.parametrize(("models", "path", "value", "param", "extra"), CONFUSIONS)
async def test_a_wrong_type_in_any_field_an_adapter_reads(
    kinds: tuple[Gateway, Answers],
    no_errors_logged: Any,
    models: str,
    path: tuple[Any, ...],
    value: Any,
    param: str | None,
    extra: dict[str, Any],
) -> None:
    """A 400 naming the field (the gateway's, not the upstream's), or a success where
    the value can be honoured; never a 500, never a silent coercion ("5" for 5)."""
    gateway, answers = kinds
    for model in models.split():
        body = _with(path, value, model=f"{model}-large", **orjson.loads(orjson.dumps(extra)))
        answers.refused = False
        status, answer = await post(gateway, body)
        assert not answers.refused, (model, answer)  # the gateway named it, not the upstream
        if param is None:
            assert status == 200, (model, answer)
        else:
            assert_400(status, answer, param)


def _items(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    for _ in range(depth):
        leaf = {"type": "array", "items": leaf}
    return leaf


async def test_schema_refs_cannot_recurse_or_explode(kinds: tuple[Gateway, Answers], no_errors_logged: Any) -> None:
    """Gemini schemas have their local $refs inlined: a long chain of them, or a chain of
    deep ones, was a RecursionError, and refs that double at each level a CPU-bound hang."""
    chain = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(500)} | {"d500": {"type": "string"}}
    deep = {f"d{i}": _items(100, {"$ref": f"#/$defs/d{i + 1}"}) for i in range(30)} | {"d30": {"type": "string"}}
    doubling = {
        f"d{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}, "b": {"$ref": f"#/$defs/d{i + 1}"}},
        }
        for i in range(40)
    } | {"d40": {"type": "string"}}
    for defs in (chain, deep, doubling):
        params = {"type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}, "$defs": defs}
        tool = {"type": "function", "function": {"name": "f", "parameters": params}}
        status, answer = await post(kinds[0], {"model": "gem-large", "messages": MESSAGES, "tools": [tool]})
        assert_400(status, answer, "tools[0].function.parameters")
    ordinary = {
        "a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}},
        "b": _items(20, {"type": "string"}),
    }
    params = {"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "$defs": ordinary}
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    status, answer = await post(kinds[0], {"model": "gem-large", "messages": MESSAGES, "tools": [tool]})
    assert status == 200, answer


# -- reading the body: read_json ---------------------------------------------------------


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await read_json(request)})


@pytest.fixture
async def reader_app(aiohttp_server: Any) -> Any:
    """A tiny app whose one handler reads the body with read_json, behind the gateway's
    error middleware (the OpenAI error shape), with a 1 KiB body limit."""
    app = web.Application(middlewares=[error_middleware], client_max_size=1024)
    app.router.add_post("/", _echo)
    return await aiohttp_server(app, host="127.0.0.1")


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_read_json_refuses_a_body_its_content_encoding_does_not_fit(
    reader_app: Any, no_errors_logged: Any, encoding: str, compress: Any
) -> None:
    """A 400 (and the connection closed, saying so); a body that fits is read, one over
    the size limit is still a 413, bad JSON still invalid_json."""
    url = reader_app.make_url("/")
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        for _ in range(2):  # the second request must get a fresh connection, and its own 400
            async with http.post(url, data=b'{"model": "x"}' * 4, headers=headers) as resp:
                answer = await resp.json()
            assert resp.status == 400, answer
            assert resp.headers["Connection"] == "close"
            validate_error(answer)
            assert answer["error"]["code"] == "invalid_body"
        async with http.post(url, data=compress(b'{"model": "x"}'), headers=headers) as resp:
            assert (resp.status, await resp.json()) == (200, {"got": {"model": "x"}})
        async with http.post(url, data=b'{"a": "%s"}' % (b"x" * 4096)) as resp:
            answer = await resp.json()
        assert resp.status == 413, answer
        validate_error(answer)
        async with http.post(url, data=b'{"a": ') as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_json")


@pytest.mark.skipif(
    "read_json" not in getattr(handlers, "__dict__", {}),
    reason="handlers.py does not read bodies with validation.read_json yet (the lead's switch)",
)
@pytest.mark.parametrize("path", ["/chat/completions", "/embeddings"])
async def test_content_encoding_mismatch_through_the_gateway(
    kinds: tuple[Gateway, Answers], no_errors_logged: Any, path: str
) -> None:
    body = {"model": "oai-large", "messages": MESSAGES, "input": "Hi"}
    status, answer = await post(kinds[0], body, path, **{"Content-Encoding": "gzip"})
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_body"
