"""Google Gemini (Developer API, v1beta `generateContent`) behind the OpenAI contract.

Requests go to `{base_url}/v1beta/models/{upstream}:generateContent`, or
`:streamGenerateContent?alt=sse` for streams, and `:batchEmbedContents` for
embeddings.  The key travels only in the `x-goog-api-key` header, never in a URL
that a proxy or log could keep.

Translation choices worth knowing (the rest is a plain field-by-field mapping):

* System text: every `system`/`developer` message, wherever it stands, becomes one
  part of `systemInstruction`, in order.  A request with nothing but system text
  sends it as the user turn instead, since Gemini requires `contents`.
* Images: a data URL becomes `inlineData`; an http(s) URL becomes
  `fileData {fileUri, mimeType}` (MIME type guessed from the URL's extension when it
  has one).  The adapter is sans-IO, so it never downloads anything itself: Gemini
  fetches public URLs on its side (2.5 and later models).  An image Gemini cannot
  fetch comes back as Google's own 400, which the client sees.
* Tool results: Gemini needs the function *name* in `functionResponse`; it is
  recovered from the earlier assistant tool call with the same `tool_call_id`, and
  the response is always a JSON object (a JSON-object result is sent as is,
  anything else as `{"result": "<text>"}`).
* Thought signatures (Gemini 2.5/3): a `thoughtSignature` on a `functionCall` part
  must come back on that call in the next request.  OpenAI's format has no slot for
  it, so it rides inside the tool call id we hand out:
  `call_<24 alphanumerics>` + `__ts_` + the signature in URL-safe base64 without
  padding (Google sends standard base64; only `+`, `/` and the padding change, so
  the round trip is exact).  The alphabet stays within `[A-Za-z0-9_-]`, so the id
  is valid wherever tool ids are restricted.  Nothing is stored on the gateway.
  Other upstreams get such ids in a short form without the signature (tool_ids.py).
* Calls Gemini did not sign (another provider's, in a conversation that switched
  model; or a client that rewrote the id): Gemini 3 refuses a model turn whose
  first `functionCall` has no signature, so that part gets Google's documented
  placeholder `skip_thought_signature_validator` (dialects.md C6).  Only the first
  call of an assistant message: Gemini signs only the first of parallel calls, and
  its own round trips stay byte for byte.  Older models need no signature.
* `reasoning_effort`: Gemini 3 (`gemini-3*`) gets `thinkingLevel` - `none`,
  `minimal`, `low` -> LOW; `medium` (OpenAI's default), `high`, `xhigh`, `max` ->
  HIGH (Gemini 3's default), the two levels every Gemini 3 model accepts.  Older
  models get `thinkingBudget`: none 0, minimal 512, low 1024, medium 8192, high and
  above 24576.  Except for `none`, `includeThoughts` is on and thought summaries
  come back as `reasoning_content`.  Without `reasoning_effort` the model default
  applies and thoughts are not returned.
* Finish reasons: STOP -> `stop`, or `tool_calls` when the choice called a function;
  MAX_TOKENS -> `length`; safety-like reasons -> `content_filter`; reasons that mean
  the answer is broken (MALFORMED_FUNCTION_CALL, ...) -> an error, never an empty
  success.  A blocked prompt becomes a `content_filter` choice whose `refusal` says
  why.
* Usage: prompt = promptTokenCount (+ toolUsePromptTokenCount), completion =
  candidates + thoughts, reasoning = thoughts, cached = cachedContentTokenCount.
* Embeddings: Gemini's batch endpoint reports no token counts (newer versions may
  send `usageMetadata`, used when present), so `prompt_tokens` is then estimated
  as one token per 4 UTF-8 bytes of input, at least 1 per input.
"""

from __future__ import annotations

import base64
import math
import mimetypes
import re
import secrets
import string
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from gateway.dialects import fields
from gateway.errors import GatewayError, InvalidRequest, UpstreamError
from gateway.providers.base import (
    Adapter,
    Json,
    Reply,
    Route,
    StreamTranslator,
    UpstreamRequest,
    truncated,
    usage_dict,
)
from gateway.providers.messages import (
    SYSTEM_ROLES,
    image_of,
    max_output_tokens,
    number,
    parts_of,
    reject_unsupported,
    stop_list,
    text_of,
    tool_arguments,
    tool_names_by_id,
)
from gateway.sse import Event
from gateway.validation import check_content

# -- request vocabulary ------------------------------------------------------------------

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
_EMBEDDING_FIELDS: Final = ("model", "input", "encoding_format", "dimensions")

_MAX_STOP: Final = 5  # Gemini's limit on stopSequences
_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_LEVELS: Final = {"none": "LOW", "minimal": "LOW", "low": "LOW"}  # everything else: HIGH
_BUDGETS: Final = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192}  # everything else: 24576
_MAX_BUDGET: Final = 24576  # the largest budget every 2.5 model accepts
# Per cleaned schema, $refs inlined, both far above any real tool: inlining can multiply a
# small schema exponentially, and every level of the result is a level of Python recursion.
_MAX_SCHEMA_NODES: Final = 5000
_MAX_SCHEMA_DEPTH: Final = 64

# The OpenAPI subset Gemini's `Schema` understands; any other key is a 400 upstream.
_SCHEMA_COPY: Final = (
    "description",
    "title",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "pattern",
    "default",
    "example",
    "propertyOrdering",
)
_SCHEMA_TYPES: Final = frozenset({"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"})
_FORMATS: Final = {
    "STRING": frozenset({"enum", "date-time"}),
    "INTEGER": frozenset({"int32", "int64"}),
    "NUMBER": frozenset({"float", "double"}),
}

# -- response vocabulary -----------------------------------------------------------------

_FILTERED: Final = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "ESCALATION",
        "PUP_LIMITED_DISABLED",
        "MODEL_ARMOR",
    }
)
_LENGTH: Final = frozenset({"MAX_TOKENS", "CONTINUATION"})
# Reasons after which the answer is unusable: an error, not an empty success.
_FAILED: Final = {
    "MALFORMED_FUNCTION_CALL": "Gemini generated a malformed function call",
    "UNEXPECTED_TOOL_CALL": "Gemini called a function that was not declared or not allowed",
    "TOO_MANY_TOOL_CALLS": "Gemini made too many tool calls in one turn",
    "MALFORMED_RESPONSE": "Gemini produced a malformed response",
}
_MISSING_SIGNATURE: Final = "MISSING_THOUGHT_SIGNATURE"

_RPC_STATUS: Final = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "CANCELLED": 500,
    "ABORTED": 503,
    "UNIMPLEMENTED": 500,
}

_SIG_MARK: Final = "__ts_"
_NO_SIGNATURE: Final = "skip_thought_signature_validator"  # Google's placeholder for calls it did not issue
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_BASE64: Final = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class GeminiAdapter(Adapter):
    kind = "gemini"

    # -- requests --------------------------------------------------------------------------
    def _url(self, upstream: str, method: str) -> str:
        base = self.provider.base_url.removesuffix("/v1beta")
        return f"{base}/v1beta/models/{upstream.removeprefix('models/')}:{method}"

    def _request(self, url: str, body: Json) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", **self.provider.headers}
        if self.provider.api_key:
            headers["x-goog-api-key"] = self.provider.api_key
        return UpstreamRequest(url, headers, orjson.dumps(body))

    def chat_request(self, body: Json, route: Route, stream: bool) -> UpstreamRequest:
        request = gemini_request(body, route.model.upstream)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self._request(self._url(route.model.upstream, method), request)

    # -- responses -------------------------------------------------------------------------
    def chat_response(self, data: bytes, route: Route, reply: Reply) -> Json:
        response = self.parse_json(data)
        if isinstance(response.get("error"), dict):
            raise self.error_from_body(_status_of(response["error"]), response, {})
        if isinstance(response.get("responseId"), str) and response["responseId"]:
            reply.upstream_id = response["responseId"]  # Google's id, for the usage row
        usage = _usage(response.get("usageMetadata"))
        candidates = _candidates(response)
        blocked = _block_reason(response)
        if not candidates:
            if blocked is None:
                raise UpstreamError(f"The {self.provider.name} provider returned no candidates.")
            message = {"role": "assistant", "content": None, "refusal": _blocked_message(blocked)}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter"}
            return reply.completion([choice], usage)
        choices = [_choice(candidate, position) for position, candidate in enumerate(candidates)]
        return reply.completion(sorted(choices, key=lambda c: c["index"]), usage)

    def stream_translator(self, route: Route, reply: Reply) -> StreamTranslator:
        return _GeminiStream(reply, self)

    # -- embeddings ------------------------------------------------------------------------
    def embeddings_request(self, body: Json, route: Route) -> UpstreamRequest:
        reject_unsupported(body, "Gemini", _EMBEDDING_FIELDS, ("user",))
        upstream = route.model.upstream.removeprefix("models/")
        extra: Json = {}
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
                raise InvalidRequest(
                    "'dimensions' must be a positive integer.", param="dimensions", code="invalid_value"
                )
            extra["outputDimensionality"] = dimensions
        requests = [
            {"model": f"models/{upstream}", "content": {"parts": [{"text": text}]}, **extra}
            for text in _embedding_inputs(body.get("input"))
        ]
        return self._request(self._url(upstream, "batchEmbedContents"), {"requests": requests})

    def embeddings_response(self, data: bytes, body: Json, route: Route) -> Json:
        result = self.parse_json(data)
        inputs = _embedding_inputs(body.get("input"))
        embeddings = result.get("embeddings")
        if not isinstance(embeddings, list) or len(embeddings) != len(inputs):
            raise UpstreamError(f"The {self.provider.name} provider returned no embedding for some inputs.")
        as_base64 = body.get("encoding_format") == "base64"
        items = []
        for i, embedding in enumerate(embeddings):
            values = embedding.get("values") if isinstance(embedding, dict) else None
            if not isinstance(values, list):
                raise UpstreamError(f"The {self.provider.name} provider returned an embedding without values.")
            vector: Any = _float32_base64(values) if as_base64 else values
            items.append({"object": "embedding", "index": i, "embedding": vector})
        prompt = _count(result.get("usageMetadata"), "promptTokenCount") or sum(
            max(1, math.ceil(len(text.encode()) / 4)) for text in inputs
        )
        return {
            "object": "list",
            "data": items,
            "model": route.model.id,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }

    # -- errors ----------------------------------------------------------------------------
    def error_from_body(self, status: int, body: Any, headers: Mapping[str, str]) -> GatewayError:
        """Map Google's `{error: {code, message, status, details}}` by its RPC status.

        The RPC status says more than the HTTP code: an invalid key is a 400
        INVALID_ARGUMENT whose ErrorInfo reason is API_KEY_INVALID, and that is the
        operator's problem (502), not the caller's."""
        if isinstance(body, list) and body and isinstance(body[0], dict):
            body = body[0]  # a non-SSE stream answers errors as a one-element array
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return self.upstream_error(status, "", retry_after=headers.get("Retry-After"))
        rpc = err.get("status") if isinstance(err.get("status"), str) else ""
        message = str(err.get("message") or "")
        details = [d for d in err.get("details") or [] if isinstance(d, dict)]
        reasons = {d.get("reason") for d in details if str(d.get("@type", "")).endswith("ErrorInfo")}
        if "API_KEY_INVALID" in reasons or rpc == "UNAUTHENTICATED":
            return self.upstream_error(401, message)
        if rpc == "PERMISSION_DENIED":
            return self.upstream_error(403, message)
        if rpc == "FAILED_PRECONDITION":  # billing, region: the operator's to fix
            return UpstreamError(f"The {self.provider.name} provider refused the request: {self.scrub(message)}")
        mapped = _RPC_STATUS.get(rpc, status)
        retry_after = _retry_delay(details) if mapped == 429 else None
        return self.upstream_error(mapped, message, retry_after=retry_after or headers.get("Retry-After"))


# -- OpenAI request -> Gemini request ----------------------------------------------------


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


# -- tool call ids that carry Gemini's thought signature ---------------------------------


def new_tool_call_id(signature: str | None = None) -> str:
    """`call_<24 alphanumerics>`, plus `__ts_<signature, URL-safe base64>` when there is one."""
    head = "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))
    if not signature or not _BASE64.match(signature):
        return head
    return head + _SIG_MARK + signature.rstrip("=").replace("+", "-").replace("/", "_")


def signature_of(call_id: str) -> str | None:
    """The thought signature a tool call id of ours carries, in Google's base64; else None."""
    _, mark, encoded = call_id.partition(_SIG_MARK)
    if not mark or not encoded:
        return None
    signature = encoded.replace("-", "+").replace("_", "/")
    signature += "=" * (-len(signature) % 4)
    return signature if _BASE64.match(signature) else None


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


def clean_schema(schema: Any, where: str) -> Json:
    """A JSON Schema rewritten into the OpenAPI subset Gemini's `Schema` accepts.

    Gemini answers 400 to any key it does not know (`additionalProperties`,
    `$schema`, `const`, `strict`, ...) and to JSON-Schema type arrays.  Unknown keys
    are dropped; `const` becomes a one-value `enum`; `["x", "null"]` becomes
    `type: X, nullable: true`; local `$ref`s are inlined (a recursive one becomes
    its target's bare type); `oneOf` becomes `anyOf`; `allOf` is merged."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where} must be a JSON Schema object.", param=where, code="invalid_type")
    defs: Json = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _clean(schema, _Cleaning(defs, where), ())


@dataclass(slots=True)
class _Cleaning:
    """One schema's cleaning: its definitions, its parameter name, how many more nodes
    it may produce and how deep the node being cleaned is."""

    defs: Json
    where: str
    nodes_left: int = _MAX_SCHEMA_NODES
    depth: int = 0

    def refuse(self, message: str, code: str = "invalid_value") -> InvalidRequest:
        return InvalidRequest(f"{self.where}: {message}", param=self.where, code=code)


def _clean(node: Any, ctx: _Cleaning, expanding: tuple[str, ...]) -> Json:
    if not isinstance(node, dict):
        return {}  # `true` / `{}`: any value
    ctx.nodes_left -= 1
    if ctx.nodes_left < 0:
        raise ctx.refuse(f"the schema has more than {_MAX_SCHEMA_NODES} nodes once its $refs are inlined.")
    if ctx.depth >= _MAX_SCHEMA_DEPTH:
        raise ctx.refuse(f"the schema nests more than {_MAX_SCHEMA_DEPTH} levels once its $refs are inlined.")
    ctx.depth += 1
    try:
        return _clean_node(node, ctx, expanding)
    finally:
        ctx.depth -= 1


def _clean_node(node: Json, ctx: _Cleaning, expanding: tuple[str, ...]) -> Json:
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _inline_ref(node, ref, ctx, expanding)
    if isinstance(node.get("allOf"), list):
        node = _merge_all_of(node)
    out: Json = {}
    nullable = node.get("nullable") is True
    kind, null_type, variants = _types(node.get("type"))
    nullable |= null_type
    if kind:
        out["type"] = kind
    alternatives = node.get("anyOf") if isinstance(node.get("anyOf"), list) else node.get("oneOf")
    if isinstance(alternatives, list):
        for alternative in alternatives:
            cleaned = _clean(alternative, ctx, expanding)
            if cleaned == {"nullable": True}:  # the {"type": "null"} branch
                nullable = True
            else:
                variants.append(cleaned)
    if len(variants) == 1 and "type" not in out:
        out.update(variants[0])
    elif variants:
        out["anyOf"] = variants
    nullable |= _enum(node, out)
    properties = node.get("properties")
    if isinstance(properties, dict) and properties:
        out["properties"] = {name: _clean(sub, ctx, expanding) for name, sub in properties.items()}
        out.setdefault("type", "OBJECT")
        required = [r for r in _required(node.get("required"), ctx) if r in properties]
        if required:
            out["required"] = required
    items = node.get("items")
    if isinstance(items, dict):
        out["items"] = _clean(items, ctx, expanding)
    elif isinstance(items, list) and items:  # draft-4 tuple form
        out["items"] = {"anyOf": [_clean(item, ctx, expanding) for item in items]}
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = fmt
    for key in _SCHEMA_COPY:
        if key in node and key not in out:
            out[key] = node[key]
    if nullable:
        out["nullable"] = True
    return out


def _inline_ref(node: Json, ref: str, ctx: _Cleaning, expanding: tuple[str, ...]) -> Json:
    name = ref.rsplit("/", 1)[-1]
    if not ref.startswith(("#/$defs/", "#/definitions/")) or not isinstance(ctx.defs.get(name), dict):
        raise ctx.refuse(f"cannot resolve $ref {ref!r}; only local #/$defs references are supported.")
    siblings = {k: v for k, v in node.items() if k != "$ref"}  # e.g. a description next to the $ref
    if name in expanding:  # recursive: Gemini schemas cannot refer to themselves
        kind, _, _ = _types(ctx.defs[name].get("type"))
        return {**_clean(siblings, ctx, expanding), "type": kind or "OBJECT"}
    return _clean({**ctx.defs[name], **siblings}, ctx, (*expanding, name))


def _required(value: Any, ctx: _Cleaning) -> list[str]:
    if value is None:
        return []
    if type(value) is not list or not all(type(r) is str for r in value):
        raise ctx.refuse("'required' must be an array of property names.", code="invalid_type")
    return value


def _merge_all_of(node: Json) -> Json:
    merged = {k: v for k, v in node.items() if k != "allOf"}
    for part in node["allOf"]:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            # the node's own keys may be of any type: only same-typed ones merge
            if key == "properties" and isinstance(value, dict) and isinstance(merged.get("properties", {}), dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list) and isinstance(merged.get("required", []), list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _types(value: Any) -> tuple[str | None, bool, list[Json]]:
    """(Gemini type, whether null is allowed, anyOf variants for several types)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None, False, []
    names = [str(v).upper() for v in value if isinstance(v, str)]
    kinds = [n for n in names if n in _SCHEMA_TYPES]
    null = "NULL" in names
    if len(kinds) == 1:
        return kinds[0], null, []
    return None, null, [{"type": k} for k in kinds]


def _enum(node: Json, out: Json) -> bool:
    """Copy `enum`/`const` into `out` as Gemini wants them; True when null is allowed."""
    if isinstance(node.get("enum"), list):
        values = list(node["enum"])
    elif "const" in node:
        values = [node["const"]]
    else:
        return False
    nullable = None in values
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        out["enum"] = values
        out.setdefault("type", "STRING")
    elif values:  # Gemini enums are strings only: keep the constraint as a hint to the model
        allowed = ", ".join(orjson.dumps(v).decode() for v in values)
        description = node.get("description")
        out["description"] = (
            f"{description} (allowed values: {allowed})" if description else f"Allowed values: {allowed}"
        )
    return nullable


# -- generationConfig --------------------------------------------------------------------


def _generation_config(body: Json, upstream: str) -> Json:
    config: Json = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            config[key] = value

    put("temperature", number(body, "temperature", 0, 2))
    put("topP", number(body, "top_p", 0, 1))
    put("topK", _integer(body, "top_k", 1))
    put("maxOutputTokens", max_output_tokens(body))
    stop = stop_list(body)
    if stop:
        if len(stop) > _MAX_STOP:
            raise InvalidRequest(
                f"Gemini accepts at most {_MAX_STOP} stop sequences.", param="stop", code="invalid_value"
            )
        config["stopSequences"] = stop
    n = _integer(body, "n", 1)
    if n is not None and n > 1:
        config["candidateCount"] = n
    put("seed", _integer(body, "seed", None))
    put("presencePenalty", number(body, "presence_penalty", -2, 2))
    put("frequencyPenalty", number(body, "frequency_penalty", -2, 2))
    if fields.boolean(body, "logprobs", "logprobs"):
        config["responseLogprobs"] = True
        top = _integer(body, "top_logprobs", 0)
        if top:
            config["logprobs"] = top
    _response_format(body.get("response_format"), config)
    effort = fields.choice(body, "reasoning_effort", "reasoning_effort", _EFFORTS)
    if effort is not None:
        config["thinkingConfig"] = _thinking(effort, upstream)
    return config


def _integer(body: Json, name: str, low: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise InvalidRequest(f"'{name}' must be an integer{bound}.", param=name, code="invalid_value")
    return value


def _response_format(spec: Any, config: Json) -> None:
    if spec is None:
        return
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
        return
    if kind == "json_schema" and isinstance(spec.get("json_schema"), dict):
        config["responseMimeType"] = "application/json"
        schema = spec["json_schema"].get("schema")
        if schema is not None:
            config["responseSchema"] = clean_schema(schema, "response_format.json_schema.schema")
        return
    raise InvalidRequest(
        "'response_format' must be of type text, json_object or json_schema (with a json_schema object).",
        param="response_format",
        code="invalid_value",
    )


def _gemini3(upstream: str) -> bool:
    """Gemini 3 models think in levels and insist on signed function calls."""
    return upstream.removeprefix("models/").startswith("gemini-3")


def _thinking(effort: str, upstream: str) -> Json:
    thinking: Json = {"includeThoughts": effort != "none"}
    if _gemini3(upstream):
        thinking["thinkingLevel"] = _LEVELS.get(effort, "HIGH")
    else:
        thinking["thinkingBudget"] = _BUDGETS.get(effort, _MAX_BUDGET)
    return thinking


# -- Gemini response -> OpenAI -----------------------------------------------------------


def _choice(candidate: Json, position: int) -> Json:
    """One candidate of a whole response as an OpenAI choice."""
    reason = _check_finish(candidate)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[Json] = []
    for part in _parts(candidate):
        if isinstance(part.get("functionCall"), dict):
            call = _tool_call(part)
            if call is not None:
                calls.append(call)
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
    message: Json = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    return {
        "index": _index(candidate, position),
        "message": message,
        "logprobs": _logprobs(candidate),
        "finish_reason": _finish_reason(reason, bool(calls)),
    }


def _candidates(response: Json) -> list[Json]:
    candidates = response.get("candidates")
    return [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []


def _parts(candidate: Json) -> list[Json]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None  # absent on MAX_TOKENS, SAFETY...
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _index(candidate: Json, position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position  # Vertex omits 0


def _block_reason(response: Json) -> str | None:
    feedback = response.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return str(reason) if reason else None


def _blocked_message(reason: str) -> str:
    return f"Gemini blocked the prompt (blockReason: {reason}); no answer was generated."


def _check_finish(candidate: Json) -> str | None:
    """The candidate's finishReason; raises for the reasons that leave no usable answer."""
    reason = candidate.get("finishReason")
    if not isinstance(reason, str):
        return None
    detail = candidate.get("finishMessage")
    detail = f": {detail}" if isinstance(detail, str) and detail else "."
    if reason in _FAILED:
        raise UpstreamError(f"{_FAILED[reason]} (finishReason {reason}){detail}", code="upstream_bad_output")
    if reason == _MISSING_SIGNATURE:
        raise InvalidRequest(
            "Gemini needs the thought signature of an earlier tool call: send tool call ids back exactly "
            f"as the gateway returned them (finishReason {reason}){detail}",
            code="missing_thought_signature",
        )
    return reason


def _opens_with_call(candidate: Json) -> bool:
    """Whether a candidate opens with a function call rather than text or a thought."""
    for part in _parts(candidate):
        if isinstance(part.get("functionCall"), dict):
            return True
        if isinstance(part.get("text"), str) and part["text"]:
            return False
    return False


def _finish_reason(reason: str | None, called: bool) -> str:
    if reason in _LENGTH:
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called else "stop"


def _tool_call(part: Json) -> Json | None:
    call = part["functionCall"]
    if call.get("willContinue") or "partialArgs" in call:
        # Vertex's streamFunctionCallArguments: pieces to assemble by JSON path.  The
        # Developer API never sends them; refuse rather than hand out half a call.
        raise UpstreamError(
            "Gemini sent partial function-call arguments (streamFunctionCallArguments), "
            "which this gateway does not assemble.",
            code="upstream_bad_output",
        )
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = call.get("args")
    signature = part.get("thoughtSignature")
    return {
        "id": new_tool_call_id(signature if isinstance(signature, str) else None),
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(args if isinstance(args, dict) else {}).decode()},
    }


def _logprobs(candidate: Json) -> Json | None:
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    chosen = [c for c in result.get("chosenCandidates") or [] if isinstance(c, dict)]
    tops = result.get("topCandidates") or []
    content = []
    for k, token in enumerate(chosen):
        entry = _token_logprob(token)
        top = tops[k].get("candidates") if k < len(tops) and isinstance(tops[k], dict) else None
        entry["top_logprobs"] = [_token_logprob(t) for t in top or [] if isinstance(t, dict)]
        content.append(entry)
    return {"content": content, "refusal": None}


def _token_logprob(token: Json) -> Json:
    text = str(token.get("token") or "")
    logprob = token.get("logProbability")
    return {"token": text, "logprob": float(logprob or 0.0), "bytes": list(text.encode())}


def _count(meta: Any, key: str) -> int:
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(meta: Any) -> Json:
    thoughts = _count(meta, "thoughtsTokenCount")
    return usage_dict(
        _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount"),
        _count(meta, "candidatesTokenCount") + thoughts,
        cached=_count(meta, "cachedContentTokenCount"),
        reasoning=thoughts,
    )


def _status_of(err: Json) -> int:
    code = err.get("code")
    return code if isinstance(code, int) and 400 <= code < 600 else 500


def _retry_delay(details: list[Json]) -> str | None:
    """RetryInfo.retryDelay ("34.4s") as whole seconds, rounded up, for Retry-After."""
    for detail in details:
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("RetryInfo") and isinstance(delay, str):
            try:
                return str(max(1, math.ceil(float(delay.removesuffix("s")))))
            except ValueError:
                return None
    return None


# -- embeddings --------------------------------------------------------------------------


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest(
        "Gemini embedding models take text only: 'input' must be a string or an array of strings.",
        param="input",
        code="invalid_value",
    )


def _float32_base64(values: list[Any]) -> str:
    """What OpenAI sends for encoding_format=base64: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


# -- streaming ---------------------------------------------------------------------------


class _GeminiStream(StreamTranslator):
    """Each Gemini SSE event is a whole response fragment; we turn its parts into deltas.

    finishReason is only remembered (old models repeat STOP on every event) and
    acted on at EOF, when the finish chunk per choice and the usage chunk go out."""

    def __init__(self, reply: Reply, adapter: GeminiAdapter) -> None:
        super().__init__(reply)
        self.adapter = adapter
        self.seen_event = False
        self.started: set[int] = set()  # choices whose role chunk went out
        self.calls: dict[int, int] = {}  # tool calls emitted so far, per choice
        self.reasons: dict[int, str] = {}  # the latest finishReason, per choice
        self.blocked: str | None = None

    # usageMetadata comes with every event; it is converted only when read (at the end):
    # converting each one was 5 % of a Gemini stream in the profile (scripts/bench)
    @property  # type: ignore[override]
    def usage(self) -> Json | None:
        return _usage(self._meta) if self._meta is not None else self._usage

    @usage.setter
    def usage(self, value: Json | None) -> None:
        self._meta: Json | None = None
        self._usage = value

    def feed(self, event: Event) -> list[Json]:
        response = self.adapter.parse_json(event.data)
        if isinstance(response.get("error"), dict):
            raise self.adapter.error_from_body(_status_of(response["error"]), response, {})
        if not self.seen_event and isinstance(response.get("responseId"), str) and response["responseId"]:
            self.reply.upstream_id = response["responseId"]  # Google's id, for the usage row
        self.seen_event = True
        if isinstance(response.get("usageMetadata"), dict):
            self._meta = response["usageMetadata"]  # cumulative: the last one wins
        candidates = _candidates(response)
        out: list[Json] = []
        if not candidates and (blocked := _block_reason(response)) is not None:
            self.blocked = blocked
            out += self._start(0)
            out.append(self.reply.delta({"refusal": _blocked_message(blocked)}))
            return out
        for position, candidate in enumerate(candidates):
            index = _index(candidate, position)
            reason = _check_finish(candidate)
            if index not in self.started:
                out += self._start(index, None if _opens_with_call(candidate) else "")
            out += self._deltas(candidate, index)
            if reason is not None:
                self.reasons[index] = reason
        return out

    def _start(self, index: int, content: str | None = "") -> list[Json]:
        """The role chunk of a choice; `content` null before a tool call, as OpenAI sends it."""
        if index in self.started:
            return []
        self.started.add(index)
        return [self.reply.delta({"role": "assistant", "content": content}, None, index)]

    def _deltas(self, candidate: Json, index: int) -> list[Json]:
        out: list[Json] = []
        logprobs = _logprobs(candidate)
        for part in _parts(candidate):
            if isinstance(part.get("functionCall"), dict):
                call = _tool_call(part)
                if call is not None:
                    k = self.calls.get(index, 0)
                    self.calls[index] = k + 1
                    out.append(self.reply.delta({"tool_calls": [{"index": k, **call}]}, None, index))
                continue
            text = part.get("text")
            if not isinstance(text, str) or not text:
                continue  # e.g. the empty part that only carries a thoughtSignature
            if part.get("thought"):
                out.append(self.reply.delta({"reasoning_content": text}, None, index))
                continue
            chunk = self.reply.delta({"content": text}, None, index)
            if logprobs is not None:  # this event's tokens ride on its first text delta
                chunk["choices"][0]["logprobs"], logprobs = logprobs, None
            out.append(chunk)
        return out

    def finish(self) -> list[Json]:
        if self.usage is None:
            self.usage = usage_dict(0, 0)
        if self.blocked is not None:
            return self.closing([(0, "content_filter")])
        if not self.started or any(index not in self.reasons for index in self.started):
            raise truncated(self.adapter.provider)
        return self.closing(
            [
                (index, _finish_reason(self.reasons[index], self.calls.get(index, 0) > 0))
                for index in sorted(self.started)
            ]
        )
