"""Property: whatever bytes or JSON reach any endpoint, the answer is a well-formed
OpenAI error or a success: never a traceback, never a 500, never a hang."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
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
