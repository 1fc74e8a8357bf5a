"""GET /metrics: Prometheus text, parsed with prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import openai
import pytest
from aiohttp.test_utils import make_mocked_request
from conftest import ENV, FREE_KEY, Gateway, base_config
from fakes import FakeUpstream, fixture_bytes, fixture_json, json_reply, sse_reply
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import hash_key
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.metrics import check_access

MESSAGES = [{"role": "user", "content": "Hello"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(http: aiohttp.ClientSession, gateway: Gateway, **headers: str) -> tuple[int, str]:
    async with http.get(str(gateway.server.make_url("/metrics")), headers=headers) as resp:
        return resp.status, await resp.text()


async def test_metrics_count_requests_tokens_errors_and_retries(
    gateway: Gateway, upstream: FakeUpstream, http: Any
) -> None:
    client = gateway.client()
    upstream.script(
        json_reply({"error": {"message": "boom"}}, 500), json_reply(fixture_json("openai_chat_completion_text.json"))
    )
    await client.chat.completions.create(model="oai-small", messages=MESSAGES)
    upstream.script(sse_reply(fixture_bytes("openai_chunks_text_usage.sse")))
    async for _ in await client.chat.completions.create(model="oai-small", messages=MESSAGES, stream=True):
        pass
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.client(FREE_KEY).chat.completions.create(model="oai-large", messages=MESSAGES)
    await gateway.usage_rows()  # the record is observed when the request ends; make sure both finished
    status, text = await scrape(http, gateway)
    assert status == 200
    got = samples(text)
    assert got[("gateway_requests_total", (("model", "oai-small"), ("provider", "oai"), ("status", "200")))] == 2
    assert got[("gateway_requests_total", (("model", "oai-large"), ("provider", "-"), ("status", "403")))] == 1
    usage = fixture_json("openai_chat_completion_text.json")["usage"]
    assert got[("gateway_tokens_total", (("direction", "in"), ("tier", "pro")))] == usage["prompt_tokens"] + 14
    assert got[("gateway_retries_total", (("model", "oai-small"),))] == 1
    assert got[("gateway_upstream_errors_total", (("provider", "oai"), ("status", "502")))] == 1
    assert got[("gateway_request_latency_seconds_count", (("model", "oai-small"),))] == 2
    assert got[("gateway_time_to_first_token_seconds_count", (("model", "oai-small"),))] == 2
    assert got[("gateway_inflight_streams", ())] == 0


async def test_limit_rejections_are_counted(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path, http: Any
) -> None:
    doc = base_config({"oai": ("openai", openai_upstream[1])}, str(tmp_path / "u.db"))
    doc["tiers"]["free"]["limits"] = {"rpm": 1}
    gw = await start_gateway(doc)
    openai_upstream[0].script(json_reply(fixture_json("openai_chat_completion_text.json")))
    client = gw.client(FREE_KEY)
    await client.chat.completions.create(model="oai-small", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="oai-small", messages=MESSAGES)
    await gw.usage_rows()
    _, text = await scrape(http, gw)
    assert samples(text)[("gateway_limit_rejections_total", (("reason", "rate_limit_exceeded"), ("tier", "free")))] == 1


async def test_admin_key_protects_metrics(start_gateway: Any, openai_upstream: Any, tmp_path: Path, http: Any) -> None:
    doc = base_config({"oai": ("openai", openai_upstream[1])}, str(tmp_path / "u.db"))
    doc["metrics"] = {"admin_key": "${METRICS_KEY}"}
    gw = await start_gateway(doc, {**ENV, "METRICS_KEY": "metrics-secret"})
    assert (await scrape(http, gw))[0] == 401
    assert (await scrape(http, gw, Authorization="Bearer wrong"))[0] == 401
    status, text = await scrape(http, gw, Authorization="Bearer metrics-secret")
    assert status == 200 and "gateway_inflight_streams" in text


def test_without_a_key_only_loopback_is_served() -> None:
    def request_from(address: str) -> Any:
        transport = mock.Mock()
        transport.get_extra_info.return_value = (address, 40000)
        return make_mocked_request("GET", "/metrics", transport=transport)

    check_access(request_from("127.0.0.1"), None)
    check_access(request_from("::1"), None)
    with pytest.raises(PermissionDenied):
        check_access(request_from("203.0.113.9"), None)
    with pytest.raises(AuthenticationFailed):
        check_access(request_from("127.0.0.1"), hash_key("k"))
