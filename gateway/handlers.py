"""The HTTP endpoints: the one place that meets both `web.Request` and the adapters."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway import limits
from gateway.appkeys import CALLER, HTTP, LIMITER, LIVE, METRICS, RATE_HEADERS, RECORD, RUNTIME
from gateway.balancer import Target
from gateway.config import Limits
from gateway.errors import GatewayError, RateLimited, UpstreamError
from gateway.metrics import CONTENT_TYPE, check_access
from gateway.providers.base import Chunk, Reply, StreamTranslator, UpstreamRequest
from gateway.routing import find_visible, resolve, visible_models
from gateway.sse import Event, EventWriter, SSEDecoder, SSEError
from gateway.upstream import open_upstream
from gateway.usage import CLIENT_CLOSED, UsageRecord
from gateway.validation import check_chat, check_embeddings, include_usage, model_of, parse_body

log = logging.getLogger(__name__)

DEPLOYMENT_HEADER = "x-gateway-deployment"  # which provider/upstream served the answer


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    check_access(request, request.app[LIVE].current.config.metrics_key_sha256)
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE})


async def list_models(request: web.Request) -> web.Response:
    models = visible_models(request[RUNTIME].config, request[CALLER].tier)
    return json_response({"object": "list", "data": [_model_object(m) for m in models]})


async def get_model(request: web.Request) -> web.Response:
    model = find_visible(request[RUNTIME].config, request[CALLER], request.match_info["model"])
    return json_response(_model_object(model))


def _model_object(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


# -- chat --------------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse_body(await request.read())
    record = request[RECORD]
    record.model = model_of(body)
    check_chat(body)
    stream = record.stream = body.get("stream") is True
    created = int(time.time())
    wants_usage = stream and include_usage(body)

    async def attempt(target: Target) -> web.StreamResponse:
        reply = Reply(model=record.model or "", created=created, include_usage=wants_usage)
        upstream = target.adapter.chat_request(body, target.route, stream)
        if stream:
            return await _stream_chat(request, target, upstream, target.adapter.stream_translator(target.route, reply))
        data = await _call(request, target, upstream)
        completion = target.adapter.chat_response(data, target.route, reply)
        record.add_usage(completion.get("usage"))
        return json_response(completion, headers={DEPLOYMENT_HEADER: target.label})

    return await _with_fallback(request, attempt, lambda: limits.estimate_chat_tokens(body))


async def _call(request: web.Request, target: Target, upstream: UpstreamRequest) -> bytes:
    """One non-streamed upstream call: the whole answer body (errors raised as mapped)."""
    started = time.monotonic()
    async with open_upstream(request.app[HTTP], target.adapter, upstream, stream=False) as (resp, _):
        request[RECORD].ttfb_ms = _ms_since(started)
        return await resp.read()


async def _stream_chat(
    request: web.Request, target: Target, upstream: UpstreamRequest, translator: StreamTranslator
) -> web.StreamResponse:
    """Pipe one upstream stream to the client, chunk by chunk, as it arrives.

    Nothing is sent until the upstream's first bytes have been read and translated,
    so an upstream that fails at once (bad status, stall, error event) still gets a
    real status and may be retried elsewhere.  After that, a failure becomes one
    final `data: {"error": ...}` event."""
    record = request[RECORD]
    out = EventWriter(request, headers={DEPLOYMENT_HEADER: target.label})
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
            await out.send_many(pending)
            async for raw in resp.content.iter_any():
                await _forward(out, decoder.feed(raw), translator)
            await _forward(out, decoder.close(), translator)
            await out.send_many(translator.finish())
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
    except Exception:  # a bug of ours: once streaming, a 500 page would corrupt the HTTP stream
        if not out.prepared:
            raise
        log.exception("unexpected error while streaming %s", request.path)
        failure = GatewayError("The gateway hit an internal error while streaming; it has been logged.")
        await _send_error(out, record, failure)
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


async def _forward(out: EventWriter, events: list[Event], translator: StreamTranslator) -> None:
    """Send one read's chunks in one write; chunks before an upstream error still go out."""
    chunks, failure = _translate(events, translator)
    await out.send_many(chunks)
    if failure is not None:
        raise failure


async def _send_error(out: EventWriter, record: UsageRecord, exc: GatewayError) -> None:
    record.status, record.error_code = exc.status, exc.code or exc.type
    try:
        await out.send(exc.body())
    except ConnectionResetError:
        record.status, record.error_code = CLIENT_CLOSED, "client_closed"


# -- embeddings --------------------------------------------------------------------------


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = parse_body(await request.read())
    record = request[RECORD]
    record.model = model_of(body)
    check_embeddings(body)

    async def attempt(target: Target) -> web.StreamResponse:
        data = await _call(request, target, target.adapter.embeddings_request(body, target.route))
        result = target.adapter.embeddings_response(data, body, target.route)
        record.add_usage(result.get("usage"))
        return json_response(result, headers={DEPLOYMENT_HEADER: target.label})

    return await _with_fallback(request, attempt, lambda: limits.estimate_embedding_tokens(body))


# -- retries and fallback ----------------------------------------------------------------


async def _with_fallback(
    request: web.Request,
    attempt: Callable[[Target], Awaitable[web.StreamResponse]],
    estimate: Callable[[], int],
) -> web.StreamResponse:
    """Run `attempt` on the model's targets in plan order until one answers.

    Only `retryable` failures move on (connection errors, timeouts before the first
    byte, 429, 5xx, overload), and never once the client has received a byte: a
    streaming attempt turns its own late failures into a final error event."""
    runtime, record = request[RUNTIME], request[RECORD]
    model = resolve(runtime.config, request[CALLER], record.model or "")  # 404 / 403
    admission = await _admit(request, estimate)  # 429 before any upstream call
    plan = runtime.balancer.plan(model.id)
    routing = runtime.config.routing
    tried: list[str] = []
    try:
        for i in range(routing.attempts):
            target = plan[i % len(plan)]
            record.provider, record.upstream_model = target.route.provider.name, target.route.model.upstream
            try:
                if target.adapter is None:
                    raise GatewayError(
                        f"Provider kind '{target.route.provider.kind}' is not supported.", status=501,
                        code="not_implemented",
                    )  # fmt: skip
                if not target.route.provider.api_key:
                    raise target.adapter.missing_key_error()
                async with runtime.balancer.slot(target):
                    response = await attempt(target)
            except GatewayError as exc:
                tried.append(f"{target.label}={exc.status}")
                nxt = plan[(i + 1) % len(plan)]
                unconfigured = exc.code == "provider_not_configured"  # try another deployment, if any
                if exc.retryable:
                    runtime.balancer.failed(target, _retry_after(exc))
                delay = _retry_delay(exc, i, target, nxt, routing.backoff)
                may_retry = exc.retryable or (unconfigured and nxt.label != target.label)
                if not may_retry or i + 1 >= routing.attempts or delay > routing.max_retry_after:
                    raise
                await asyncio.sleep(delay)
                continue
            failed_late = record.status >= 500 and record.status != CLIENT_CLOSED
            tried.append(f"{target.label}={record.status or response.status}")
            if failed_late:
                runtime.balancer.failed(target)
            else:
                runtime.balancer.succeeded(target)
            return response
        raise AssertionError("routing.attempts is at least 1")
    finally:
        record.attempts = " ".join(tried) or None
        if admission is not None:  # the real usage replaces the estimate; the slot frees
            await request.app[LIMITER].release(admission, record.total_tokens)


# -- tier limits -------------------------------------------------------------------------

_NO_LIMITS = Limits()


async def _admit(request: web.Request, estimate: Callable[[], int]) -> limits.Admission | None:
    """Count the request against its key's limits, or refuse it with a 429.  The token
    estimate walks the whole prompt, so it is made only for keys with limits."""
    key = request[CALLER].key
    if key.limits == _NO_LIMITS:
        return None
    admission = await request.app[LIMITER].admit(key.name, key.limits, estimate())
    request[RATE_HEADERS] = limits.rate_headers(admission)
    if admission.rejected is not None:
        raise _refusal(admission)
    return admission


def _refusal(adm: limits.Admission) -> RateLimited:
    lim = adm.limits
    headers: dict[str, str] = {}
    if adm.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(adm.retry_after)))
        headers["retry-after-ms"] = str(max(1, math.ceil(adm.retry_after * 1000)))
    if adm.rejected == limits.QUOTA:
        headers["x-should-retry"] = "false"  # the official SDKs do not retry this one
        return RateLimited(
            f"You exceeded your monthly token quota ({lim.tokens_per_month} tokens; {adm.remaining_month} left, "
            f"about {adm.estimate} needed). It renews on the 1st of next month (UTC); upgrade your plan for more.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    if adm.rejected == limits.TOO_LARGE:
        headers["x-should-retry"] = "false"
        message = (
            f"Request too large: about {adm.estimate} tokens, over your limit of {lim.tpm} tokens per minute. "
            "Send a shorter prompt."
        )
    elif adm.rejected == limits.CONCURRENCY:
        message = f"Rate limit reached: {lim.concurrency} requests in flight at once. Retry when one has finished."
    elif adm.rejected == limits.RPM:
        message = f"Rate limit reached: {lim.rpm} requests per minute. Please try again in {adm.retry_after:.3f}s."
    else:
        message = (
            f"Rate limit reached: {lim.tpm} tokens per minute; {adm.remaining_tokens} left, about {adm.estimate} "
            f"requested. Please try again in {adm.retry_after:.3f}s."
        )
    return RateLimited(message, type="rate_limit_exceeded", code="rate_limit_exceeded", headers=headers)


async def rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer to a limited key, streamed or not, success
    or 429, carries OpenAI's x-ratelimit-* headers (a stream's at its first byte)."""
    headers = request.get(RATE_HEADERS)
    if headers:
        response.headers.update(headers)


def _retry_after(exc: GatewayError) -> float | None:
    value = exc.headers.get("Retry-After")
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: rare from APIs; treat as unknown


def _retry_delay(exc: GatewayError, attempt: int, target: Target, nxt: Target, backoff: float) -> float:
    """No wait before trying a different target; before trying the same one again,
    exponential backoff, or the upstream's Retry-After when it asks for longer."""
    if nxt.label != target.label:
        return 0.0
    return max(backoff * 2**attempt, _retry_after(exc) or 0.0)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
