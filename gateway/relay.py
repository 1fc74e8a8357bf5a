"""The upstream side of an attempt: one non-streamed call read whole (within its
cap), or one upstream stream piped to the client as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.appkeys import HTTP, METRICS, RECORD, REPLY, RUNTIME, STOPPING
from gateway.balancer import Target
from gateway.dialects.output import Output
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamError
from gateway.pipeline import log_upstream_failure
from gateway.providers.base import Chunk, Reply, StreamTranslator, UpstreamRequest, text_chars
from gateway.sse import Event, EventWriter, SSEDecoder, SSEError
from gateway.upstream import open_upstream, read_capped
from gateway.usage import CLIENT_CLOSED, UsageRecord

log = logging.getLogger(__name__)

Json = dict[str, Any]

_LAST_WORD = 0.5  # seconds a stream cut by shutdown may take to send its final event
DEPLOYMENT_HEADER = "x-gateway-deployment"  # which provider/upstream served the answer


def hub_attempt(
    request: web.Request, hub: Json, stream: bool, output: Output, reply: Callable[[], Reply]
) -> Callable[[Target], Awaitable[web.StreamResponse]]:
    """The attempt of every dialect that goes through the hub: the adapter's request
    for `hub`, the upstream call, the adapter's answer rendered by `output`."""

    async def attempt(target: Target) -> web.StreamResponse:
        adapter = target.adapter
        answer = request[REPLY] = reply()
        upstream = adapter.chat_request(hub, target.route, stream)
        if stream:
            translator = adapter.stream_translator(target.route, answer)
            return await relay_stream(request, target, upstream, translator, output)
        data = await call_upstream(request, target, upstream)
        completion = adapter.chat_response(data, target.route, answer)
        record = request[RECORD]
        record.add_usage(completion.get("usage"))
        if not record.total_tokens:  # no usage reported: the answer's text is what we can count
            choices = completion.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                message = choice.get("message") if isinstance(choice, dict) else None
                answer.relayed_chars += text_chars(message) if isinstance(message, dict) else 0
        body = output.render(completion)
        await output.settle()
        return json_response(body, headers={DEPLOYMENT_HEADER: target.label})

    return attempt


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


async def call_upstream(request: web.Request, target: Target, upstream: UpstreamRequest) -> bytes:
    """One non-streamed upstream call: the whole answer body (errors raised as mapped)."""
    started = time.monotonic()
    async with open_upstream(request.app[HTTP], target.adapter, upstream, stream=False) as (resp, _):
        request[RECORD].ttfb_ms = _ms_since(started)
        return await read_capped(resp, target.adapter.provider, request[RUNTIME].config.max_upstream_body_bytes)


async def relay_stream(
    request: web.Request, target: Target, upstream: UpstreamRequest, translator: StreamTranslator, output: Output
) -> web.StreamResponse:
    """Pipe one upstream stream to the client, chunk by chunk, as it arrives, in the
    client's dialect (`output`).

    Nothing is sent until the upstream's first bytes have been read and translated,
    so an upstream that fails at once (bad status, stall, error event) still gets a
    real status and may be retried elsewhere.  After that, a failure becomes the
    dialect's final error event."""
    record = request[RECORD]
    out = EventWriter(request, headers={DEPLOYMENT_HEADER: target.label}, ping=output.ping)
    started = time.monotonic()
    inflight, counted = request.app[METRICS].inflight_streams, False
    try:
        async with open_upstream(request.app[HTTP], target.adapter, upstream, stream=True) as (resp, first):
            decoder = SSEDecoder()
            pending, failure = _translate(decoder.feed(first), translator)
            if failure is not None:
                raise failure  # nothing sent yet: the client gets a real status
            await out.prepare()
            inflight.inc()
            counted = True
            record.ttfb_ms = _ms_since(started)
            await out.write(output.open() + output.chunks(pending))
            async for raw in resp.content.iter_any():
                await _forward(out, output, decoder.feed(raw), translator)
            await _forward(out, output, decoder.close(), translator)
            await out.write(output.chunks(translator.finish()))
            closing = output.close(translator.usage)
            await output.settle()
            await out.write(closing)
            record.status = 200
    except GatewayError as exc:
        if not out.prepared:
            raise  # _with_fallback logs it and may retry elsewhere
        exc.redact(target.route.provider.api_keys)
        log_upstream_failure(request, target, exc.status, exc.code or exc.type)
        await _send_error(out, output, record, exc)
    except SSEError as exc:  # only raised once the stream is under way
        log_upstream_failure(request, target, 502, "upstream_stream_undecodable")
        await _send_error(out, output, record, UpstreamError(f"The upstream stream could not be decoded: {exc}."))
    except ConnectionResetError:  # the client went away; leaving the block closed the upstream
        record.status, record.error_code = CLIENT_CLOSED, "client_closed"
        return out.response
    except asyncio.CancelledError:
        # a graceful stop ran out of time: the client is told, with a last event, before the cut
        if out.prepared and request.app[STOPPING].is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_LAST_WORD):
                    await _send_error(out, output, record, _shutting_down())
                    await out.close()  # a proper end of the body, not a cut connection
        raise
    except Exception:  # a bug of ours: once streaming, a 500 page would corrupt the HTTP stream
        if not out.prepared:
            raise
        log.exception("unexpected error while streaming %s", request.path)
        failure = GatewayError("The gateway hit an internal error while streaming; it has been logged.")
        await _send_error(out, output, record, failure)
    finally:
        out.stop_pings()
        record.add_usage(translator.usage)
        if counted:
            inflight.dec()
    await out.close()
    return out.response


def _translate(events: list[Event], translator: StreamTranslator) -> tuple[list[Chunk], GatewayError | None]:
    """The chunks for one upstream read, and the error that stopped it, if any."""
    chunks: list[Chunk] = []
    try:
        for event in events:
            chunks.extend(translator.feed(event))
    except GatewayError as exc:
        return chunks, exc
    return chunks, None


async def _forward(out: EventWriter, output: Output, events: list[Event], translator: StreamTranslator) -> None:
    """Send one read's chunks in one write; chunks before an upstream error still go out."""
    chunks, failure = _translate(events, translator)
    if chunks:
        await out.write(output.chunks(chunks))
    if failure is not None:
        raise failure


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway is shutting down and cut this answer short; retry the request.", code="server_shutting_down"
    )


async def _send_error(out: EventWriter, output: Output, record: UsageRecord, exc: GatewayError) -> None:
    record.status, record.error_code = exc.status, exc.code or exc.type
    try:
        await out.write(output.fail(exc))
    except ConnectionResetError:
        record.status, record.error_code = CLIENT_CLOSED, "client_closed"


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
