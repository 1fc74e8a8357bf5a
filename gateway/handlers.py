"""The HTTP endpoints: the one place that meets both `web.Request` and the adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway import limits
from gateway.appkeys import (
    CALLER,
    HTTP,
    LIMITER,
    LIVE,
    METRICS,
    RATE_HEADERS,
    RECORD,
    REPLY,
    REQUEST_ID,
    RUNTIME,
    STOPPING,
    USAGE,
)
from gateway.balancer import Target
from gateway.config import Limits
from gateway.errors import GatewayError, RateLimited, ServiceUnavailable, UpstreamError
from gateway.metrics import CONTENT_TYPE, check_access
from gateway.providers.base import Chunk, Reply, StreamTranslator, UpstreamRequest, text_chars
from gateway.routing import resolve, visible_models
from gateway.sse import Event, EventWriter, SSEDecoder, SSEError
from gateway.upstream import open_upstream, read_capped
from gateway.usage import CLIENT_CLOSED, UsageRecord
from gateway.validation import check_chat, check_embeddings, include_usage, model_of, read_json

log = logging.getLogger(__name__)

_CODE = re.compile(r"^[a-z0-9_.]{1,64}$")
_LAST_WORD = 0.5  # seconds a stream cut by shutdown may take to send its final event
DEPLOYMENT_HEADER = "x-gateway-deployment"  # which provider/upstream served the answer


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


async def healthz(request: web.Request) -> web.Response:
    """200 `ok`; 503 `degraded` with the reason while usage rows cannot be written
    (they wait in memory and in the spill file meanwhile: nothing is lost)."""
    reason = request.app[USAGE].degraded()
    if reason is not None:
        return json_response({"status": "degraded", "reason": reason}, status=503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    check_access(request, request.app[LIVE].current.config.metrics_key_sha256)
    metrics = request.app[METRICS]
    metrics.set_usage_log(request.app[USAGE].stats())
    # rendered in a thread: a scrape must never stall the requests on the event loop
    body = await asyncio.to_thread(metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def list_models(request: web.Request) -> web.Response:
    models = visible_models(request[RUNTIME].config, request[CALLER].tier)
    return json_response({"object": "list", "data": [_model_object(m) for m in models]})


async def get_model(request: web.Request) -> web.Response:
    model = resolve(request[RUNTIME].config, request[CALLER], request.match_info["model"])
    return json_response(_model_object(model))


def _model_object(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


# -- chat --------------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    record = request[RECORD]
    record.model = model_of(body)
    check_chat(body)
    stream = record.stream = body.get("stream") is True
    created = int(time.time())
    wants_usage = stream and include_usage(body)

    async def attempt(target: Target) -> web.StreamResponse:
        reply = request[REPLY] = Reply(model=record.model or "", created=created, include_usage=wants_usage)
        upstream = target.adapter.chat_request(body, target.route, stream)
        if stream:
            return await _stream_chat(request, target, upstream, target.adapter.stream_translator(target.route, reply))
        data = await _call(request, target, upstream)
        completion = target.adapter.chat_response(data, target.route, reply)
        record.add_usage(completion.get("usage"))
        if not record.total_tokens:  # no usage reported: the answer's text is what we can count
            choices = completion.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                message = choice.get("message") if isinstance(choice, dict) else None
                reply.relayed_chars += text_chars(message) if isinstance(message, dict) else 0
        return json_response(completion, headers={DEPLOYMENT_HEADER: target.label})

    return await _with_fallback(request, attempt, lambda: limits.estimate_chat_tokens(body))


async def _call(request: web.Request, target: Target, upstream: UpstreamRequest) -> bytes:
    """One non-streamed upstream call: the whole answer body (errors raised as mapped)."""
    started = time.monotonic()
    async with open_upstream(request.app[HTTP], target.adapter, upstream, stream=False) as (resp, _):
        request[RECORD].ttfb_ms = _ms_since(started)
        return await read_capped(resp, target.adapter.provider, request[RUNTIME].config.max_upstream_body_bytes)


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
            raise  # _with_fallback logs it and may retry elsewhere
        exc.redact(target.route.provider.api_keys)
        _log_upstream_failure(request, target, exc.status, exc.code or exc.type)
        await _send_error(out, record, exc)
    except SSEError as exc:  # only raised once the stream is under way
        _log_upstream_failure(request, target, 502, "upstream_stream_undecodable")
        await _send_error(out, record, UpstreamError(f"The upstream stream could not be decoded: {exc}."))
    except ConnectionResetError:  # the client went away; leaving the block closed the upstream
        record.status, record.error_code = CLIENT_CLOSED, "client_closed"
        return out.response
    except asyncio.CancelledError:
        # a graceful stop ran out of time: the client is told, with a last event, before the cut
        if out.prepared and request.app[STOPPING].is_set():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_LAST_WORD):
                    await _send_error(out, record, _shutting_down())
        raise
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


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway is shutting down and cut this answer short; retry the request.", code="server_shutting_down"
    )


async def _send_error(out: EventWriter, record: UsageRecord, exc: GatewayError) -> None:
    record.status, record.error_code = exc.status, exc.code or exc.type
    try:
        await out.send(exc.body())
    except ConnectionResetError:
        record.status, record.error_code = CLIENT_CLOSED, "client_closed"


# -- embeddings --------------------------------------------------------------------------


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
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
    called = False  # an upstream received the prompt: from then on, it may bill us
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
                    log.warning(
                        "provider %s has no API key: set the environment variable %s and reload",
                        target.route.provider.name, target.route.provider.api_key_env or "named in its api_key",
                    )  # fmt: skip
                    raise target.adapter.missing_key_error()
                async with runtime.balancer.slot(target):
                    called = True
                    response = await attempt(target)
            except GatewayError as exc:
                exc.redact(target.route.provider.api_keys)  # an upstream may echo its key in any field
                tried.append(f"{target.label}={exc.status}")
                if exc.status >= 500 or exc.status == 429:
                    _log_upstream_failure(request, target, exc.status, exc.code or exc.type)
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
    except asyncio.CancelledError:
        if not record.status:
            record.status, record.error_code = CLIENT_CLOSED, "client_closed"
        raise
    finally:
        record.attempts = " ".join(tried) or None
        if called:
            _charge_unreported_usage(request, record, estimate)
        if admission is not None:  # the real usage (or its estimate) replaces the admission's
            await request.app[LIMITER].release(admission, record.total_tokens)


def _charge_unreported_usage(request: web.Request, record: UsageRecord, estimate: Callable[[], int]) -> None:
    """When the upstream worked but its usage never reached us (the client hung up
    before the usage chunk, the stream was cut, the upstream reports none), charge an
    estimate: the prompt's, plus the answer text relayed so far, by the same
    characters / 4 rule.  Never 0 and never a refund, or hanging up would be free.
    An upstream that refused the request before answering (ttfb unset) is not charged."""
    answered = record.ttfb_ms is not None
    if record.completion_tokens or not (answered or record.status == CLIENT_CLOSED):
        return
    reply = request.get(REPLY)
    completion = limits.estimate_text_tokens(reply.relayed_chars if reply is not None else 0)
    if record.total_tokens and not completion:
        return  # the real usage came (an empty answer), nothing was relayed
    prompt = record.prompt_tokens or estimate()
    record.prompt_tokens, record.completion_tokens = prompt, completion
    record.total_tokens = prompt + completion
    record.tokens_estimated = True


def _log_upstream_failure(request: web.Request, target: Target, status: int, cause: str | None) -> None:
    """One WARNING per failed upstream attempt: who, where, what; never a key or prompt
    (the cause is an error code, never the upstream's message, which may quote the
    prompt; an upstream's own code is logged only when it looks like one)."""
    log.warning(
        "upstream failure: request_id=%s provider=%s deployment=%s status=%d cause=%s",
        request.get(REQUEST_ID), target.route.provider.name, target.label, status,
        cause if cause and _CODE.match(cause) else "-",
    )  # fmt: skip


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
