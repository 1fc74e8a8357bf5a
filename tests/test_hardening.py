"""Issue 11's attacks on the request path, kept as tests: a hang-up that would skip the
bill, upstream keys echoed in any error field, model names that would grow the metrics
without bound, an inflating upstream body, statuses recorded as sent, upstream failures
in the log, a permanent 503 the SDKs must not retry, and one rule for a model outside
the tier."""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from conftest import ENV, FREE_KEY, PRO_KEY, UPSTREAM_KEY, Gateway, base_config
from fakes import FakeUpstream, Reply, json_reply, sse_reply
from test_metrics import samples, scrape

from gateway.limits import estimate_chat_tokens

WORDS = 500
PROMPT = [{"role": "user", "content": "Write five hundred words."}]


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    data = {
        "id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }  # fmt: skip
    if usage is not None:
        data = {**data, "choices": [], "usage": usage}
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _paced_upstream(aiohttp_server: Any, parts: list[bytes], pause: float) -> str:
    """An OpenAI-kind upstream whose stream comes in `parts`, `pause` seconds apart
    (each part reaches the gateway as its own read)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, part in enumerate(parts):
                if i:
                    await asyncio.sleep(pause)
                await resp.write(part)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    app = web.Application()
    app.router.add_post("/chat/completions", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


def _answer_then_usage() -> list[bytes]:
    """The whole answer and its finish_reason; the usage chunk comes later."""
    answer = _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "word "}) * WORDS + _chunk({}, "stop")
    usage = {"prompt_tokens": 9, "completion_tokens": 500, "total_tokens": 509}
    return [answer, _chunk({}, usage=usage) + b"data: [DONE]\n\n"]


async def _rows(gw: Gateway, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        rows = await gw.usage_rows()
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} rows, got {await gw.usage_rows()}")


async def test_hanging_up_before_the_usage_chunk_is_charged_an_estimate(
    start_gateway: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await _paced_upstream(aiohttp_server, _answer_then_usage(), 1.5)
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"))
    doc["tiers"]["free"]["limits"] = {"tokens_per_month": 2000}
    gw = await start_gateway(doc)
    body = {"model": "oai-small", "messages": PROMPT, "stream": True}
    words, refused = 0, None
    async with aiohttp.ClientSession() as http:
        for attempt in range(10):
            resp = await http.post(
                f"{gw.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {FREE_KEY}"}
            )
            if resp.status != 200:
                refused = (attempt, resp.status, await resp.json())
                break
            seen = b""
            while b'"finish_reason":"stop"' not in seen:
                seen += await resp.content.readany()
            words += seen.count(b"word ")
            resp.close()  # hang up before the usage chunk
            await _rows(gw, attempt + 1)
    assert refused is not None, "ten hung-up streams went through a 2,000-token quota"
    attempt, status, answer = refused
    assert status == 429 and answer["error"]["code"] == "insufficient_quota"
    rows = await gw.usage_rows()
    charged = [r for r in rows if r["status"] == 499]
    assert len(charged) == attempt
    expected = estimate_chat_tokens(body) + math.ceil(WORDS * len("word ") / 4)
    for row in charged:
        assert row["tokens_estimated"] == 1
        assert row["completion_tokens"] == math.ceil(WORDS * len("word ") / 4)
        assert row["total_tokens"] == expected
    assert words == attempt * WORDS  # every word delivered was paid for
    assert sum(r["total_tokens"] for r in charged) <= 2000 + expected


async def test_an_upstream_that_never_reports_usage_is_charged_an_estimate(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    answer = {
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a" * 400}, "finish_reason": "stop"}],
    }  # fmt: skip
    upstream.script(
        json_reply(answer), sse_reply(_chunk({"content": "b" * 80}) + _chunk({}, "stop") + b"data: [DONE]\n\n")
    )
    client = gateway.client()
    await client.chat.completions.create(model="oai-small", messages=PROMPT)
    stream = await client.chat.completions.create(model="oai-small", messages=PROMPT, stream=True)
    async for _ in stream:
        pass
    rows = await _rows(gateway, 2)
    prompt = estimate_chat_tokens({"messages": PROMPT})
    assert [(r["prompt_tokens"], r["completion_tokens"], r["tokens_estimated"]) for r in rows] == [
        (prompt, 100, 1),
        (prompt, 20, 1),
    ]


async def test_reported_usage_is_not_marked_estimated(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(
        sse_reply(
            _chunk({"content": "hi"})
            + _chunk({}, "stop")
            + _chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})
            + b"data: [DONE]\n\n"
        )
    )
    stream = await gateway.client().chat.completions.create(model="oai-small", messages=PROMPT, stream=True)
    async for _ in stream:
        pass
    (row,) = await _rows(gateway, 1)
    assert (row["total_tokens"], row["tokens_estimated"]) == (6, 0)


async def test_an_upstream_refusal_is_not_charged(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.script(json_reply({"error": {"message": "bad", "type": "invalid_request_error"}}, status=400))
    with pytest.raises(openai.BadRequestError):
        await gateway.client().chat.completions.create(model="oai-small", messages=PROMPT)
    (row,) = await _rows(gateway, 1)
    assert (row["total_tokens"], row["tokens_estimated"]) == (0, 0)


# -- secrets in upstream errors ----------------------------------------------------------


def _echoing_error(key: str) -> dict[str, Any]:
    return {"error": {"message": f"m {key}", "type": f"t {key}", "param": f"p {key}", "code": f"c {key}"}}


@pytest.mark.parametrize("status", [400, 404, 422, 429, 500])
async def test_an_upstream_key_echoed_in_any_error_field_is_scrubbed(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path, status: int
) -> None:
    fake, url = openai_upstream
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"), routing={"attempts": 1})
    keys = [UPSTREAM_KEY, "sk-upstream-second-key-0987"]
    doc["providers"]["oai"].pop("api_key")
    doc["providers"]["oai"]["api_keys"] = ["${UPSTREAM_KEY}", "${SECOND}"]
    gw = await start_gateway(doc, {**ENV, "SECOND": keys[1]})
    async with aiohttp.ClientSession() as http:
        for key in keys * 2:  # the keys take turns: each echoes itself
            fake.script(json_reply(_echoing_error(key), status=status))
            body = {"model": "oai-small", "messages": PROMPT}
            async with http.post(
                f"{gw.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {PRO_KEY}"}
            ) as resp:
                text = await resp.text()
            assert resp.status >= 400
            assert not any(k in text for k in keys), text
            error = orjson.loads(text)["error"]
            assert "[redacted]" in error["message"]  # scrubbed, not dropped
    rows = await gw.usage_rows()
    assert not any(k in str(row) for row in rows for k in keys)


async def test_an_upstream_key_echoed_mid_stream_is_scrubbed(
    start_gateway: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    error = b"data: " + orjson.dumps(_echoing_error(UPSTREAM_KEY)) + b"\n\n"
    url = await _paced_upstream(aiohttp_server, [_chunk({"content": "hi"}), error], 0.2)
    gw = await start_gateway(base_config({"oai": ("openai", url)}, str(tmp_path / "u.db")))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.url}/chat/completions",
            json={"model": "oai-small", "messages": PROMPT, "stream": True},
            headers={"Authorization": f"Bearer {PRO_KEY}"},
        ) as resp:
            text = await resp.text()
    assert resp.status == 200 and '"error"' in text
    assert UPSTREAM_KEY not in text and "[redacted]" in text


# -- bounded metrics and rows ------------------------------------------------------------


async def test_client_model_names_never_become_metric_labels(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.client()
    names = [f"no-such-model-{i}-" + "x" * 2000 for i in range(50)]
    for name in names:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model=name, messages=PROMPT)
    async with aiohttp.ClientSession() as http:
        status, text = await scrape(http, gateway)
    assert status == 200 and "no-such-model" not in text
    parsed = samples(text)
    assert parsed[("gateway_requests_total", (("model", "(other)"), ("provider", "-"), ("status", "404")))] == 50
    rows = await _rows(gateway, 50)
    assert max(len(r["model"]) for r in rows) <= 256


async def test_metrics_show_the_usage_log(gateway: Gateway, upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as http:
        status, text = await scrape(http, gateway)
    parsed = samples(text)
    assert parsed[("gateway_usage_log_queue_depth", ())] == 0
    assert ("gateway_usage_log_rows_dropped_total", ()) in parsed
    assert ("gateway_usage_log_write_failures_total", ()) in parsed


# -- an upstream body that inflates --------------------------------------------------------


async def test_an_inflating_upstream_body_is_refused(start_gateway: Any, openai_upstream: Any, tmp_path: Path) -> None:
    fake, url = openai_upstream
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"), routing={"attempts": 1})
    doc["server"] = {"max_upstream_body_bytes": 1_000_000}
    gw = await start_gateway(doc)
    bomb = gzip.compress(b'{"choices": [], "padding": "' + b" " * 20_000_000 + b'"}')
    assert len(bomb) < 100_000
    fake.script(Reply(body=bomb, headers={"Content-Encoding": "gzip"}))
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client().chat.completions.create(model="oai-small", messages=PROMPT)
    assert caught.value.status_code == 502
    assert "max_upstream_body_bytes" in caught.value.message
    assert caught.value.body["code"] == "upstream_body_too_large"  # type: ignore[index]


# -- statuses as sent; failures in the log ---------------------------------------------------


async def test_a_413_is_recorded_as_413(start_gateway: Any, openai_upstream: Any, tmp_path: Path) -> None:
    _, url = openai_upstream
    gw = await start_gateway(
        base_config({"oai": ("openai", url)}, str(tmp_path / "u.db"), server={"max_body_bytes": 1000})
    )
    body = {"model": "oai-small", "messages": [{"role": "user", "content": "x" * 5000}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {PRO_KEY}"}
        ) as resp:
            assert resp.status == 413
        status, text = await scrape(http, gw)
    (row,) = await _rows(gw, 1)
    assert (row["status"], row["error_code"]) == (413, "request_too_large")
    assert 'status="413"' in text and 'status="500"' not in text


async def test_upstream_failures_are_logged_once_each(
    gateway: Gateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.script(*[json_reply({"error": {"message": "down"}}, status=500)] * 3)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        with pytest.raises(openai.InternalServerError):
            await gateway.client().chat.completions.create(model="oai-small", messages=PROMPT)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upstream failure")]
    assert len(lines) == 3
    for line in lines:
        assert "provider=oai" in line and "deployment=oai/oai-small-2024" in line and "status=502" in line
        assert "request_id=" in line and "request_id=None" not in line
        assert "Write five hundred" not in line


async def test_a_stream_cut_mid_answer_is_logged(
    gateway: Gateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.script(sse_reply(_chunk({"content": "hi"}), cut=True))
    with caplog.at_level(logging.WARNING, logger="gateway"):
        stream = await gateway.client().chat.completions.create(model="oai-small", messages=PROMPT, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upstream failure")]
    assert len(lines) == 1 and "cause=upstream_stream_truncated" in lines[0]


async def test_connection_refused_is_logged(
    start_gateway: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(
        base_config({"oai": ("openai", "http://127.0.0.1:9")}, str(tmp_path / "u.db"), routing={"attempts": 1})
    )
    with caplog.at_level(logging.WARNING, logger="gateway"):
        with pytest.raises(openai.APIStatusError):
            await gw.client().chat.completions.create(model="oai-small", messages=PROMPT)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upstream failure")]
    assert len(lines) == 1 and "cause=upstream_unreachable" in lines[0]


# -- a provider without its key ------------------------------------------------------------


async def test_unconfigured_provider_is_final_and_names_no_variable(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = openai_upstream
    env = {k: v for k, v in ENV.items() if k != "UPSTREAM_KEY"}
    gw = await start_gateway(base_config({"oai": ("openai", url)}, str(tmp_path / "u.db")), env)
    client = openai.AsyncOpenAI(base_url=gw.url, api_key=PRO_KEY)  # the SDK's default retries
    gw.clients.append(client)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="oai-small", messages=PROMPT)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "UPSTREAM_KEY" not in caught.value.message
    assert len(await _rows(gw, 1)) == 1  # one call, one row: the SDK did not retry
    assert any("UPSTREAM_KEY" in r.getMessage() for r in caplog.records)


# -- one rule for a model outside the tier -----------------------------------------------------


async def test_a_model_outside_the_tier_answers_alike_everywhere(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.client(FREE_KEY)
    with pytest.raises(openai.PermissionDeniedError) as on_call:
        await client.chat.completions.create(model="oai-large", messages=PROMPT)
    with pytest.raises(openai.PermissionDeniedError) as on_get:
        await client.models.retrieve("oai-large")
    assert on_call.value.message == on_get.value.message
    assert "tier 'free'" in on_get.value.message
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
    assert [m.id async for m in client.models.list()] == ["oai-small"]
