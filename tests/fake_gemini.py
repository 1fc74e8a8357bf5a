"""A request validator for `FakeUpstream` that rejects what the real Gemini API rejects.

`GeminiCheck()` is the `check` callable: it returns a `fakes.Reply` carrying
Google's own error body and status for a request the Developer API (v1beta) would
refuse, or None to let the scripted reply go out.  The rules and messages come from
Google's documentation and the 400s proxies have reported (unknown schema keys, type
arrays, empty OBJECT properties, nameless function responses, missing Gemini 3
thought signatures...).  Bind `check.fake` to the `FakeUpstream` to also check the
query string (FakeUpstream records it before calling the check).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Final

from fakes import FakeUpstream, Reply, json_reply

_PATH: Final = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_METHODS: Final = ("generateContent", "streamGenerateContent", "batchEmbedContents")
_REQUEST_KEYS: Final = frozenset(
    {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings", "cachedContent"}
)
_PART_DATA: Final = frozenset(
    {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode", "codeExecutionResult"}
)
_PART_META: Final = frozenset({"thought", "thoughtSignature", "videoMetadata", "mediaResolution"})
_GENERATION_KEYS: Final = frozenset(
    {
        "temperature",
        "topP",
        "topK",
        "candidateCount",
        "maxOutputTokens",
        "stopSequences",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "thinkingConfig",
        "mediaResolution",
        "speechConfig",
    }
)
_SCHEMA_KEYS: Final = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "properties",
        "required",
        "items",
        "anyOf",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
        "minimum",
        "maximum",
        "pattern",
        "default",
        "example",
        "propertyOrdering",
    }
)
_TYPES: Final = frozenset({"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})
_FORMATS: Final = {
    "STRING": frozenset({"enum", "date-time"}),
    "INTEGER": frozenset({"int32", "int64"}),
    "NUMBER": frozenset({"float", "double"}),
}
_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
_MIME_TYPES: Final = ("text/plain", "application/json", "text/x.enum")
_MODES: Final = ("AUTO", "ANY", "NONE", "VALIDATED")
MISSING_SIGNATURE: Final = (
    "Function call is missing a thought_signature in functionCall parts. This is required for tools to work "
    "correctly, and missing thought_signature may lead to degraded model performance. Additional data, function "
    "call `default_api:{name}` , position {position}. Please refer to "
    "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)


class Rejected(Exception):
    def __init__(self, status: int, rpc: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.reply = google_error(status, rpc, message, details)


def google_error(status: int, rpc: str, message: str, details: list[Any] | None = None) -> Reply:
    """A reply shaped like every Google API error."""
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc}
    if details:
        error["details"] = details
    return json_reply({"error": error}, status)


def invalid(message: str) -> Rejected:
    return Rejected(400, "INVALID_ARGUMENT", message)


def unknown_name(name: str, where: str) -> Rejected:
    return invalid(f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field.")


class GeminiCheck:
    """Validates each request like the Developer API; `key` is the API key it accepts."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.fake: FakeUpstream | None = None

    def __call__(self, path: str, headers: dict[str, str], body: Any) -> Reply | None:
        try:
            self._check(path, {k.lower(): v for k, v in headers.items()}, body)
        except Rejected as rejected:
            return rejected.reply
        return None

    def _check(self, path: str, headers: dict[str, str], body: Any) -> None:
        match = _PATH.match(path)
        if not match or match["method"] not in _METHODS:
            raise Rejected(404, "NOT_FOUND", f"Requested entity was not found: {path}")
        query = self.fake.last.query if self.fake is not None else {}
        if "key" in query:  # Google would accept it; the gateway must never put the key in a URL
            raise Rejected(400, "INVALID_ARGUMENT", "fake gemini: the API key must not travel in the query string")
        streaming = match["method"] == "streamGenerateContent"
        if self.fake is not None and streaming != (query.get("alt") == "sse"):
            raise invalid("fake gemini: alt=sse goes with streamGenerateContent, and only there")
        self._check_key(headers.get("x-goog-api-key"))
        if not isinstance(body, dict):
            raise invalid("Invalid JSON payload received. Expected an object.")
        if match["method"] == "batchEmbedContents":
            _check_embeddings(match["model"], body)
        else:
            check_generate(match["model"], body)

    def _check_key(self, key: str | None) -> None:
        if not key:
            raise Rejected(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if self.key is not None and key != self.key:
            raise Rejected(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            )


def check_generate(model: str, body: dict[str, Any]) -> None:
    """Raise `Rejected` where the real generateContent would answer 400."""
    for key in body:
        if key not in _REQUEST_KEYS:
            raise invalid(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified\n")
    if "systemInstruction" in body:
        _check_parts(body["systemInstruction"].get("parts"), "system_instruction", "system")
    _check_tools(body.get("tools"), body.get("toolConfig"))
    for i, content in enumerate(contents):
        role = content.get("role")
        if role not in ("user", "model"):
            raise invalid("Please use a valid role: user, model.")
        _check_parts(content.get("parts"), f"contents[{i}]", role)
    _check_function_turns(contents)
    if model.startswith("gemini-3"):
        _check_signatures(contents)
    _check_generation(model, body.get("generationConfig"))


def _check_parts(parts: Any, where: str, role: str) -> None:
    if not isinstance(parts, list) or not parts:
        raise invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n")
    for j, part in enumerate(parts):
        here = f"{where}.parts[{j}]"
        for key in part:
            if key not in _PART_DATA and key not in _PART_META:
                raise unknown_name(key, here)
        data = [key for key in part if key in _PART_DATA]
        if len(data) != 1:
            raise invalid(
                f"* GenerateContentRequest.{here}.data: required oneof field 'data' must have one initialized field"
            )
        if "text" in part and not isinstance(part["text"], str):
            raise invalid(f"Invalid value at '{here}.text' (TYPE_STRING)")
        if part.get("text") == "" and "thoughtSignature" not in part:
            raise invalid(
                "Unable to submit request because it has an empty text parameter. "
                "Add a value to the parameter and try again."
            )
        if "thoughtSignature" in part:
            _check_base64(part["thoughtSignature"], f"{here}.thought_signature")
        if "inlineData" in part:
            blob = part["inlineData"]
            if not blob.get("mimeType") or not isinstance(blob.get("data"), str):
                raise invalid(f"* GenerateContentRequest.{here}.inline_data: mime_type and data are required")
            _check_base64(blob["data"], f"{here}.inline_data.data")
        if "fileData" in part and not part["fileData"].get("fileUri"):
            raise invalid(f"* GenerateContentRequest.{here}.file_data.file_uri: file_uri is required")
        if "functionCall" in part:
            _check_function_call(part["functionCall"], here, role)
        if "functionResponse" in part:
            _check_function_response(part["functionResponse"], here, role)


def _check_base64(value: Any, where: str) -> None:
    """A bytes field in JSON: protobuf's JSON form reads standard and URL-safe base64
    alike, so Google's documented placeholder signatures (plain words) pass too."""
    try:
        text = value if isinstance(value, str) else ""
        base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
        if not isinstance(value, str):
            raise TypeError
    except (binascii.Error, TypeError, ValueError):
        raise invalid(f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed for \"{value}\"") from None


def _check_function_call(call: Any, where: str, role: str) -> None:
    if role != "model":
        raise invalid(f"* GenerateContentRequest.{where}.function_call: function calls belong in model turns")
    if not call.get("name"):
        raise invalid(f"* GenerateContentRequest.{where}.function_call.name: Name cannot be empty.")
    if "args" in call and not isinstance(call["args"], dict):
        raise invalid(f"Invalid value at '{where}.function_call.args' (type.googleapis.com/google.protobuf.Struct)")


def _check_function_response(response: Any, where: str, role: str) -> None:
    if role != "user":
        raise invalid(f"* GenerateContentRequest.{where}.function_response: function responses belong in user turns")
    if not response.get("name"):
        raise invalid(f"* GenerateContentRequest.{where}.function_response.name: Name cannot be empty.")
    if not isinstance(response.get("response"), dict):
        raise invalid(
            f"Invalid value at '{where}.function_response.response' (type.googleapis.com/google.protobuf.Struct), "
            f"{response.get('response')!r}"
        )


def _check_function_turns(contents: list[dict[str, Any]]) -> None:
    """Each function-call turn is answered by the next turn, one response per call, by name."""
    called: set[str] = set()
    for i, content in enumerate(contents):
        calls = [p["functionCall"] for p in content["parts"] if "functionCall" in p]
        called |= {c["name"] for c in calls}
        responses = [p["functionResponse"] for p in content["parts"] if "functionResponse" in p]
        for response in responses:
            if response["name"] not in called:
                raise invalid(
                    f"* GenerateContentRequest.contents[{i}]: function response {response['name']!r} "
                    "does not answer any earlier function call"
                )
        previous = contents[i - 1] if i else None
        asked = [p for p in previous["parts"] if "functionCall" in p] if previous else []
        if asked and content["role"] == "user" and len(responses) != len(asked):
            raise invalid(
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn."
            )


def _check_signatures(contents: list[dict[str, Any]]) -> None:
    """Gemini 3: in the current turn (since the last user text), the first function call of
    each model step must carry its thoughtSignature."""
    start = 0
    for i, content in enumerate(contents):
        if content["role"] == "user" and any("text" in p for p in content["parts"]):
            start = i
    position = 0
    for content in contents[start:]:
        calls = [p for p in content["parts"] if "functionCall" in p]
        position += len(content["parts"])
        if content["role"] == "model" and calls and "thoughtSignature" not in calls[0]:
            raise invalid(MISSING_SIGNATURE.format(name=calls[0]["functionCall"]["name"], position=position))


def _check_tools(tools: Any, tool_config: Any) -> None:
    if tools is None:
        if tool_config is not None:
            raise invalid("* GenerateContentRequest.tool_config: tool_config requires function declarations")
        return
    names: set[str] = set()
    for t, tool in enumerate(tools):
        for key in tool:
            if key not in ("functionDeclarations", "googleSearch", "codeExecution", "urlContext"):
                raise unknown_name(key, f"tools[{t}]")
        for d, declaration in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{t}].function_declarations[{d}]"
            for key in declaration:
                if key not in ("name", "description", "parameters", "parametersJsonSchema", "response", "behavior"):
                    raise unknown_name(key, where)
            if not _NAME.match(str(declaration.get("name") or "")):
                raise invalid(f"* GenerateContentRequest.{where}.name: Invalid function name.")
            names.add(declaration["name"])
            if "parameters" in declaration:
                parameters = declaration["parameters"]
                check_schema(parameters, f"{where}.parameters")
                if str(parameters.get("type", "")).upper() != "OBJECT":
                    raise invalid(f"* GenerateContentRequest.{where}.parameters.type: must be OBJECT")
    config = (tool_config or {}).get("functionCallingConfig") or {}
    if config.get("mode", "AUTO") not in _MODES:
        raise invalid(f"Invalid value at 'tool_config.function_calling_config.mode', \"{config.get('mode')}\"")
    allowed = config.get("allowedFunctionNames")
    if allowed is not None:
        if config.get("mode") not in ("ANY", "VALIDATED"):
            raise invalid(
                "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                "only allowed when mode is ANY or VALIDATED"
            )
        for name in allowed:
            if name not in names:
                raise invalid(f"* allowed_function_names: {name} is not a declared function")


def check_schema(schema: Any, where: str) -> None:
    """Gemini's `Schema` is an OpenAPI subset; it answers 400 to anything else."""
    if not isinstance(schema, dict):
        raise invalid(f"Invalid value at '{where}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Schema)")
    for key in schema:
        if key not in _SCHEMA_KEYS:
            raise unknown_name(key, where)
    kind = schema.get("type")
    if isinstance(kind, list):
        raise invalid(
            f"Invalid JSON payload received. Unknown name \"type\" at '{where}': Proto field is not "
            "repeating, cannot start list."
        )
    if kind is not None and (not isinstance(kind, str) or kind.upper() not in _TYPES):
        raise invalid(
            f"Invalid value at '{where}.type' "
            f'(type.googleapis.com/google.ai.generativelanguage.v1beta.Type), "{kind}"'
        )
    kind = str(kind or "").upper()
    if "enum" in schema and not all(isinstance(v, str) for v in schema["enum"]):
        raise invalid(f"Invalid value at '{where}.enum' (TYPE_STRING)")
    if "format" in schema and schema["format"] not in _FORMATS.get(kind, ()):
        raise invalid(f"* {where}.format: format {schema['format']!r} is not supported for {kind or 'this'} type")
    properties = schema.get("properties")
    if properties is not None:
        if kind == "OBJECT" and not properties:
            raise invalid(f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type")
        for name, sub in properties.items():
            check_schema(sub, f"{where}.properties[{name}].value")
    for name in schema.get("required") or []:
        if name not in (properties or {}):
            raise invalid(f"* GenerateContentRequest.{where}.required: property is not defined")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    for k, sub in enumerate(schema.get("anyOf") or []):
        check_schema(sub, f"{where}.any_of[{k}]")


def _check_generation(model: str, config: Any) -> None:
    if config is None:
        return
    for key in config:
        if key not in _GENERATION_KEYS:
            raise unknown_name(key, "generation_config")
    if len(config.get("stopSequences") or []) > 5:
        raise invalid("* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences allowed")
    mime = config.get("responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        raise invalid(
            f"* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are {_MIME_TYPES}"
        )
    if "responseSchema" in config:
        if mime != "application/json":
            raise invalid(
                "* GenerateContentRequest.generation_config.response_schema: "
                "requires response_mime_type application/json"
            )
        check_schema(config["responseSchema"], "generation_config.response_schema")
    thinking = config.get("thinkingConfig") or {}
    for key in thinking:
        if key not in ("includeThoughts", "thinkingBudget", "thinkingLevel"):
            raise unknown_name(key, "generation_config.thinking_config")
    if "thinkingLevel" in thinking and "thinkingBudget" in thinking:
        raise invalid("You can only set either thinking budget or thinking level.")
    if "thinkingLevel" in thinking and not model.startswith("gemini-3"):
        raise invalid("Thinking level is not supported for this model.")


def _check_embeddings(model: str, body: dict[str, Any]) -> None:
    for key in body:
        if key != "requests":
            raise invalid(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise invalid("* BatchEmbedContentsRequest.requests: requests must not be empty")
    for i, request in enumerate(requests):
        for key in request:
            if key not in ("model", "content", "taskType", "title", "outputDimensionality"):
                raise unknown_name(key, f"requests[{i}]")
        if request.get("model") != f"models/{model}":
            raise invalid(
                f"* BatchEmbedContentsRequest.requests[{i}].model: the model of each request must be "
                f"the one in the URL (models/{model})"
            )
        _check_parts((request.get("content") or {}).get("parts"), f"requests[{i}].content", "user")
