"""The OpenAI Responses API endpoints: `POST /v1/responses` through the one pipeline
(translated by gateway/dialects/responses/), and the stored responses' reads.

A create resolves `previous_response_id` and `item_reference`s from the store
first (only the caller's own key name sees its responses), then runs like a chat
call: same tiers, limits, retries, usage row.  With `store` true (the default)
the Response is written before the client is told it is complete."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from gateway import limits
from gateway.appkeys import CALLER, RECORD, RESPONSES, RUNTIME
from gateway.balancer import Target
from gateway.dialects.responses.context import ResponseContext
from gateway.dialects.responses.items import input_items
from gateway.dialects.responses.output import NativeResponsesOutput, ResponsesOutput
from gateway.dialects.responses.request import to_hub
from gateway.dialects.responses.store import MAX_PAGE, ResponseStore, StoreUnavailable
from gateway.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from gateway.passthrough import responses_attempt
from gateway.pipeline import with_fallback
from gateway.providers.base import Reply
from gateway.relay import hub_attempt, json_response
from gateway.routing import resolve
from gateway.validation import model_of, parse_body, read_bytes, read_json

log = logging.getLogger(__name__)

Json = dict[str, Any]


async def create(request: web.Request) -> web.StreamResponse:
    raw = await read_bytes(request)  # the bytes themselves: a native upstream gets them as they are
    body = parse_body(raw)
    record = request[RECORD]
    record.model = model_of(body)
    key_name = request[CALLER].key.name
    store = request.app[RESPONSES]
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    stream = record.stream = stream is True
    keep = store if body.get("store") is not False else None
    created = int(time.time())

    def reply() -> Reply:  # the hub answer always carries usage: the Response reports it
        return Reply(model=record.model or "", created=created, include_usage=True, as_bytes=False)

    translated: list[Any] = []  # the hub attempt, built on the first translated target

    async def attempt(target: Target) -> web.StreamResponse:
        if target.route.provider.responses == "native" and target.adapter is not None:
            await _owned_previous(store, key_name, body)  # the upstream resolves it; only its owner may ask
            native = NativeResponsesOutput(keep, key_name, _items_or_none(body))
            return await responses_attempt(request, raw, body, stream, native, reply())(target)
        if not translated:
            history, found = await _stored_context(store, key_name, body)
            hub = to_hub(body, history, found.get)
            ctx = ResponseContext.from_request(body)
            output = ResponsesOutput(ctx, keep, key_name, input_items(body, found.get))
            translated.append(hub_attempt(request, hub, stream, output, reply))
        return await translated[0](target)

    return await with_fallback(request, attempt, lambda: _estimate(body))


async def retrieve(request: web.Request) -> web.Response:
    if request.query.get("stream", "false").lower() not in ("false", "0"):
        raise InvalidRequest("Streaming a stored response again is not supported; omit 'stream'.", param="stream")
    response = await _guard(request.app[RESPONSES].get(request[CALLER].key.name, _id(request)))
    if response is None:
        raise _not_found(_id(request))
    return json_response(response)


async def delete(request: web.Request) -> web.Response:
    response_id = _id(request)
    if not await _guard(request.app[RESPONSES].delete(request[CALLER].key.name, response_id)):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def cancel(request: web.Request) -> web.Response:
    """Only background responses can be cancelled, and this gateway runs none."""
    response_id = _id(request)
    if await _guard(request.app[RESPONSES].get(request[CALLER].key.name, response_id)) is None:
        raise _not_found(response_id)
    raise InvalidRequest("Only background responses can be cancelled; this gateway does not run background responses.")


async def list_input_items(request: web.Request) -> web.Response:
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit", code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    page = await _guard(
        request.app[RESPONSES].input_items(
            request[CALLER].key.name,
            _id(request),
            limit=limit,
            order=order,
            after=query.get("after"),  # type: ignore[arg-type]
        )
    )
    if page is None:
        raise _not_found(_id(request))
    return json_response(page)


async def input_tokens(request: web.Request) -> web.Response:
    """`POST /v1/responses/input_tokens`: no provider behind the hub has OpenAI's
    counter, so this is the gateway's estimate (the same rule its limits use), and
    the answer says so with `estimated: true`."""
    body = await read_json(request)
    model = resolve(request[RUNTIME].config, request[CALLER], model_of(body))  # the tier rule, as for a call
    history, found = await _stored_context(request.app[RESPONSES], request[CALLER].key.name, body)
    hub = to_hub({**body, "model": model.id, "stream": False}, history, found.get)
    return json_response(
        {"object": "response.input_tokens", "input_tokens": limits.estimate_chat_tokens(hub), "estimated": True}
    )


# -- helpers ---------------------------------------------------------------------------


async def _stored_context(store: ResponseStore, key_name: str, body: Json) -> tuple[list[Json] | None, dict[str, Json]]:
    """The conversation `previous_response_id` continues, and the stored items the
    input's `item_reference`s name (what is missing is left to `to_hub` to refuse)."""
    history = None
    previous = body.get("previous_response_id")
    if previous is not None:
        if type(previous) is not str or not previous:
            raise InvalidRequest("'previous_response_id' must be a string.", param="previous_response_id",
                                 code="invalid_type")  # fmt: skip
        history = await _guard(store.conversation(key_name, previous))
        if history is None:  # unknown, expired, deleted, or another key's: all alike
            raise _previous_not_found(previous)
    references = [
        item["id"]
        for item in (body.get("input") if type(body.get("input")) is list else ())
        if type(item) is dict and item.get("type") == "item_reference" and type(item.get("id")) is str
    ]
    found = await _guard(store.find_items(key_name, references)) if references else {}
    return history, found


async def _owned_previous(store: ResponseStore, key_name: str, body: Json) -> None:
    """A native upstream resolves `previous_response_id` itself, across the gateway's
    whole account: the gateway's own copy says whether this caller owns it."""
    previous = body.get("previous_response_id")
    if previous is not None and (type(previous) is not str or await _guard(store.get(key_name, previous)) is None):
        raise _previous_not_found(previous)


def _items_or_none(body: Json) -> list[Json]:
    """The input items kept with a native response's copy; references the upstream
    resolves (item_reference) are not ours to read, so then none are kept."""
    try:
        return input_items(body)
    except InvalidRequest:
        return []


def _estimate(body: Json) -> int:
    """The prompt estimate for the limits, from the body as sent (built-in tools and all)."""
    return limits.estimate_chat_tokens({"messages": [body.get("instructions"), body.get("input")],
                                        "tools": body.get("tools")})  # fmt: skip


async def _guard(call: Any) -> Any:
    """A store read that fails is a 503 the client may retry, never a 500."""
    try:
        return await call
    except StoreUnavailable as exc:
        log.warning("response store unavailable: %s", exc)
        raise ServiceUnavailable(
            "Stored responses are unavailable right now; retry shortly.", code="store_unavailable",
            headers={"Retry-After": "1"},
        ) from None  # fmt: skip


def _id(request: web.Request) -> str:
    return request.match_info["response_id"]


def _previous_not_found(previous: Any) -> GatewayError:
    return InvalidRequest(
        f"Previous response with id '{previous}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def _not_found(response_id: str) -> GatewayError:
    return NotFound(f"Response with id '{response_id}' not found.", param=None, code="response_not_found")
