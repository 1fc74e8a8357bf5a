"""The OpenAI Responses API endpoints: `POST /v1/responses` through the one pipeline
(translated by gateway/dialects/responses/), and the stored responses' reads.

A create resolves `previous_response_id` and `item_reference`s from the store
first (only the caller's own key name sees its responses), then runs like a chat
call: same tiers, limits, retries, usage row.  With `store` true (the default)
the Response is written before the client is told it is complete."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway import limits
from gateway.appkeys import CALLER, RECORD, RESPONSES, RUNTIME
from gateway.dialects.responses.context import ResponseContext
from gateway.dialects.responses.items import input_items
from gateway.dialects.responses.output import ResponsesOutput
from gateway.dialects.responses.request import to_hub
from gateway.dialects.responses.store import MAX_PAGE, ResponseStore, StoreUnavailable
from gateway.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from gateway.pipeline import with_fallback
from gateway.providers.base import Reply
from gateway.relay import hub_attempt, json_response
from gateway.routing import resolve
from gateway.validation import model_of, read_json

log = logging.getLogger(__name__)

Json = dict[str, Any]


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    record = request[RECORD]
    record.model = model_of(body)
    key_name = request[CALLER].key.name
    store = request.app[RESPONSES]
    history, found = await _stored_context(store, key_name, body)
    hub = to_hub(body, history, found.get)
    items = input_items(body, found.get)
    stream = record.stream = hub.get("stream") is True
    ctx = ResponseContext.from_request(body)
    output = ResponsesOutput(ctx, store if body.get("store") is not False else None, key_name, items)

    def reply() -> Reply:  # the hub answer always carries usage: the Response reports it
        return Reply(model=record.model or "", created=ctx.created_at, include_usage=True)

    attempt = hub_attempt(request, hub, stream, output, reply)
    return await with_fallback(request, attempt, lambda: limits.estimate_chat_tokens(hub))


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
            raise InvalidRequest(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
    references = [
        item["id"]
        for item in (body.get("input") if type(body.get("input")) is list else ())
        if type(item) is dict and item.get("type") == "item_reference" and type(item.get("id")) is str
    ]
    found = await _guard(store.find_items(key_name, references)) if references else {}
    return history, found


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


def _not_found(response_id: str) -> GatewayError:
    return NotFound(f"Response with id '{response_id}' not found.", param=None, code="response_not_found")
