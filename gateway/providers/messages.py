"""Reading an OpenAI chat request the way every translating adapter needs it.

Anthropic and Gemini both need the same facts out of an OpenAI body: the system
text wherever it stands, the parts of a message, the image behind a data URL, the
parsed arguments of an earlier tool call, the budget for output tokens, and a
firm 400 for parameters they cannot honour.  The mechanism lives here once; each
adapter only says what its API calls things.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.errors import InvalidRequest

Json = dict[str, Any]
SYSTEM_ROLES: Final = frozenset({"system", "developer"})
_DATA_URL: Final = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


@dataclass(frozen=True, slots=True)
class Image:
    """An `image_url` part: inline bytes (base64) or a remote URL."""

    mime: str | None
    data: str | None  # base64, when the URL was a data URL
    url: str | None  # http(s) URL otherwise


def text_of(content: Any, where: str) -> str:
    """The text of a message whose content may be a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise InvalidRequest(
                    f"{where}.content[{j}]: only text parts are allowed here.",
                    param=f"{where}.content[{j}]",
                    code="invalid_value",
                )
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        return "".join(texts)
    raise InvalidRequest(f"{where}.content must be a string or an array of parts.", param=f"{where}.content")


def parts_of(content: Any, where: str) -> list[Json]:
    """A message's content as a list of OpenAI parts (a string becomes one text part)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return content
    raise InvalidRequest(f"{where}.content must be a string or an array of parts.", param=f"{where}.content")


def image_of(part: Json, where: str) -> Image:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}.image_url.url is required.", param=f"{where}.image_url.url")
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if not match:
            raise InvalidRequest(
                f"{where}.image_url.url: a data URL must look like data:<mime>;base64,<data>.",
                param=f"{where}.image_url.url",
                code="invalid_value",
            )
        return Image(mime=match.group("mime") or "image/png", data=match.group("data"), url=None)
    if url.startswith(("http://", "https://")):
        return Image(mime=None, data=None, url=url)
    raise InvalidRequest(
        f"{where}.image_url.url must be an http(s) URL or a base64 data URL.",
        param=f"{where}.image_url.url",
        code="invalid_value",
    )


def tool_arguments(call: Any, where: str) -> tuple[str, str, Json]:
    """(id, name, parsed arguments) of an assistant tool call; bad JSON is the client's 400."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise InvalidRequest(f"{where} must be a function tool call.", param=where)
    function = call["function"]
    name, call_id = function.get("name"), call.get("id")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where}.function.name is required.", param=f"{where}.function.name")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.id is required.", param=f"{where}.id")
    raw = function.get("arguments")
    if raw in (None, ""):
        return call_id, name, {}
    try:
        args = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"{where}.function.arguments is not valid JSON.",
            param=f"{where}.function.arguments",
            code="invalid_value",
        ) from None
    if not isinstance(args, dict):
        raise InvalidRequest(
            f"{where}.function.arguments must be a JSON object.",
            param=f"{where}.function.arguments",
            code="invalid_value",
        )
    return call_id, name, args


def max_output_tokens(body: Json) -> int | None:
    """`max_completion_tokens` wins over the deprecated `max_tokens`."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name, code="invalid_value")
        return value
    return None


def stop_list(body: Json) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop", code="invalid_value")


def number(body: Json, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number between {low} and {high}.", param=name, code="invalid_value")
    return value


def reject_unsupported(body: Json, provider_kind: str, allowed: Iterable[str], harmless: Iterable[str]) -> None:
    """400 for any field the upstream cannot honour: never silently ignore a request.

    `allowed` are the fields the adapter translates; `harmless` are OpenAI-only
    fields that change nothing the client could notice when dropped (`seed`,
    `store`, `metadata`, ...).  A null value is the same as absent."""
    known = set(allowed) | set(harmless)
    for name, value in body.items():
        if value is None or name in known:
            continue
        raise InvalidRequest(
            f"The parameter '{name}' is not supported by {provider_kind} models on this gateway.",
            param=name,
            code="unsupported_parameter",
        )
    n = body.get("n")
    if n not in (None, 1) and "n" not in set(allowed):
        raise InvalidRequest(
            f"'n' > 1 is not supported by {provider_kind} models; send one request per choice.",
            param="n",
            code="unsupported_parameter",
        )


def tool_names_by_id(messages: list[Any]) -> dict[str, str]:
    """tool_call_id -> function name, from every assistant message of the request (stateless)."""
    names: dict[str, str] = {}
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    names[str(call.get("id"))] = str(call["function"].get("name"))
    return names
