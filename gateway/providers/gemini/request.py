"""OpenAI chat body -> Gemini `GenerateContentRequest`: unsupported fields refused,
messages -> `systemInstruction` and `contents` (parts: text, images, audio, files,
function calls with their thought signatures, function responses), tools and
`tool_choice` -> `functionDeclarations` and `toolConfig`."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from gateway.dialects import fields
from gateway.errors import InvalidRequest
from gateway.providers.base import Json
from gateway.providers.gemini.generation import _gemini3, _generation_config
from gateway.providers.gemini.schema import clean_schema
from gateway.providers.gemini.signatures import signature_of
from gateway.providers.messages import (
    SYSTEM_ROLES,
    image_of,
    parts_of,
    reject_unsupported,
    text_of,
    tool_arguments,
    tool_names_by_id,
)
from gateway.validation import check_content

_CHAT_FIELDS: Final = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "response_format",
    "reasoning_effort",
    "tools",
    "tool_choice",
)
# Dropped without a word: they change nothing a client could observe.  Gemini has no
# switch for `parallel_tool_calls`; rejecting it would break every agent framework
# that sends `false` by default.
_HARMLESS: Final = (
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prediction",
    "parallel_tool_calls",
    "modalities",
)

_NO_SIGNATURE: Final = "skip_thought_signature_validator"  # Google's placeholder for calls it did not issue


def gemini_request(body: Json, upstream: str) -> Json:
    """The `GenerateContentRequest` for an OpenAI chat body (raises 400 on what Gemini cannot do)."""
    modalities = body.get("modalities")
    if modalities not in (None, ["text"]):
        raise InvalidRequest(
            "Gemini models on this gateway only produce text; 'modalities' must be [\"text\"].",
            param="modalities",
            code="unsupported_parameter",
        )
    reject_unsupported(body, "Gemini", _CHAT_FIELDS, _HARMLESS)
    messages = body.get("messages") or []
    system, contents = _contents(messages, _gemini3(upstream))
    if not contents:  # Gemini needs a user turn; OpenAI accepts system-only requests
        system, contents = [], [{"role": "user", "parts": system}]
    request: Json = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    declarations = _declarations(body.get("tools"))
    tool_config, allowed = _tool_choice(body.get("tool_choice"), declarations)
    if allowed is not None:
        declarations = [d for d in declarations if d["name"] in allowed]
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
        if tool_config:
            request["toolConfig"] = {"functionCallingConfig": tool_config}
    config = _generation_config(body, upstream)
    if config:
        request["generationConfig"] = config
    return request


def _contents(messages: list[Any], signed_calls: bool) -> tuple[list[Json], list[Json]]:
    """(systemInstruction parts, contents) with consecutive same-role turns merged;
    `signed_calls`: the model refuses a turn whose first call carries no signature."""
    names = tool_names_by_id(messages)
    system: list[Json] = []
    contents: list[Json] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        check_content(message.get("content"), where)
        if role in SYSTEM_ROLES:
            text = text_of(message.get("content"), where)
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            turn, parts = "user", _user_parts(message.get("content"), where)
        elif role == "assistant":
            turn, parts = "model", _assistant_parts(message, where, signed_calls)
        elif role == "tool":
            turn, parts = "user", [_function_response(message, where, names)]
        else:
            raise InvalidRequest(
                f"{where}: the legacy '{role}' role is not supported; use tool messages.",
                param=f"{where}.role",
                code="invalid_value",
            )
        if not parts:
            continue  # Gemini rejects a turn without parts
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    return system, contents


def _user_parts(content: Any, where: str) -> list[Json]:
    out: list[Json] = []
    for j, part in enumerate(parts_of(content, where)):
        here = f"{where}.content[{j}]"
        kind = part.get("type")
        if kind == "text":
            text = part["text"]  # a string: check_content saw to it
            if text:  # Gemini rejects empty text parts
                out.append({"text": text})
        elif kind == "image_url":
            out.append(_image_part(part, here))
        elif kind == "input_audio":
            out.append(_audio_part(part, here))
        elif kind == "file":
            out.append(_file_part(part, here))
        else:
            raise InvalidRequest(
                f"{here}: content parts of type {kind!r} are not supported by Gemini models.",
                param=f"{here}.type",
                code="invalid_value",
            )
    return out


def _image_part(part: Json, where: str) -> Json:
    image = image_of(part, where)
    if image.data is not None:
        return {"inlineData": {"mimeType": image.mime or "image/png", "data": image.data}}
    file_data: Json = {"fileUri": image.url}
    mime = mimetypes.guess_type(urlsplit(image.url or "").path)[0]
    if mime:
        file_data["mimeType"] = mime
    return {"fileData": file_data}


def _audio_part(part: Json, where: str) -> Json:
    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"]:
        raise InvalidRequest(f"{where}.input_audio.data is required.", param=f"{where}.input_audio.data")
    fmt = audio.get("format")
    if fmt not in ("wav", "mp3"):
        raise InvalidRequest(
            f"{where}.input_audio.format must be 'wav' or 'mp3'.",
            param=f"{where}.input_audio.format",
            code="invalid_value",
        )
    return {"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}}


def _file_part(part: Json, where: str) -> Json:
    spec = part.get("file")
    data = spec.get("file_data") if isinstance(spec, dict) else None
    if not isinstance(data, str) or not data:
        raise InvalidRequest(
            f"{where}.file.file_data is required: uploaded file ids cannot be used with Gemini models.",
            param=f"{where}.file",
            code="invalid_value",
        )
    filename = fields.string(spec, "filename", f"{where}.file.filename")
    mime = mimetypes.guess_type(filename or "")[0] or "application/pdf"
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        mime = header[5:].split(";")[0] or mime
    return {"inlineData": {"mimeType": mime, "data": data}}


def _assistant_parts(message: Json, where: str, signed_calls: bool) -> list[Json]:
    out: list[Json] = []
    text = text_of(message.get("content"), where)
    if text:
        out.append({"text": text})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be an array.", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        call_id, name, args = tool_arguments(call, f"{where}.tool_calls[{k}]")
        part: Json = {"functionCall": {"name": name, "args": args}}
        signature = signature_of(call_id)
        if signature:
            part["thoughtSignature"] = signature
        elif k == 0 and signed_calls:
            part["thoughtSignature"] = _NO_SIGNATURE
        out.append(part)
    return out


def _function_response(message: Json, where: str, names: Mapping[str, str]) -> Json:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.tool_call_id is required.", param=f"{where}.tool_call_id")
    name = names.get(call_id)
    if name is None:
        raise InvalidRequest(
            f"{where}.tool_call_id {call_id!r} does not match a tool call of an earlier assistant message; "
            f"Gemini needs the function name, which only that call carries.",
            param=f"{where}.tool_call_id",
            code="invalid_value",
        )
    text = text_of(message.get("content"), where)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


# -- tools and their schemas -------------------------------------------------------------


def _declarations(tools: Any) -> list[Json]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools", code="invalid_type")
    out: list[Json] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(
                f"{where}: only function tools are supported by Gemini models.",
                param=f"{where}.type",
                code="invalid_value",
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.function.name is required.", param=f"{where}.function.name")
        declaration: Json = {"name": name}
        description = fields.string(function, "description", f"{where}.function.description")
        if description is not None:
            declaration["description"] = description
        parameters = function.get("parameters")
        if parameters is not None:
            cleaned = clean_schema(parameters, f"{where}.function.parameters")
            if cleaned.get("properties"):  # Gemini rejects an OBJECT without properties
                declaration["parameters"] = {**cleaned, "type": "OBJECT"}
        out.append(declaration)
    return out


def _tool_choice(choice: Any, declarations: list[Json]) -> tuple[Json | None, set[str] | None]:
    """(functionCallingConfig, names to keep declared or None for all)."""
    if choice is None:
        return None, None
    needs_tools = choice != "none" and choice != "auto"
    if needs_tools and not declarations:
        raise InvalidRequest("'tool_choice' requires 'tools'.", param="tool_choice", code="invalid_value")
    if choice in ("none", "auto", "required"):
        return {"mode": {"none": "NONE", "auto": "AUTO", "required": "ANY"}[choice]}, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        _declared(name, declarations, "tool_choice.function.name")
        return {"mode": "ANY", "allowedFunctionNames": [name]}, None
    if kind == "allowed_tools" and isinstance(choice.get("allowed_tools"), dict):
        spec = choice["allowed_tools"]
        names: set[str] = set()
        mode = fields.choice(spec, "mode", "tool_choice.allowed_tools.mode", ("auto", "required"))
        for k, tool in enumerate(fields.array(spec, "tools", "tool_choice.allowed_tools.tools") or []):
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            names.add(_declared(name, declarations, f"tool_choice.allowed_tools.tools[{k}]"))
        if mode == "required":
            return {"mode": "ANY", "allowedFunctionNames": sorted(names)}, None
        # Gemini only restricts names under ANY; for "auto" we declare just the allowed ones.
        return {"mode": "AUTO"}, names
    raise InvalidRequest(
        "'tool_choice' must be 'none', 'auto', 'required', a function or allowed_tools.",
        param="tool_choice",
        code="invalid_value",
    )


def _declared(name: Any, declarations: list[Json], param: str) -> str:
    if not isinstance(name, str) or name not in {d["name"] for d in declarations}:
        raise InvalidRequest(f"{param}: {name!r} is not one of the declared tools.", param=param, code="invalid_value")
    return name
