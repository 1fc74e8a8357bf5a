"""OpenAI `messages` -> Anthropic's system blocks and alternating user/assistant
turns: content parts as blocks (text, images, PDF documents, `cache_control`),
tool calls and results checked and paired, same-role turns merged."""

from __future__ import annotations

from typing import Any, Final

from gateway.dialects import fields
from gateway.errors import InvalidRequest
from gateway.providers import tool_ids
from gateway.providers.anthropic.thinking import _THINKING_TYPES, _thinking_blocks
from gateway.providers.base import Json
from gateway.providers.messages import SYSTEM_ROLES, image_of, parts_of, text_of, tool_arguments
from gateway.validation import check_content

OPENING_TURN: Final = "."  # the API wants a user turn first; the smallest non-empty one

_IMAGE_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def _conversation(messages: list[Any]) -> tuple[list[Json], list[Json]]:
    """(system blocks, alternating user/assistant turns) of an OpenAI message list."""
    system: list[Json] = []
    turns: list[Json] = []
    pending: dict[str, int] = {}  # tool calls of the last assistant turn still waiting for a result
    for i, message in enumerate(messages):
        where, role = f"messages[{i}]", message.get("role")
        check_content(message.get("content"), where)
        if role in SYSTEM_ROLES:
            system.extend(_text_blocks(message.get("content"), where))
            continue
        if role == "tool":
            blocks = [_tool_result(message, where, pending)]
            role = "user"
        else:
            _check_answered(pending, where)
            if role == "user":
                blocks = _user_blocks(message.get("content"), where)
            elif role == "assistant":
                blocks = _assistant_blocks(message, where)
                # the client's ids (errors name them); the blocks carry the ones Anthropic accepts
                pending = {call["id"]: i for call in message.get("tool_calls") or ()}
            else:
                raise InvalidRequest(
                    f"{where}.role '{role}' is not supported by Anthropic models; use 'tool' messages.",
                    param=f"{where}.role",
                    code="invalid_value",
                )
        _append(turns, role, blocks)
    _check_answered(pending, "the end of the messages")
    return _finish_turns(system, turns)


def _append(turns: list[Json], role: str, blocks: list[Json]) -> None:
    """Add a turn, merging it into the previous one when the role repeats (the API alternates)."""
    if not blocks:
        return  # an empty message: the API rejects empty content
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _finish_turns(system: list[Json], turns: list[Json]) -> tuple[list[Json], list[Json]]:
    if not turns:
        if not system:
            raise InvalidRequest("The messages have no content to send.", param="messages", code="invalid_value")
        return [], [{"role": "user", "content": system}]  # system-only: OpenAI answers it, so do we
    for turn in turns:
        if turn["role"] == "assistant":  # merged turns: the API wants all thinking ahead of the rest
            turn["content"].sort(key=lambda b: b["type"] not in _THINKING_TYPES)
    if turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": OPENING_TURN}]})
    last = turns[-1]["content"][-1]
    if turns[-1]["role"] == "assistant" and last["type"] == "text":
        last["text"] = last["text"].rstrip()  # a prefill may not end in whitespace (blank text never gets here)
    return system, turns


def _check_answered(pending: dict[str, int], where: str) -> None:
    if pending:
        ids = ", ".join(sorted(pending))
        first = min(pending.values())
        raise InvalidRequest(
            f"An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'; messages[{first}] has calls not answered before {where}: {ids}.",
            param=f"messages[{first}]",
            code="invalid_value",
        )


def _text_blocks(content: Any, where: str) -> list[Json]:
    """System text: one block per part, keeping `cache_control`; blank text dropped."""
    blocks = []
    for j, part in enumerate(parts_of(content, where)):
        if part.get("type") != "text":
            raise InvalidRequest(
                f"{where}.content[{j}]: only text parts are allowed here.",
                param=f"{where}.content[{j}]",
                code="invalid_value",
            )
        blocks.extend(_text_block(part, f"{where}.content[{j}]"))
    return blocks


def _text_block(part: Json, where: str) -> list[Json]:
    text = part.get("text")  # a string: check_content saw to it
    if not text.strip():
        return []  # the API rejects empty and blank text blocks
    return [_cached({"type": "text", "text": text}, part, where)]


def _cached(block: Json, part: Json, where: str) -> Json:
    control = fields.obj(part, "cache_control", f"{where}.cache_control")
    if control is not None:
        block["cache_control"] = control
    return block


def _user_blocks(content: Any, where: str) -> list[Json]:
    blocks: list[Json] = []
    for j, part in enumerate(parts_of(content, where)):
        here, kind = f"{where}.content[{j}]", part.get("type")
        if kind == "text":
            blocks.extend(_text_block(part, here))
        elif kind == "image_url":
            blocks.append(_cached(_image_block(part, here), part, here))
        elif kind == "file":
            blocks.append(_cached(_document_block(part, here), part, here))
        else:
            raise InvalidRequest(
                f"{here}: parts of type {kind!r} are not supported by Anthropic models "
                f"(text, image_url and PDF file parts are).",
                param=f"{here}.type",
                code="unsupported_value",
            )
    return blocks


def _image_block(part: Json, where: str) -> Json:
    image = image_of(part, where)
    if image.url is not None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    if image.mime not in _IMAGE_TYPES:
        raise InvalidRequest(
            f"{where}.image_url.url: Anthropic models accept JPEG, PNG, GIF and WebP images, not {image.mime}.",
            param=f"{where}.image_url.url",
            code="invalid_value",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": image.data}}


def _document_block(part: Json, where: str) -> Json:
    spec = part.get("file")
    data = spec.get("file_data") if isinstance(spec, dict) else None
    prefix = "data:application/pdf;base64,"
    if not isinstance(data, str) or not data.startswith(prefix):
        raise InvalidRequest(
            f"{where}.file: Anthropic models accept files as PDF data (file_data: {prefix}...); "
            f"file ids and other types are not supported.",
            param=f"{where}.file",
            code="unsupported_value",
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data[len(prefix) :]},
    }


def _assistant_blocks(message: Json, where: str) -> list[Json]:
    blocks = _thinking_blocks(message, where)
    text = text_of(message.get("content"), where)
    if text.strip():
        blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be an array.", param=f"{where}.tool_calls")
    for j, call in enumerate(calls):
        call_id, name, args = tool_arguments(call, f"{where}.tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": tool_ids.for_anthropic(call_id), "name": name, "input": args})
    return blocks


def _tool_result(message: Json, where: str, pending: dict[str, int]) -> Json:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in pending:
        raise InvalidRequest(
            f"{where}: messages with role 'tool' must be a response to a preceding message with 'tool_calls'; "
            f"no pending call has id {call_id!r}.",
            param=f"{where}.tool_call_id",
            code="invalid_value",
        )
    del pending[call_id]
    block: Json = {"type": "tool_result", "tool_use_id": tool_ids.for_anthropic(call_id)}
    text = text_of(message.get("content"), where)
    if text.strip():
        block["content"] = text
    return block
