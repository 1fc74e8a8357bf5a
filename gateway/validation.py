"""Checks on incoming OpenAI request bodies: only what the gateway itself relies on.

Everything else is the upstream's to judge (OpenAI-compatible providers) or the
adapter's (fields it must translate).  Either way a wrong value is a 400 naming its
parameter, never a TypeError turned 500: the adapters check what they read with the
typed reads of `gateway.dialects.fields` (shared with the dialects, so every message
says it the same way: "Invalid type for 'x': expected a string, but got an array
instead.") and `check_content` here.

Nesting: bodies nested deeper than `MAX_DEPTH` levels are refused whole.  orjson reads
1,024 levels but writes only 254, and Python walks (the token estimate, schema
cleaning, `repr` in a message) hit the recursion limit near 1,000; one rule at the
door keeps every later step safe.  The check costs one C-speed `orjson.dumps` of the
body (about a tenth of the `loads` before it), skipped for bodies too short to be deep.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.dialects import fields
from gateway.errors import InvalidRequest

ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ROLE_NAMES: Final = tuple(sorted(ROLES))
MAX_DEPTH: Final = 128  # levels of nesting, the body object itself being level 1

# -- reading the body --------------------------------------------------------------------


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (see `read_bytes` and `parse_body`)."""
    return parse_body(await read_bytes(request))


async def read_bytes(request: web.Request) -> bytes:
    """The request's body; a body that cannot be read (a Content-Encoding it does not
    match, a broken chunked encoding) is a 400.  A body over the size limit stays
    aiohttp's 413 (HTTPRequestEntityTooLarge propagates)."""
    try:
        return await request.read()
    except web.RequestPayloadError:
        _drop_connection(request)
        raise InvalidRequest(
            "The request body could not be read: it does not match its Content-Encoding "
            "(send gzip or deflate data only with that header) or its chunked encoding is broken.",
            code="invalid_body",
            headers={"Connection": "close"},  # tells the client not to reuse the connection
        ) from None


def _drop_connection(request: web.Request) -> None:
    """After an unreadable body, answer and close.  aiohttp drains an unread body once the
    handler returns, meets the stored decoding error again and logs it as an "Unhandled
    exception"; marking the body finished avoids that, and the HTTP parser is broken for
    this connection anyway, so nothing more is read from it."""
    request.content.feed_eof()
    request.protocol.close()


def parse_body(data: bytes) -> dict[str, Any]:
    if not data.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON ({exc.msg}).", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    # n levels take at least 2n bytes ("[[]]"): a short body cannot be too deep (the usual chat turn)
    if len(data) > 2 * MAX_DEPTH and not _fits(body, MAX_DEPTH):
        field = next((k for k, v in body.items() if not _fits(v, MAX_DEPTH - 1)), None)
        raise InvalidRequest(
            f"The request body is nested deeper than {MAX_DEPTH} levels"
            + (f" (in '{field}')." if field else ".")
            + " Flatten it; no API field needs that much nesting.",
            param=field,
            code="nesting_too_deep",
        )
    return body


class _Slot:
    """Where a value goes inside `_chain`; orjson hands it to `default`, which returns the value."""


def _orjson_write_limit() -> int:
    """How many levels orjson writes (254 in orjson 3): measured once, not assumed."""
    low, high = 1, 1024
    while low < high:
        mid = (low + high + 1) // 2
        try:
            orjson.dumps(_nested(mid))
            low = mid
        except orjson.JSONEncodeError:
            high = mid - 1
    return low


def _nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


@cache
def _chain(levels: int) -> Any:
    """A `_Slot` under `levels` arrays: written around a value, it adds `levels` to its depth."""
    value: Any = _Slot()
    for _ in range(levels):
        value = [value]
    return value


_WRITE_LIMIT: Final = _orjson_write_limit()


def _fits(value: Any, levels: int) -> bool:
    """Whether `value` is nested at most `levels` deep: orjson writes it under just enough
    arrays that a deeper value passes its limit (C speed: no Python walk of the body)."""
    wrapper = _chain(max(0, _WRITE_LIMIT - levels))
    try:
        orjson.dumps(wrapper, default=lambda _: value)
    except orjson.JSONEncodeError:
        return False
    return True


# -- content, as the translating adapters read it -----------------------------------------


def check_content(content: Any, where: str) -> None:
    """A message's `content` is null, a string or an array of parts, each an object with a
    string `type`, and text (or refusal) parts carry a string: what the translating
    adapters read before they look at any part (`where` is e.g. "messages[2]")."""
    if content is None or type(content) is str:
        return
    if type(content) is not list:
        raise fields.wrong_type(f"{where}.content", "a string or an array of content parts", content)
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        if type(part) is not dict:
            raise fields.wrong_type(here, "an object", part)
        kind = fields.required_string(part, "type", f"{here}.type")
        if kind in ("text", "refusal"):
            fields.required_string(part, kind, f"{here}.{kind}")


# -- chat and embeddings -----------------------------------------------------------------


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_type")
    return model


def check_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest(
            "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array.", param="messages", code="invalid_type")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages", code="empty_array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if type(role) is not str or role not in ROLES:  # a list or object is unhashable: type first
            fields.choice(message, "role", f"messages[{i}].role", _ROLE_NAMES)
            fields.required_string(message, "role", f"messages[{i}].role")  # only a missing role gets here
        calls = message.get("tool_calls")
        if calls is not None and type(calls) is not list:  # the adapters iterate it
            raise fields.wrong_type(f"messages[{i}].tool_calls", "an array", calls)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options", code="invalid_type")
        if not stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        fields.boolean(options, "include_usage", "stream_options.include_usage")


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def check_embeddings(body: dict[str, Any]) -> None:
    fields.choice(body, "encoding_format", "encoding_format", ("float", "base64"))
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            "'input' must be a string or a non-empty array of strings or token arrays.",
            param="input",
            code="invalid_type",
        )
