"""The HTTP endpoints: the one place that meets both `web.Request` and the adapters."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import ADAPTERS, CALLER, CONFIG, HTTP, RECORD
from gateway.errors import GatewayError, UpstreamError
from gateway.providers.base import Adapter, Reply, Route, StreamTranslator, UpstreamRequest
from gateway.routing import find_visible, resolve, visible_models
from gateway.sse import EventWriter, SSEDecoder, SSEError
from gateway.upstream import open_upstream
from gateway.usage import CLIENT_CLOSED, UsageRecord
from gateway.validation import check_chat, check_embeddings, include_usage, model_of, parse_body


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def list_models(request: web.Request) -> web.Response:
    models = visible_models(request.app[CONFIG], request[CALLER].tier)
    return json_response({"object": "list", "data": [_model_object(m) for m in models]})


async def get_model(request: web.Request) -> web.Response:
    model = find_visible(request.app[CONFIG], request[CALLER], request.match_info["model"])
    return json_response(_model_object(model))


def _model_object(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


async def _route(request: web.Request) -> tuple[Route, Adapter]:
    """Resolve the requested model for this caller, filling the usage record as we go."""
    record = request[RECORD]
    assert record.model is not None
    route = resolve(request.app[CONFIG], request[CALLER], record.model)
    record.provider, record.upstream_model = route.provider.name, route.model.upstream
    adapter = request.app[ADAPTERS].get(route.provider.name)
    if adapter is None:
        raise GatewayError(
            f"Provider kind '{route.provider.kind}' is not supported yet.", status=501, code="not_implemented"
        )
    if not route.provider.api_key:
        raise adapter.missing_key_error()
    return route, adapter


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(await request.read())
    record = request[RECORD]
    record.model = model_of(body)
    check_chat(body)
    route, adapter = await _route(request)
    stream = body.get("stream") is True
    record.stream = stream
    reply = Reply(model=route.model.id, created=int(time.time()), include_usage=stream and include_usage(body))
    upstream = adapter.chat_request(body, route, stream)
    if not stream:
        started = time.monotonic()
        async with open_upstream(request.app[HTTP], adapter, upstream, stream=False) as resp:
            record.ttfb_ms = _ms_since(started)
            data = await resp.read()
        completion = adapter.chat_response(data, route, reply)
        record.add_usage(completion.get("usage"))
        return json_response(completion)
    return await _stream_chat(request, adapter, upstream, adapter.stream_translator(route, reply), record)


async def _stream_chat(
    request: web.Request,
    adapter: Adapter,
    upstream: UpstreamRequest,
    translator: StreamTranslator,
    record: UsageRecord,
) -> web.StreamResponse:
    """Pipe one upstream stream to the client, chunk by chunk, as it arrives.

    Nothing is sent until the upstream has answered 2xx, so its errors keep their
    status.  After that, a failure becomes one final `data: {"error": ...}` event."""
    out = EventWriter(request)
    started = time.monotonic()
    try:
        async with open_upstream(request.app[HTTP], adapter, upstream, stream=True) as resp:
            decoder = SSEDecoder()
            await out.prepare()
            async for raw in resp.content.iter_any():
                for event in decoder.feed(raw):
                    for chunk in translator.feed(event):
                        await out.send(chunk)
                        if record.ttfb_ms is None:
                            record.ttfb_ms = _ms_since(started)
            for event in decoder.close():
                for chunk in translator.feed(event):
                    await out.send(chunk)
            for chunk in translator.finish():
                await out.send(chunk)
            await out.done()
            record.status = 200
    except GatewayError as exc:
        if not out.prepared:
            raise
        await _send_error(out, record, exc)
    except SSEError as exc:  # only raised once the stream is under way
        await _send_error(out, record, UpstreamError(f"The upstream stream could not be decoded: {exc}."))
    except ConnectionResetError:  # the client went away; leaving the block closed the upstream
        record.status, record.error_code = CLIENT_CLOSED, "client_closed"
        return out.response
    finally:
        record.add_usage(translator.usage)
    await out.close()
    return out.response


async def _send_error(out: EventWriter, record: UsageRecord, exc: GatewayError) -> None:
    record.status, record.error_code = exc.status, exc.code or exc.type
    try:
        await out.send(exc.body())
    except ConnectionResetError:
        record.status, record.error_code = CLIENT_CLOSED, "client_closed"


async def embeddings(request: web.Request) -> web.Response:
    body = parse_body(await request.read())
    request[RECORD].model = model_of(body)
    check_embeddings(body)
    route, adapter = await _route(request)
    upstream = adapter.embeddings_request(body, route)
    started = time.monotonic()
    async with open_upstream(request.app[HTTP], adapter, upstream, stream=False) as resp:
        request[RECORD].ttfb_ms = _ms_since(started)
        data = await resp.read()
    result = adapter.embeddings_response(data, body, route)
    request[RECORD].add_usage(result.get("usage"))
    return json_response(result)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
