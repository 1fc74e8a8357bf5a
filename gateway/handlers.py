"""The HTTP endpoints: each reads its body, then hands the call to the pipeline
(gateway/pipeline.py) with the attempt that fits it (gateway/relay.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from gateway import limits
from gateway.appkeys import CALLER, LIVE, METRICS, RECORD, RUNTIME, USAGE
from gateway.balancer import Target
from gateway.dialects.messages.render import render_model, render_models
from gateway.dialects.output import ChatOutput
from gateway.errors import InvalidRequest, anthropic_client
from gateway.metrics import CONTENT_TYPE, check_access
from gateway.pipeline import with_fallback
from gateway.providers.base import Reply
from gateway.relay import DEPLOYMENT_HEADER, call_upstream, hub_attempt, json_response
from gateway.routing import resolve, visible_models
from gateway.validation import check_chat, check_embeddings, include_usage, model_of, read_json

log = logging.getLogger(__name__)

_CHAT = ChatOutput()  # stateless: one serves every chat stream


async def healthz(request: web.Request) -> web.Response:
    """200 `ok`; 503 `degraded` with the reason while usage rows cannot be written
    (they wait in memory and in the spill file meanwhile: nothing is lost)."""
    reason = request.app[USAGE].degraded()
    if reason is not None:
        return json_response({"status": "degraded", "reason": reason}, status=503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    check_access(request, request.app[LIVE].current.config.metrics_key_sha256)
    # rendered in a thread, with the other workers' snapshot files read there too: a
    # scrape must never stall the requests on the event loop (its sources, the usage log
    # and the limiter, were registered once at start: app._usage_store)
    body = await asyncio.to_thread(request.app[METRICS].exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def list_models(request: web.Request) -> web.Response:
    """The caller's tier's models, in OpenAI's shape, or Anthropic's for its SDKs."""
    models = visible_models(request[RUNTIME].config, request[CALLER].tier)
    if anthropic_client(request):
        query = request.query
        return json_response(
            render_models(models, limit=_limit(query.get("limit")), after_id=query.get("after_id"),
                          before_id=query.get("before_id"))
        )  # fmt: skip
    return json_response({"object": "list", "data": [_model_object(m) for m in models]})


async def get_model(request: web.Request) -> web.Response:
    model = resolve(request[RUNTIME].config, request[CALLER], request.match_info["model"])
    return json_response(render_model(model) if anthropic_client(request) else _model_object(model))


def _limit(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest("limit: must be an integer between 1 and 1000.", param="limit") from None


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

    def reply() -> Reply:
        return Reply(model=record.model or "", created=created, include_usage=wants_usage)

    attempt = hub_attempt(request, body, stream, _CHAT, reply)
    return await with_fallback(request, attempt, lambda: limits.estimate_chat_tokens(body))


# -- embeddings --------------------------------------------------------------------------


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    record = request[RECORD]
    record.model = model_of(body)
    check_embeddings(body)

    async def attempt(target: Target) -> web.StreamResponse:
        data = await call_upstream(request, target, target.adapter.embeddings_request(body, target.route))
        result = target.adapter.embeddings_response(data, body, target.route)
        record.add_usage(result.get("usage"))
        return json_response(result, headers={DEPLOYMENT_HEADER: target.label})

    return await with_fallback(request, attempt, lambda: limits.estimate_embedding_tokens(body))
