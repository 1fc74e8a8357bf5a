"""A client that hangs up closes the upstream call at once, and its row is still written."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from conftest import PRO_KEY, Gateway
from fakes import FakeUpstream, Reply, fixture_bytes, sse_reply

BODY = {"model": "oai-small", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _rows_when(gateway: Gateway, status: int) -> list[dict[str, Any]]:
    for _ in range(100):
        rows = await gateway.usage_rows()
        if rows and rows[-1]["status"] == status:
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError(f"no row with status {status}: {await gateway.usage_rows()}")


async def test_disconnect_mid_stream_closes_upstream(gateway: Gateway, upstream: FakeUpstream) -> None:
    first_events = b"\n\n".join(fixture_bytes("openai_chunks_text_usage.sse").split(b"\n\n")[:3]) + b"\n\n"
    upstream.script(sse_reply(first_events, stall=True))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{gateway.url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {PRO_KEY}"}
        )
        assert resp.status == 200
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: {")
        resp.close()  # hang up mid-stream
    await asyncio.wait_for(upstream.disconnected.wait(), 5)  # the gateway closed its upstream call
    rows = await _rows_when(gateway, 499)
    assert rows[-1]["error_code"] == "client_closed" and rows[-1]["stream"] == 1


async def test_disconnect_while_waiting_for_upstream(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(Reply(json={}, delay=30))
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(
            session.post(
                f"{gateway.url}/chat/completions",
                json={**BODY, "stream": False},
                headers={"Authorization": f"Bearer {PRO_KEY}"},
            )  # fmt: skip
        )
        for _ in range(100):
            if upstream.requests:
                break
            await asyncio.sleep(0.01)
        task.cancel()
    rows = await _rows_when(gateway, 499)
    assert rows[-1]["stream"] == 0
