"""One usage row per API call, whatever happens to it.

The middleware opens a `UsageRecord` before anything else runs (so even a 401
is counted), lets handlers fill in model, provider and tokens, and queues the row
when the request ends: on success, on error, or when the client hangs up (499).
It also gives every request an id (`x-request-id`, accepted or generated)."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import web

from gateway.appkeys import CALLER, LIVE, METRICS, RECORD, REQUEST_ID, USAGE
from gateway.errors import GatewayError, Handler, from_http_exception
from gateway.ids import hex_id
from gateway.usage import CLIENT_CLOSED, UsageRecord

log = logging.getLogger(__name__)

_ACCOUNTED = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_MODEL_CHARS = 256  # of a client's `model` string kept in the row: it is the client's text, of any length


@web.middleware
async def accounting_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("x-request-id", "")
    request[REQUEST_ID] = given if _SAFE_ID.match(given) else hex_id()
    if request.path not in _ACCOUNTED or request.method != "POST":
        return await handler(request)
    started = time.monotonic()
    record = UsageRecord(ts=time.time(), request_id=request[REQUEST_ID], endpoint=request.path)
    request[RECORD] = record
    try:
        response = await handler(request)
        if not record.status:
            record.status = response.status
        return response
    except GatewayError as exc:  # answered by the error middleware, which sits outside this one
        record.status, record.error_code = exc.status, exc.code or exc.type
        raise
    except web.HTTPException as exc:  # aiohttp's own (413 body too large...), answered as sent
        if exc.status >= 400:
            error = from_http_exception(exc)
            record.status, record.error_code = error.status, error.code or error.type
        else:
            record.status = exc.status
        raise
    except asyncio.CancelledError:
        if not record.status:  # a stream cut by shutdown has already recorded its own status
            record.status, record.error_code = CLIENT_CLOSED, "client_closed"
        raise
    finally:
        caller = request.get(CALLER)
        if caller is not None:
            record.key_name, record.tier = caller.key.name, caller.tier.name
        record.latency_ms = round((time.monotonic() - started) * 1000, 3)
        if not record.status:  # a bug escaped the handler: the error middleware answers 500
            record.status, record.error_code = 500, "internal_error"
        if record.model is not None and len(record.model) > MAX_MODEL_CHARS:
            record.model = record.model[:MAX_MODEL_CHARS]
        request.app[USAGE].record(record)
        request.app[METRICS].observe(record, request.app[LIVE].current.config.models)
        # DEBUG, not INFO: the usage table already is the access log, and this line cost
        # 5-8 % of a request in the profile (scripts/bench); `--log-level DEBUG` shows it
        log.debug(
            "%s %s key=%s model=%s status=%d latency_ms=%.1f request_id=%s",
            request.method,
            request.path,
            record.key_name,
            record.model,
            record.status,
            record.latency_ms,
            record.request_id,
        )


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer, streamed or not, carries its request id."""
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["x-request-id"] = request_id
