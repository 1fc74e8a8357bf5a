"""A Responses request's `input`, checked and normalised into items with ids.

Clients write input in several forms: a plain string, "easy" messages
(`{role, content: "text"}`), typed messages with parts, replayed output items
(assistant messages, function calls, reasoning), tool results and references to
stored items.  `input_items` turns all of them into the one shape OpenAI itself
returns from `GET /v1/responses/{id}/input_items`: every item typed, with an `id`
(kept when the client sent one, else minted with OpenAI's prefix: `msg_`, `fc_`,
`fco_`, `rs_`) and a `status`, message content always a list of parts.  The
request translation reads only this shape, so stored history and fresh input go
through the same code.

What the gateway cannot serve is a 400 naming the exact place: uploaded files
(`file_id`) and file URLs (no Files API here; send the bytes as a data URL), and
item types that belong to built-in tools (`web_search_call`, `computer_call`,
`custom_tool_call`, ...).  Agents SDK items may carry `id: "__fake_id__"` and
`provider_data`: the first counts as no id, the second is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from gateway.dialects import fields
from gateway.errors import InvalidRequest
from gateway.ids import hex_id

Json = dict[str, Any]
Resolver = Callable[[str], Json | None]  # a stored item by id, or None

ROLES: Final = ("user", "assistant", "system", "developer")
_STATUSES: Final = ("in_progress", "completed", "incomplete")
_DETAILS: Final = ("low", "high", "auto", "original")
_PHASES: Final = ("commentary", "final_answer")
_FAKE_ID: Final = "__fake_id__"  # the Agents SDK's placeholder for "no id"


def new_id(prefix: str) -> str:
    """An item id as OpenAI mints them: a prefix and 50 hex digits."""
    return prefix + hex_id(200)


def input_items(body: Json, resolve_item: Resolver | None = None) -> list[Json]:
    """The request's `input` as normalised Responses items, each with an `id`.

    `resolve_item` finds a stored item for an `item_reference`; without it (or
    when it answers None) a reference is a 400 naming `input[i].id`."""
    value = body.get("input")
    if value is None:
        return []
    if type(value) is str:
        return [_message_item(None, "user", [_text_part("input_text", value)], None)]
    if type(value) is not list:
        raise fields.wrong_type("input", "a string or an array of input items", value)
    return [normalise(item, f"input[{i}]", resolve_item) for i, item in enumerate(value)]


def normalise(item: Any, where: str, resolve_item: Resolver | None = None) -> Json:
    """One input item in the normalised shape (see the module docstring)."""
    if type(item) is not dict:
        raise fields.wrong_type(where, "an object", item)
    kind = fields.string(item, "type", f"{where}.type")
    if kind is None and "role" in item:
        kind = "message"  # the easy form: {role, content}
    handler = _NORMALISERS.get(kind) if kind else None
    if handler is None:
        if kind == "item_reference":
            return _reference(item, where, resolve_item)
        if kind is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.type'.", param=f"{where}.type", code="missing_required_parameter"
            )
        raise InvalidRequest(
            f"Input items of type '{kind}' ({where}) are not supported on this gateway: built-in tools "
            "are not served by this model's provider.",
            param=f"{where}.type",
            code="unsupported_value",
        )
    return handler(item, where)


def _item_id(item: Json, where: str) -> str | None:
    value = fields.string(item, "id", f"{where}.id")
    return None if value in (None, "", _FAKE_ID) else value


def _message(item: Json, where: str) -> Json:
    role = fields.choice(item, "role", f"{where}.role", ROLES)
    if role is None:
        raise InvalidRequest(
            f"Missing required parameter: '{where}.role'.", param=f"{where}.role", code="missing_required_parameter"
        )
    content = item.get("content")
    if role == "assistant":
        if type(content) is str:
            parts = [_output_text(content, [])]
        elif type(content) is list:
            parts = [_assistant_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
        else:
            raise fields.wrong_type(f"{where}.content", "a string or an array", content)
    elif type(content) is str:
        parts = [_text_part("input_text", content)]
    elif type(content) is list:
        parts = [input_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
    else:
        raise fields.wrong_type(f"{where}.content", "a string or an array", content)
    phase = item.get("phase") if role == "assistant" and item.get("phase") in _PHASES else None
    return _message_item(_item_id(item, where), role, parts, phase)


def _message_item(item_id: str | None, role: str, parts: list[Json], phase: str | None) -> Json:
    out: Json = {"id": item_id or new_id("msg_"), "type": "message", "role": role, "content": parts}
    out["status"] = "completed"
    if phase:
        out["phase"] = phase
    return out


def _text_part(kind: str, text: str) -> Json:
    return {"type": kind, "text": text}


def _output_text(text: str, annotations: list[Any]) -> Json:
    return {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}


def _assistant_part(part: Any, where: str) -> Json:
    if type(part) is not dict:
        raise fields.wrong_type(where, "an object", part)
    kind = fields.string(part, "type", f"{where}.type")
    if kind in ("output_text", "input_text", "text"):  # lenient: some clients replay text as input_text
        annotations = fields.array(part, "annotations", f"{where}.annotations") or []
        return _output_text(fields.required_string(part, "text", f"{where}.text"), annotations)
    if kind == "refusal":
        return {"type": "refusal", "refusal": fields.required_string(part, "refusal", f"{where}.refusal")}
    raise fields.invalid_value(f"{where}.type", kind, ("output_text", "refusal"))


def input_part(part: Any, where: str) -> Json:
    """A user/system part (or a function output part): input_text, input_image, input_file."""
    if type(part) is not dict:
        raise fields.wrong_type(where, "an object", part)
    kind = fields.string(part, "type", f"{where}.type")
    if kind == "input_text":
        return _text_part("input_text", fields.required_string(part, "text", f"{where}.text"))
    if kind == "input_image":
        detail = fields.choice(part, "detail", f"{where}.detail", _DETAILS) or "auto"
        if fields.string(part, "file_id", f"{where}.file_id") is not None:
            raise _no_files(f"{where}.file_id", "send the image as image_url (an https URL or a data URL)")
        url = fields.string(part, "image_url", f"{where}.image_url")
        if not url:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.image_url'.",
                param=f"{where}.image_url",
                code="missing_required_parameter",
            )
        return {"type": "input_image", "image_url": url, "detail": detail}
    if kind == "input_file":
        for key in ("file_id", "file_url"):
            if fields.string(part, key, f"{where}.{key}") is not None:
                raise _no_files(f"{where}.{key}", "send the file's bytes as file_data (a base64 data URL)")
        data = fields.required_string(part, "file_data", f"{where}.file_data")
        out: Json = {"type": "input_file", "file_data": data}
        filename = fields.string(part, "filename", f"{where}.filename")
        if filename is not None:
            out["filename"] = filename
        return out
    raise fields.invalid_value(f"{where}.type", kind, ("input_text", "input_image", "input_file"))


def _no_files(param: str, instead: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}': uploaded files and file URLs cannot be used on this gateway; {instead}.",
        param=param,
        code="unsupported_value",
    )


def _call_id(item: Json, where: str) -> str:
    call_id = fields.required_string(item, "call_id", f"{where}.call_id")
    if not call_id:
        raise InvalidRequest(f"'{where}.call_id' must not be empty.", param=f"{where}.call_id", code="invalid_value")
    return call_id


def _function_call(item: Json, where: str) -> Json:
    fields.choice(item, "status", f"{where}.status", _STATUSES)
    return {
        "id": _item_id(item, where) or new_id("fc_"),
        "type": "function_call",
        "call_id": _call_id(item, where),
        "name": fields.required_string(item, "name", f"{where}.name"),
        "arguments": fields.required_string(item, "arguments", f"{where}.arguments"),
        "status": "completed",
    }


def _function_call_output(item: Json, where: str) -> Json:
    fields.choice(item, "status", f"{where}.status", _STATUSES)
    output = item.get("output")
    if type(output) is list:
        output = [input_part(p, f"{where}.output[{j}]") for j, p in enumerate(output)]
    elif type(output) is not str:
        raise fields.wrong_type(f"{where}.output", "a string or an array", output)
    return {
        "id": _item_id(item, where) or new_id("fco_"),
        "type": "function_call_output",
        "call_id": _call_id(item, where),
        "output": output,
        "status": "completed",
    }


def _reasoning(item: Json, where: str) -> Json:
    out: Json = {"id": _item_id(item, where) or new_id("rs_"), "type": "reasoning"}
    for key, part_kind in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = fields.array(item, key, f"{where}.{key}")
        if parts is None and key == "content":
            continue
        checked = []
        for j, part in enumerate(parts or []):
            if type(part) is not dict:
                raise fields.wrong_type(f"{where}.{key}[{j}]", "an object", part)
            fields.choice(part, "type", f"{where}.{key}[{j}].type", (part_kind,))
            checked.append(_text_part(part_kind, fields.required_string(part, "text", f"{where}.{key}[{j}].text")))
        out[key] = checked
    encrypted = fields.string(item, "encrypted_content", f"{where}.encrypted_content")
    if encrypted is not None:
        out["encrypted_content"] = encrypted
    return out


def _reference(item: Json, where: str, resolve_item: Resolver | None) -> Json:
    ref = fields.required_string(item, "id", f"{where}.id")
    found = resolve_item(ref) if resolve_item is not None else None
    if found is None:
        raise InvalidRequest(f"Item with id '{ref}' not found.", param=f"{where}.id", code="item_not_found")
    return normalise(found, where)  # a stored item is normalised already; this keeps its id and refuses nesting


_NORMALISERS: Final[dict[str, Callable[[Json, str], Json]]] = {
    "message": _message,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
    "reasoning": _reasoning,
}
