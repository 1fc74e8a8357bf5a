"""Messages `messages[]` -> hub (Chat Completions) messages.

- user `text` / `image` / `document` / `search_result` blocks become chat parts
  (one text block alone becomes a plain string).  Images: base64 -> data URL, url
  -> URL.  Documents: base64 PDF -> a chat `file` part (`file_data` data URL,
  `filename` = the title or "document.pdf"); `text` and `content` sources -> text.
  URL and `file` sources (Anthropic-hosted files) are 400s: the hub cannot fetch.
- user `tool_result` blocks become one `tool` message each, in order, before the
  rest of that user turn.  `is_error` prefixes the result text with "Error: ".
  Chat tool results hold text only, so images and documents inside a result move
  to the user message that follows, after a short text naming the call.
- assistant `text` blocks are joined; `tool_use` -> `tool_calls` (arguments = the
  JSON of `input`); our own `thinking` / `redacted_thinking` blocks give back
  `reasoning_content` (their text, joined) and, through the envelope (state.py),
  `reasoning_signature` and the upstream ids of tool calls, applied to the calls
  and to their results.  Thinking blocks of anyone else (a conversation that
  came from Claude) are dropped: only text, tool calls and results cross providers.
- server-tool history (`server_tool_use`, `*_tool_result`, `mcp_tool_use`,
  `container_upload`) is dropped: no other upstream can run or read it.
- `cache_control` and `citations` on any block are dropped.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

import orjson

from gateway.dialects.messages import fields as F
from gateway.dialects.messages.state import unseal
from gateway.errors import InvalidRequest

Json = dict[str, Any]

_SERVER_HISTORY: Final = frozenset({"server_tool_use", "mcp_tool_use", "mcp_tool_result", "container_upload"})


def hub_messages(value: Any) -> list[Json]:
    """The hub messages for a Messages `messages` array (system text is handled by the caller)."""
    messages = F.array(value, "messages")
    if not messages:
        F.fail("messages", "expected at least one message")
    restored: dict[str, str] = {}  # tool id shown to the client -> upstream id, from our envelopes
    out: list[Json] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        message = F.obj(message, where)
        role = F.choice(message.get("role"), f"{where}.role", ("user", "assistant"))
        content = message.get("content")
        if isinstance(content, str):
            if content or role == "user":
                out.append({"role": role, "content": content})
            continue
        blocks = F.array(content, f"{where}.content")
        if role == "assistant":
            out.extend(_assistant(blocks, where, restored))
        else:
            out.extend(_user(blocks, where, restored))
    return out


def _assistant(blocks: list[Any], where: str, restored: dict[str, str]) -> list[Json]:
    texts: list[str] = []
    reasoning: list[str] = []
    signature: str | None = None
    calls: list[tuple[int, Json]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _type(block, at)
        if kind == "text":
            texts.append(F.string(block.get("text"), f"{at}.text"))
        elif kind in ("thinking", "redacted_thinking"):
            text = F.string(block.get("thinking"), f"{at}.thinking") if kind == "thinking" else ""
            name = "signature" if kind == "thinking" else "data"
            carried = unseal(F.string(block.get(name), f"{at}.{name}"), f"{at}.{name}")
            if carried is None:
                continue  # another provider's thinking: meaningless to this upstream
            reasoning.append(text or carried.reasoning_content or "")  # another dialect's envelope holds the text
            signature = signature or carried.reasoning_signature
            restored.update(carried.call_ids)
        elif kind == "tool_use":
            calls.append((j, block))  # after the loop: the envelope naming its id may come later
        elif kind in _SERVER_HISTORY or (kind.endswith("_tool_result") and kind != "tool_result"):
            continue
        else:
            _misplaced(kind, at, "assistant")
    tool_calls = [_tool_call(block, f"{where}.content[{j}]", restored) for j, block in calls]
    text, thought = "".join(texts), "".join(reasoning)
    if not (text or tool_calls or thought or signature):
        return []  # nothing left once foreign state is dropped
    out: Json = {"role": "assistant", "content": text or (None if tool_calls else "")}
    if tool_calls:
        out["tool_calls"] = tool_calls
    if thought:
        out["reasoning_content"] = thought
    if signature is not None:
        out["reasoning_signature"] = signature
    return [out]


def _tool_call(block: Json, at: str, restored: dict[str, str]) -> Json:
    call_id = F.string(block.get("id"), f"{at}.id", empty=False)
    name = F.string(block.get("name"), f"{at}.name", empty=False)
    try:
        arguments = orjson.dumps(F.obj(block.get("input"), f"{at}.input")).decode()
    except orjson.JSONEncodeError:  # integers beyond 64 bits, when the body was not read by orjson
        F.fail(f"{at}.input", "a value in it cannot be encoded as JSON")
    function = {"name": name, "arguments": arguments}
    return {"id": restored.get(call_id, call_id), "type": "function", "function": function}


def _user(blocks: list[Any], where: str, restored: dict[str, str]) -> list[Json]:
    out: list[Json] = []
    moved: list[Json] = []  # images and documents out of tool results
    parts: list[Json] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _type(block, at)
        if kind == "tool_result":
            out.append(_tool_result(block, at, restored, moved))
        elif kind in ("thinking", "redacted_thinking", "tool_use"):
            _misplaced(kind, at, "user")
        else:
            parts.extend(_part(kind, block, at))
    parts = moved + parts
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _tool_result(block: Json, at: str, restored: dict[str, str], moved: list[Json]) -> Json:
    call_id = F.string(block.get("tool_use_id"), f"{at}.tool_use_id", empty=False)
    call_id = restored.get(call_id, call_id)
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts: list[str] = []
        extra: list[Json] = []
        for k, item in enumerate(F.array(content, f"{at}.content")):
            item_at = f"{at}.content[{k}]"
            kind = _type(item, item_at)
            if kind not in ("text", "image", "document", "search_result"):
                _misplaced(kind, item_at, "tool_result")
            for part in _part(kind, item, item_at):
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    extra.append(part)
        text = "\n".join(texts)
        if extra:
            moved.append({"type": "text", "text": f"(attachments returned by tool call {call_id})"})
            moved.extend(extra)
    if F.boolean(block.get("is_error"), f"{at}.is_error"):
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _part(kind: str, block: Json, at: str) -> list[Json]:
    """Chat parts for one user-side block (an empty text block gives none)."""
    if kind == "text":
        text = F.string(block.get("text"), f"{at}.text")
        return [{"type": "text", "text": text}] if text else []
    if kind == "image":
        return [{"type": "image_url", "image_url": {"url": _image_url(block, at)}}]
    if kind == "document":
        return _document(block, at)
    if kind == "search_result":
        title = F.string(block.get("title"), f"{at}.title")
        source = F.string(block.get("source"), f"{at}.source")
        body = "\n".join(_texts(block.get("content"), f"{at}.content"))
        return [{"type": "text", "text": f"{title}\n{source}\n\n{body}"}]
    _misplaced(kind, at, "user")


def _image_url(block: Json, at: str) -> str:
    source = F.obj(block.get("source"), f"{at}.source")
    kind = F.choice(source.get("type"), f"{at}.source.type", ("base64", "url", "file"))
    if kind == "base64":
        mime = F.string(source.get("media_type"), f"{at}.source.media_type", empty=False)
        return f"data:{mime};base64,{F.string(source.get('data'), f'{at}.source.data', empty=False)}"
    if kind == "url":
        return F.string(source.get("url"), f"{at}.source.url", empty=False)
    raise _unsupported(f"{at}.source", "Files API images are not supported here; send the image as base64 or a URL")


def _document(block: Json, at: str) -> list[Json]:
    source = F.obj(block.get("source"), f"{at}.source")
    kind = F.choice(source.get("type"), f"{at}.source.type", ("base64", "text", "content", "url", "file"))
    if kind == "base64":
        mime = F.string(source.get("media_type"), f"{at}.source.media_type")
        if mime != "application/pdf":
            raise _unsupported(f"{at}.source.media_type", "base64 documents must be application/pdf")
        data = F.string(source.get("data"), f"{at}.source.data", empty=False)
        title = F.opt_string(block.get("title"), f"{at}.title") or "document.pdf"
        return [{"type": "file", "file": {"filename": title, "file_data": f"data:application/pdf;base64,{data}"}}]
    if kind == "text":
        text = F.string(source.get("data"), f"{at}.source.data")
        return [{"type": "text", "text": text}] if text else []
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        parts: list[Json] = []
        for k, item in enumerate(F.array(content, f"{at}.source.content")):
            item_at = f"{at}.source.content[{k}]"
            item_kind = _type(item, item_at)
            if item_kind not in ("text", "image"):
                _misplaced(item_kind, item_at, "document")
            parts.extend(_part(item_kind, item, item_at))
        return parts
    raise _unsupported(f"{at}.source", f"'{kind}' document sources are not supported here; send the PDF as base64")


def _texts(value: Any, param: str) -> list[str]:
    out = []
    for k, item in enumerate(F.array(value, param)):
        if _type(item, f"{param}[{k}]") != "text":
            _misplaced(item.get("type"), f"{param}[{k}]", "search_result")
        out.append(F.string(item.get("text"), f"{param}[{k}].text"))
    return out


def _type(block: Any, at: str) -> str:
    return F.string(F.obj(block, at).get("type"), f"{at}.type", empty=False)


def _misplaced(kind: Any, at: str, container: str) -> NoReturn:
    raise InvalidRequest(
        f"{at}.type: '{kind}' blocks are not supported in {container} content here.",
        param=f"{at}.type",
        code="invalid_value",
    )


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {why}.", param=param, code="unsupported_value")
