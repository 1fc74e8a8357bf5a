"""`responses: native`: an OpenAI-kind server that speaks the Responses API gets the
client's body byte for byte but for `model`, and its events come back as they were
sent; the gateway keeps a copy of each finished Response for GET / DELETE /
input_items and for the owner check of `previous_response_id`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from conftest import FREE_KEY, PRO_KEY, base_config
from fakes import fixture_bytes, fixture_json

STREAM = fixture_bytes("openai_responses_stream_text.sse")
ANSWER = fixture_json("openai_response_text.json")


class RawUpstream:
    """Records the exact bytes of each request and answers with the next script."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.append(raw)
        self.paths.append(request.path)
        if orjson.loads(raw).get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(STREAM)
            await resp.write_eof()
            return resp
        return web.json_response(ANSWER)


@pytest.fixture
async def native(aiohttp_server: Any, start_gateway: Any, tmp_path: Path) -> tuple[Any, RawUpstream]:
    fake = RawUpstream()
    app = web.Application()
    app.router.add_post("/responses", fake.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    doc = base_config({"oai": ("openai", str(server.make_url("")).rstrip("/"))}, str(tmp_path / "u.db"))
    doc["providers"]["oai"]["responses"] = "native"
    return await start_gateway(doc), fake


async def _post(gw: Any, raw: bytes, key: str = PRO_KEY) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.url}/responses",
            data=raw,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as resp:
            return resp.status, await resp.read()


async def test_the_body_goes_up_byte_for_byte_but_for_model(native: tuple[Any, RawUpstream]) -> None:
    gw, fake = native
    raw = b'{"model":  "oai-small", "input":[{"role":"user","content":"Ol\\u00e1"}], "metadata": {"k": "v"}}'
    status, body = await _post(gw, raw)
    assert status == 200, body
    assert fake.paths == ["/responses"]
    assert fake.bodies == [raw.replace(b'"oai-small"', b'"oai-small-2024"')]
    assert orjson.loads(body) == ANSWER  # the upstream's answer, untouched
    (row,) = await gw.usage_rows()
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        "/v1/responses", 14, 50, 64,
    )  # fmt: skip


async def test_events_are_relayed_as_the_upstream_sent_them(native: tuple[Any, RawUpstream]) -> None:
    gw, fake = native
    status, body = await _post(gw, b'{"model":"oai-small","input":"hi","stream":true}')
    assert status == 200
    assert body == STREAM
    for _ in range(100):
        rows = await gw.usage_rows()
        if rows:
            break
        await asyncio.sleep(0.01)
    assert rows[0]["stream"] == 1 and rows[0]["total_tokens"] > 0


async def test_the_sdk_streams_and_reads_the_copy(native: tuple[Any, RawUpstream]) -> None:
    gw, _ = native
    client = gw.client()
    async with client.responses.stream(model="oai-small", input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Olá!"
    copy = await client.responses.retrieve(final.id)
    assert copy.id == final.id and copy.output_text == "Olá!"
    with pytest.raises(openai.NotFoundError):
        await gw.client(FREE_KEY).responses.retrieve(final.id)  # another key name sees nothing


async def test_previous_response_id_passes_through_for_its_owner_only(native: tuple[Any, RawUpstream]) -> None:
    gw, fake = native
    first = await gw.client().responses.create(model="oai-small", input="hi")
    raw = orjson.dumps({"model": "oai-small", "input": "again", "previous_response_id": first.id})
    status, _ = await _post(gw, raw)
    assert status == 200
    assert orjson.loads(fake.bodies[-1])["previous_response_id"] == first.id  # the upstream resolves it
    sent = len(fake.bodies)
    status, body = await _post(gw, raw, FREE_KEY)  # a key of another name
    assert status == 400 and orjson.loads(body)["error"]["code"] == "previous_response_not_found"
    assert len(fake.bodies) == sent  # refused before any upstream call
