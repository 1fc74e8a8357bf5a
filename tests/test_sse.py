"""The SSE decoder: every framing the WHATWG spec allows, cut at every possible place; our writer's pings."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import PRO_KEY, base_config
from fakes import CHUNKINGS, chunked, fixture_bytes

from gateway.sse import Event, EventWriter, SSEDecoder, SSEError


def decode(pieces: list[bytes], **kw: int) -> list[Event]:
    decoder = SSEDecoder(**kw)
    events = [e for p in pieces for e in decoder.feed(p)]
    return events + decoder.close()


def test_lf_crlf_and_cr_endings_give_the_same_events() -> None:
    lf = b"event: a\ndata: 1\n\ndata: 2\ndata: 3\n\n"
    for variant in (lf, lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")):
        assert decode([variant]) == [Event(b"1", "a"), Event(b"2\n3", "")]


def test_comments_ids_retry_and_unknown_fields_are_ignored() -> None:
    payload = b": keep-alive\n\nid: 7\nretry: 10\nfoo: bar\ndata:x\n\n:ping\n\n"
    assert decode([payload]) == [Event(b"x")]


def test_one_leading_space_is_stripped_and_trailing_spaces_kept() -> None:
    assert decode([b'data:  {"a": 1}  \n\n']) == [Event(b' {"a": 1}  ')]


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    "fixture", ["gemini_stream_text_multi_chunk.sse", "anthropic_stream_tool_use.sse", "openai_chunks_refusal.sse"]
)
def test_any_cut_gives_the_same_events(fixture: str, how: str) -> None:
    payload = fixture_bytes(fixture)
    assert decode(chunked(payload, how)) == decode([payload])
    assert len(decode([payload])) > 1


def test_cr_at_the_end_of_a_read_waits_for_its_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\n") == [Event(b"a")]


def test_split_utf8_character() -> None:
    text = 'data: {"t": "caffè ☕"}\n\n'.encode()
    cut = text.index("☕".encode()) + 1
    assert decode([text[:cut], text[cut:]]) == [Event('{"t": "caffè ☕"}'.encode())]


def test_event_without_final_blank_line_is_flushed_at_close() -> None:
    assert decode([b"data: last"]) == [Event(b"last")]


def test_very_long_event_is_fine_and_a_cap_exists() -> None:
    big = b"data: " + b"x" * 500_000 + b"\n\n"
    assert decode(chunked(big, "coalesced"))[0].data == b"x" * 500_000
    with pytest.raises(SSEError):
        decode([big], max_event_bytes=100_000)


async def test_a_silent_stream_gets_pings_and_a_short_one_none(
    aiohttp_server: Any, start_gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long pause upstream (a model thinking) is bridged with `: ping` comments, which
    the SDK ignores; a stream that never pauses that long carries none."""
    monkeypatch.setattr(EventWriter, "PING_INTERVAL", 0.1)
    chunk = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[%s]}\n\n'
    first = chunk % b'{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}'
    last = chunk % b'{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}'

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(first)
        await asyncio.sleep(0.35 if (await request.json()).get("max_tokens") == 1 else 0)
        await resp.write(last + b"data: [DONE]\n\n")
        return resp

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", slow)
    server = await aiohttp_server(upstream, host="127.0.0.1")
    gw = await start_gateway(base_config({"oai": ("openai", str(server.make_url("/v1")))}, ":memory:"))
    body = {"model": "oai-small", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {PRO_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{gw.url}/chat/completions", json={**body, "max_tokens": 1}) as resp:
            slow_text = await resp.text()
        async with session.post(f"{gw.url}/chat/completions", json=body) as resp:
            quick_text = await resp.text()
    assert slow_text.count(": ping\n\n") >= 2
    assert slow_text.endswith("data: [DONE]\n\n") and '"content":"lo"' in slow_text
    assert ": ping" not in quick_text and quick_text.endswith("data: [DONE]\n\n")
    client = gw.client()
    stream = await client.chat.completions.create(
        model="oai-small", messages=body["messages"], stream=True, max_tokens=1
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Hello"
