"""The Anthropic Messages API endpoints: `POST /v1/messages` and
`POST /v1/messages/count_tokens`, in front of every provider.

To an Anthropic upstream the request passes through byte for byte but for `model`
(gateway/passthrough.py); to the others it is translated through the hub
(gateway/dialects/messages/).  Which one is decided per attempt, so a fallback
from a Claude deployment to another provider translates then.  Tiers, limits,
retries and the usage row are the pipeline's, as for every dialect; errors are
answered in Anthropic's shape (gateway/errors.py)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway import limits
from gateway.appkeys import CALLER, HTTP, RECORD, RUNTIME
from gateway.balancer import Target
from gateway.dialects.messages.output import MessagesOutput, NativeMessagesOutput
from gateway.dialects.messages.render import MessageContext
from gateway.dialects.messages.request import count_tokens_body, to_hub
from gateway.passthrough import messages_attempt, messages_request
from gateway.pipeline import with_fallback
from gateway.providers.base import Reply
from gateway.relay import hub_attempt, json_response
from gateway.routing import resolve
from gateway.upstream import open_upstream, read_capped
from gateway.validation import model_of, parse_body, read_bytes

Json = dict[str, Any]


async def create(request: web.Request) -> web.StreamResponse:
    raw = await read_bytes(request)  # the bytes themselves: an Anthropic upstream gets them as they are
    body = parse_body(raw)
    record = request[RECORD]
    record.model = model_of(body)
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        to_hub(body)  # names the bad field in the usual 400
    stream = record.stream = stream is True
    ctx = MessageContext.for_request(body)
    created = int(time.time())

    def reply() -> Reply:  # the hub answer always carries usage: the Messages answer reports it
        return Reply(model=record.model or "", created=created, include_usage=True, as_bytes=False)

    native = messages_attempt(request, raw, body, stream, NativeMessagesOutput(), reply())
    translated: list[Any] = []  # the hub attempt, built on the first non-Anthropic target

    async def attempt(target: Target) -> web.StreamResponse:
        if target.adapter is not None and target.adapter.kind == "anthropic":
            return await native(target)
        if not translated:
            translated.append(hub_attempt(request, _hub_for(body, target), stream, MessagesOutput(ctx), reply))
        return await translated[0](target)

    return await with_fallback(request, attempt, lambda: _estimate(body))


async def count_tokens(request: web.Request) -> web.Response:
    """Anthropic's own count for a Claude model; the gateway's estimate (the rule its
    limits use) for the others, said so with `estimated: true`."""
    raw = await read_bytes(request)
    body = parse_body(raw)
    config = request[RUNTIME].config
    model = resolve(config, request[CALLER], model_of(body))  # the tier rule, as for a call
    hub = count_tokens_body(body)
    for target in request[RUNTIME].balancer.plan(model.id):
        if target.adapter is not None and target.adapter.kind == "anthropic" and target.route.provider.api_key:
            upstream = messages_request(target, raw, body, request.headers, "/v1/messages/count_tokens")
            async with open_upstream(request.app[HTTP], target.adapter, upstream, stream=False) as (resp, _):
                data = await read_capped(resp, target.adapter.provider, config.max_upstream_body_bytes)
            return web.Response(body=data, content_type="application/json")
    return json_response({"input_tokens": limits.estimate_chat_tokens(hub), "estimated": True})


def _hub_for(body: Json, target: Target) -> Json:
    """The hub request for a non-Anthropic target.  OpenAI-kind servers take neither
    `top_k` nor, unless they reason, a reasoning effort: Messages clients send
    `thinking` whatever the model (Claude Code does), so it is dropped there, not
    refused; such a model then reasons at its default, if it reasons at all."""
    hub = to_hub(body)
    if target.adapter is not None and target.adapter.kind == "openai":
        hub.pop("top_k", None)
        hub.pop("reasoning_effort", None)
    return hub


def _estimate(body: Json) -> int:
    """The prompt estimate for the limits: the system text, the messages and the tools."""
    messages = body.get("messages") if type(body.get("messages")) is list else []
    return limits.estimate_chat_tokens({"messages": [body.get("system"), *messages], "tools": body.get("tools")})
