"""Reliability: fallback across deployments and keys, cool-downs, timeouts, faults,
capacity limits, hot reload.  Each case checks what the client sees, which
deployment served it, and the usage row."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from conftest import ENV, PRO_KEY, Gateway, base_config
from fakes import FakeUpstream, Reply, fixture_bytes, fixture_json, json_reply, sse_reply

from gateway.appkeys import LIVE
from gateway.balancer import Balancer
from gateway.config import parse_config

MESSAGES = [{"role": "user", "content": "Hello"}]
TEXT = fixture_json("openai_chat_completion_text.json")
STREAM = fixture_bytes("openai_chunks_text_usage.sse")


def two_deployments(primary: str, backup: str, db: str, **routing: Any) -> dict[str, Any]:
    """Model `multi` on provider `main` (priority 0) with `spare` (priority 1) as fallback."""
    doc = base_config({"main": ("openai", primary), "spare": ("openai", backup)}, db)
    doc["models"].append(
        {
            "id": "multi",
            "deployments": [
                {"provider": "main", "upstream": "m-1"},
                {"provider": "spare", "upstream": "s-1", "priority": 1},
            ],
        }
    )
    doc["tiers"]["free"]["models"].append("multi")
    doc["routing"] = {"backoff": 0.01, **routing}
    return doc


@pytest.fixture
async def pair(fake_server: Any, start_gateway: Any, tmp_path: Path) -> tuple[Gateway, FakeUpstream, FakeUpstream]:
    (main, main_url), (spare, spare_url) = await fake_server(), await fake_server()
    gw = await start_gateway(two_deployments(main_url, spare_url, str(tmp_path / "u.db")))
    return gw, main, spare


async def test_falls_back_to_the_next_deployment_on_5xx(pair: Any) -> None:
    gw, main, spare = pair
    main.script(json_reply({"error": {"message": "boom"}}, 500))
    spare.script(json_reply(TEXT))
    raw = await gw.client().chat.completions.with_raw_response.create(model="multi", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "spare/s-1"
    assert raw.parse().model == "multi"
    assert spare.last.json["model"] == "s-1"
    row = (await gw.usage_rows())[-1]
    assert (row["status"], row["provider"], row["upstream_model"]) == (200, "spare", "s-1")
    assert row["attempts"] == "main/m-1=502 spare/s-1=200"


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_never_falls_back_on_other_4xx(pair: Any, status: int) -> None:
    gw, main, spare = pair
    main.script(json_reply({"error": {"message": "no", "type": "invalid_request_error"}}, status))
    with pytest.raises(openai.APIStatusError):
        await gw.client().chat.completions.create(model="multi", messages=MESSAGES)
    assert spare.requests == []


async def test_never_retries_once_a_byte_reached_the_client(pair: Any) -> None:
    gw, main, spare = pair
    main.script(sse_reply(STREAM[: len(STREAM) // 2], "bytes", cut=True))
    stream = await gw.client().chat.completions.create(model="multi", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert spare.requests == []
    assert (await gw.usage_rows())[-1]["attempts"] == "main/m-1=502"


async def test_a_bug_mid_stream_ends_it_with_an_error_event_not_a_broken_response(
    pair: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception after the headers went out cannot become a 500 page (it
    would land inside the chunked body); the stream ends with an error event instead."""
    from gateway.providers import openai as openai_adapter

    feed, calls = openai_adapter._OpenAIStream.feed, [0]

    def failing_feed(self: Any, event: Any) -> Any:
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("a bug")
        return feed(self, event)

    monkeypatch.setattr(openai_adapter._OpenAIStream, "feed", failing_feed)
    gw, main, spare = pair
    main.script(sse_reply(STREAM, "bytes"))  # many reads: the bug strikes after the first went out
    stream = await gw.client().chat.completions.create(model="multi", messages=MESSAGES, stream=True)
    got: list[Any] = []
    with pytest.raises(openai.APIError, match="internal error while streaming"):
        async for chunk in stream:
            got.append(chunk)
    assert got and got[0].choices[0].delta.role == "assistant"
    assert spare.requests == []
    row = (await gw.usage_rows())[-1]
    assert (row["status"], row["error_code"]) == (500, "server_error")
    assert "unexpected error while streaming" in caplog.text


async def test_stream_falls_back_when_the_first_upstream_refuses(pair: Any) -> None:
    gw, main, spare = pair
    main.script(json_reply({"error": {"message": "overloaded"}}, 503))
    spare.script(sse_reply(STREAM))
    raw = await gw.client().chat.completions.with_raw_response.create(model="multi", messages=MESSAGES, stream=True)
    assert raw.headers["x-gateway-deployment"] == "spare/s-1"
    chunks = [c async for c in raw.parse()]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_failing_deployment_cools_down_then_recovers(pair: Any) -> None:
    gw, main, spare = pair
    now = [1000.0]
    balancer = gw.app[LIVE].current.balancer
    balancer.clock = lambda: now[0]
    for _ in range(3):  # failures_before_cooldown = 3
        main.script(json_reply({"error": {"message": "boom"}}, 502))
        spare.script(json_reply(TEXT))
        await gw.client().chat.completions.create(model="multi", messages=MESSAGES)
    assert len(main.requests) == 3
    spare.script(json_reply(TEXT))
    await gw.client().chat.completions.create(model="multi", messages=MESSAGES)
    assert len(main.requests) == 3, "cooled down: not even tried"
    now[0] += 31  # the 30 s cool-down is over
    main.script(json_reply(TEXT))
    raw = await gw.client().chat.completions.with_raw_response.create(model="multi", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "main/m-1" and len(main.requests) == 4


async def test_retry_after_is_honoured_on_the_same_deployment(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply({"error": {"message": "slow down"}}, 429, {"Retry-After": "0.2"}), json_reply(TEXT))
    loop = asyncio.get_running_loop()
    started = loop.time()
    completion = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert loop.time() - started >= 0.2
    assert (await gateway.usage_rows())[-1]["attempts"] == "oai/oai-small-2024=429 oai/oai-small-2024=200"


async def test_500_then_success(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply({"error": {"message": "oops"}}, 500), json_reply(TEXT))
    completion = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES)
    assert completion.model == "oai-small" and len(upstream.requests) == 2


async def test_key_rotation_on_429(fake_server: Any, start_gateway: Any, tmp_path: Path) -> None:
    def limit_first_key(path: str, headers: dict[str, str], body: Any) -> Reply | None:
        if headers.get("Authorization") == "Bearer key-one":
            return json_reply({"error": {"message": "rate limited", "type": "requests"}}, 429, {"Retry-After": "30"})
        return None

    fake, url = await fake_server(limit_first_key)
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["providers"]["oai"] = {"kind": "openai", "base_url": url, "api_keys": ["${K1}", "${K2}"]}
    gw = await start_gateway(doc, {**ENV, "K1": "key-one", "K2": "key-two"})
    gw.app[LIVE].current.balancer.plan = _fixed_order(gw.app[LIVE].current.balancer)
    fake.script(json_reply(TEXT))
    raw = await gw.client().chat.completions.with_raw_response.create(model="oai-small", messages=MESSAGES)
    assert raw.headers["x-gateway-deployment"] == "oai/oai-small-2024#1"  # labels name the key's index, never the key
    assert [r.headers["Authorization"] for r in fake.requests] == ["Bearer key-one", "Bearer key-two"]


def _fixed_order(balancer: Balancer) -> Any:
    original = balancer.plan

    def plan(model_id: str) -> Any:
        return sorted(original(model_id), key=lambda t: t.label)

    return plan


def test_weights_spread_traffic() -> None:
    doc = base_config({"a": ("openai", "http://127.0.0.1:1"), "b": ("openai", "http://127.0.0.1:2")}, ":memory:")
    doc["models"].append({"id": "w", "deployments": [{"provider": "a", "weight": 3}, {"provider": "b", "weight": 1}]})
    balancer = Balancer(parse_config(doc, ENV))
    random.seed(7)
    firsts = [balancer.plan("w")[0].route.provider.name for _ in range(2000)]
    share = firsts.count("a") / len(firsts)
    assert 0.68 < share < 0.82, share  # 3:1 -> 75 %
    assert all(len(balancer.plan("w")) == 2 for _ in range(10))  # the other deployment stays as fallback


# -- faults ------------------------------------------------------------------------------


async def test_accepts_and_never_answers_is_504(fake_server: Any, start_gateway: Any, tmp_path: Path) -> None:
    fake, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["providers"]["oai"]["timeouts"] = {"first_byte": 0.2}
    doc["routing"] = {"attempts": 1}
    gw = await start_gateway(doc)
    fake.script(Reply(json={}, delay=10))
    with pytest.raises(openai.InternalServerError) as exc:
        await gw.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    assert exc.value.status_code == 504
    assert (await gw.usage_rows())[-1]["status"] == 504


async def test_headers_then_stall_is_504_before_any_byte(fake_server: Any, start_gateway: Any, tmp_path: Path) -> None:
    fake, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["providers"]["oai"]["timeouts"] = {"first_byte": 0.2}
    doc["routing"] = {"attempts": 2, "backoff": 0.01}
    gw = await start_gateway(doc)
    fake.script(sse_reply(b"", stall=True), sse_reply(STREAM))  # the retry succeeds
    stream = await gw.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    assert [c async for c in stream][-1].choices[0].finish_reason == "stop"
    assert (await gw.usage_rows())[-1]["attempts"] == "oai/oai-small-2024=504 oai/oai-small-2024=200"


async def test_stall_mid_stream_hits_the_idle_timeout(fake_server: Any, start_gateway: Any, tmp_path: Path) -> None:
    fake, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["providers"]["oai"]["timeouts"] = {"read": 0.3}
    gw = await start_gateway(doc)
    fake.script(sse_reply(STREAM[: len(STREAM) // 2].rsplit(b"\n\n", 1)[0] + b"\n\n", stall=True))
    stream = await gw.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert got and "in time" in exc.value.message
    assert (await gw.usage_rows())[-1]["status"] == 504


async def test_slow_trickle_is_not_cut(gateway: Gateway, upstream: FakeUpstream) -> None:
    events = [e + b"\n\n" for e in STREAM.split(b"\n\n") if e]
    upstream.script(sse_reply(b"".join(events[:6]), "bytes"))  # one byte per write: a slow, live stream
    upstream.replies[0].body += b"".join(events[6:])
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    assert [c async for c in stream][-1].choices[0].finish_reason == "stop"


async def test_invalid_json_body_is_502(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(*[Reply(body=b"<html>oops</html>", content_type="application/json")] * 3)
    with pytest.raises(openai.InternalServerError) as exc:
        await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES)
    assert exc.value.status_code == 502 and "invalid JSON" in exc.value.message


async def test_invalid_sse_mid_stream_is_a_final_error_event(gateway: Gateway, upstream: FakeUpstream) -> None:
    first = STREAM.split(b"\n\n")[0] + b"\n\n"
    upstream.script(sse_reply(first + b"data: {not json\n\n", "bytes"))
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as exc:
        async for _ in stream:
            pass
    assert "invalid JSON" in exc.value.message


async def test_concurrency_limit_queues_then_503(fake_server: Any, start_gateway: Any, tmp_path: Path) -> None:
    fake, url = await fake_server()
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["providers"]["oai"].update(max_concurrency=1, queue_timeout=0.2)
    doc["routing"] = {"attempts": 1}
    gw = await start_gateway(doc)
    fake.script(Reply(json=TEXT, delay=0.6), Reply(json=TEXT))
    client = gw.client()
    slow = asyncio.create_task(client.chat.completions.create(model="oai-small", messages=MESSAGES))
    await asyncio.sleep(0.1)
    with pytest.raises(openai.InternalServerError) as exc:
        await client.chat.completions.create(model="oai-small", messages=MESSAGES)
    assert exc.value.status_code == 503 and exc.value.response.headers["retry-after"] == "1"
    assert (await slow).choices[0].message.content  # the first one was not disturbed
    assert len(fake.requests) == 1
    await client.chat.completions.create(model="oai-small", messages=MESSAGES)  # a slot is free again


# -- reload ------------------------------------------------------------------------------


async def test_reload_applies_a_valid_file_and_rejects_an_invalid_one(
    openai_upstream: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from gateway.app import create_app
    from gateway.config import load_config

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    fake, url = openai_upstream
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    app = create_app(load_config(path), str(path))
    server = await aiohttp_server(app)
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=PRO_KEY, max_retries=0)
    try:
        assert len((await client.models.list()).data) == 2

        # a request in flight keeps the configuration it started with
        fake.script(sse_reply(STREAM, "bytes"))
        stream = await client.chat.completions.create(model="oai-large", messages=MESSAGES, stream=True)
        doc["tiers"]["pro"]["models"] = []
        path.write_text(yaml.safe_dump(doc))
        assert app[LIVE].reload() is True
        assert [c.id for c in (await client.models.list()).data] == ["oai-small"]
        assert [c async for c in stream][-1].choices[0].finish_reason == "stop"
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="oai-large", messages=MESSAGES)

        path.write_text("tiers: {pro: {extends: pro}}\n")  # invalid: the old config keeps serving
        assert app[LIVE].reload() is False
        assert [c.id for c in (await client.models.list()).data] == ["oai-small"]
    finally:
        await client.close()
