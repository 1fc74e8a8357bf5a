"""A Responses create body -> the hub request (a Chat Completions body).

`to_hub(body, history, resolve_item)` reads every field the gateway serves and
answers a 400 naming the field for anything wrong or unservable; the pieces:

- messages: `instructions` first (as a system message; never inherited from the
  stored history, as at OpenAI), then the stored items of `previous_response_id`
  (`history`, resolved by the caller), then `input` (see `items.py`).  A run of
  assistant output items (reasoning, assistant messages, function calls) becomes
  ONE assistant message: texts joined, calls as `tool_calls`, and the state of
  the gateway's own reasoning items restored (`reasoning_content`,
  `reasoning_signature`, and the original tool-call ids, on the calls and on the
  matching `tool` messages; see `carry.py`).  Reasoning items that are not ours
  (OpenAI's encrypted reasoning) are dropped: only OpenAI can read them.
- tools: flat function tools -> chat's nested shape, `strict` as sent.  Built-in
  tools (web_search, file_search, mcp, custom, ...) are a 400 naming `tools[i]`.
  `tool_choice` maps one to one, except `allowed_tools`, which becomes the
  subset of `tools` it names plus its mode: the same promise, on every upstream.
- `text.format` -> `response_format` (json_schema un-flattened); `text.verbosity`
  -> `verbosity`; `reasoning.effort` -> `reasoning_effort`; `max_output_tokens`
  (>= 16, as at OpenAI) -> `max_completion_tokens`; `safety_identifier` (or
  `user`) -> `user`; `temperature`, `top_p`, `parallel_tool_calls`,
  `prompt_cache_key`, `service_tier` as they are; a stream always asks for usage.
- kept by the dialect, never sent upstream: `metadata`, `store`, `include`,
  `reasoning.summary`, `truncation` ("auto" is accepted but nothing is trimmed:
  an oversized conversation fails as with "disabled"), `previous_response_id`.
- refused: `background: true`, `conversation`, `prompt` (stored prompts) and
  `top_logprobs` > 0 (no log probabilities come back through the hub).
"""

from __future__ import annotations

from typing import Any, Final

from gateway.dialects import carry, fields
from gateway.dialects.responses.items import Resolver, input_items, normalise
from gateway.errors import InvalidRequest
from gateway.validation import model_of

Json = dict[str, Any]

EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SUMMARIES: Final = ("auto", "concise", "detailed")
INCLUDES: Final = (
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
    "message.input_image.image_url",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
)
_MIN_OUTPUT_TOKENS: Final = 16  # OpenAI's floor for max_output_tokens
_CHAT_DETAIL: Final = {"low": "low", "high": "high", "auto": "auto", "original": "high"}


def to_hub(body: Json, history: list[Json] | None = None, resolve_item: Resolver | None = None) -> Json:
    """The hub (Chat Completions) body for a Responses create body; see the module docstring."""
    hub: Json = {"model": model_of(body)}
    _refuse(body)
    messages: list[Json] = []
    instructions = fields.string(body, "instructions", "instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    located = [(normalise(item, "previous_response_id"), "previous_response_id") for item in history or ()]
    located += [(item, f"input[{i}]") for i, item in enumerate(input_items(body, resolve_item))]
    messages += _Conversation().messages(located)
    if all(m["role"] == "system" for m in messages):
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    hub["messages"] = messages
    _settings(body, hub)
    _tools(body, hub)
    _text(body, hub)
    return hub


def _refuse(body: Json) -> None:
    if fields.boolean(body, "background", "background"):
        raise InvalidRequest(
            "background is not supported on this gateway.", param="background", code="unsupported_parameter"
        )
    for name in ("conversation", "prompt"):
        if body.get(name) is not None:
            raise InvalidRequest(
                f"'{name}' is not supported on this gateway; send the conversation as 'input' "
                "or chain with 'previous_response_id'.",
                param=name,
                code="unsupported_parameter",
            )
    if fields.integer(body, "top_logprobs", "top_logprobs", minimum=0):
        raise InvalidRequest(
            "top_logprobs is not supported on this gateway.", param="top_logprobs", code="unsupported_parameter"
        )


def _settings(body: Json, hub: Json) -> None:
    """The scalar settings: checked, then copied under their Chat names."""
    stream = fields.boolean(body, "stream", "stream")
    if stream:
        hub["stream"] = True
        hub["stream_options"] = {"include_usage": True}  # the terminal event must carry usage
    fields.obj(body, "stream_options", "stream_options")  # include_obfuscation: we never pad
    for name in ("store", "parallel_tool_calls"):
        fields.boolean(body, name, name)
    if body.get("parallel_tool_calls") is not None:
        hub["parallel_tool_calls"] = body["parallel_tool_calls"]
    for name in ("previous_response_id", "prompt_cache_key", "prompt_cache_retention", "service_tier"):
        fields.string(body, name, name)
    for name in ("prompt_cache_key", "service_tier"):
        if body.get(name) is not None:
            hub[name] = body[name]
    fields.integer(body, "max_tool_calls", "max_tool_calls", minimum=0)  # built-in tools only
    fields.choice(body, "truncation", "truncation", ("auto", "disabled"))
    tokens = fields.integer(body, "max_output_tokens", "max_output_tokens", minimum=_MIN_OUTPUT_TOKENS)
    if tokens is not None:
        hub["max_completion_tokens"] = tokens
    for name, high in (("temperature", 2.0), ("top_p", 1.0)):
        value = fields.number(body, name, name, 0.0, high)
        if value is not None:
            hub[name] = value
    user = fields.string(body, "user", "user")
    safety = fields.string(body, "safety_identifier", "safety_identifier")
    if safety is not None and len(safety) > 64:
        raise InvalidRequest(
            "Invalid 'safety_identifier': string too long. Expected a string with maximum length "
            f"64, but got a string with length {len(safety)} instead.",
            param="safety_identifier",
            code="string_above_max_length",
        )
    if safety or user:
        hub["user"] = safety or user
    _metadata(body)
    for i, value in enumerate(fields.array(body, "include", "include") or ()):
        if type(value) is not str:
            raise fields.wrong_type(f"include[{i}]", "a string", value)
        if value not in INCLUDES:
            raise fields.invalid_value(f"include[{i}]", value, INCLUDES)
    reasoning = fields.obj(body, "reasoning", "reasoning") or {}
    effort = fields.choice(reasoning, "effort", "reasoning.effort", EFFORTS)
    for name in ("summary", "generate_summary"):
        fields.choice(reasoning, name, f"reasoning.{name}", SUMMARIES)
    if effort is not None:
        hub["reasoning_effort"] = effort


def _metadata(body: Json) -> None:
    metadata = fields.obj(body, "metadata", "metadata")
    if not metadata:
        return
    if len(metadata) > 16:
        raise InvalidRequest("Invalid 'metadata': at most 16 keys.", param="metadata", code="invalid_value")
    for key, value in metadata.items():
        if len(key) > 64:
            raise InvalidRequest(
                f"Invalid 'metadata': key {key[:20]!r}... is longer than 64 characters.",
                param="metadata",
                code="invalid_value",
            )
        if type(value) is not str:
            raise fields.wrong_type(f"metadata.{key}", "a string", value)
        if len(value) > 512:
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': longer than 512 characters.", param=f"metadata.{key}", code="invalid_value"
            )


def _tools(body: Json, hub: Json) -> None:
    tools: list[Json] = []
    for i, tool in enumerate(fields.array(body, "tools", "tools") or ()):
        where = f"tools[{i}]"
        if type(tool) is not dict:
            raise fields.wrong_type(where, "an object", tool)
        kind = fields.string(tool, "type", f"{where}.type")
        if kind != "function":
            raise InvalidRequest(
                f"Tool type '{kind}' ({where}) is not served by this model's provider; only function tools are.",
                param=where,
                code="unsupported_value",
            )
        function: Json = {"name": fields.required_string(tool, "name", f"{where}.name")}
        for key, read in (("description", fields.string), ("parameters", fields.obj), ("strict", fields.boolean)):
            value = read(tool, key, f"{where}.{key}")
            if value is not None:
                function[key] = value
        tools.append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if choice is None or type(choice) is str:
        if fields.choice(body, "tool_choice", "tool_choice", ("none", "auto", "required")) is not None:
            hub["tool_choice"] = choice
    elif type(choice) is not dict:
        raise fields.wrong_type("tool_choice", "a string or an object", choice)
    else:
        kind = fields.string(choice, "type", "tool_choice.type")
        if kind == "function":
            hub["tool_choice"] = {
                "type": "function",
                "function": {"name": fields.required_string(choice, "name", "tool_choice.name")},
            }
        elif kind == "allowed_tools":
            tools, hub["tool_choice"] = _allowed(choice, tools)
        else:
            raise InvalidRequest(
                f"tool_choice of type '{kind}' is not served by this model's provider.",
                param="tool_choice",
                code="unsupported_value",
            )
    if tools:
        hub["tools"] = tools


def _allowed(choice: Json, tools: list[Json]) -> tuple[list[Json], str]:
    """`allowed_tools` as the tools it allows plus its mode (upstreams other than
    OpenAI have no such choice; the model sees exactly the same tools)."""
    mode = fields.choice(choice, "mode", "tool_choice.mode", ("auto", "required"))
    if mode is None:
        raise InvalidRequest(
            "Missing required parameter: 'tool_choice.mode'.",
            param="tool_choice.mode",
            code="missing_required_parameter",
        )
    names = set()
    for k, tool in enumerate(fields.array(choice, "tools", "tool_choice.tools") or ()):
        where = f"tool_choice.tools[{k}]"
        if type(tool) is not dict or tool.get("type") != "function":
            raise InvalidRequest(
                f"'{where}': only function tools can be allowed on this gateway.", param=where, code="unsupported_value"
            )
        names.add(fields.required_string(tool, "name", f"{where}.name"))
    return [t for t in tools if t["function"]["name"] in names], mode


def _text(body: Json, hub: Json) -> None:
    text = fields.obj(body, "text", "text") or {}
    verbosity = fields.choice(text, "verbosity", "text.verbosity", ("low", "medium", "high"))
    if verbosity is not None:
        hub["verbosity"] = verbosity
    fmt = fields.obj(text, "format", "text.format")
    if fmt is None:
        return
    kind = fields.choice(fmt, "type", "text.format.type", ("text", "json_object", "json_schema"))
    if kind == "json_object":
        hub["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        spec: Json = {
            "name": fields.required_string(fmt, "name", "text.format.name"),
            "schema": fields.obj(fmt, "schema", "text.format.schema") or {},
        }
        for key, read in (("description", fields.string), ("strict", fields.boolean)):
            value = read(fmt, key, f"text.format.{key}")
            if value is not None:
                spec[key] = value
        hub["response_format"] = {"type": "json_schema", "json_schema": spec}


class _Conversation:
    """Normalised items -> chat messages, one assistant message per run of output items."""

    def __init__(self) -> None:
        self.out: list[Json] = []
        self.ids: dict[str, str] = {}  # short call id -> original hub id, from our envelopes
        self.run: list[tuple[Json, str]] = []  # the assistant output items of the current run
        self.outputs: list[tuple[Json, str]] = []  # tool messages and the call id they answer

    def messages(self, located: list[tuple[Json, str]]) -> list[Json]:
        for item, where in located:
            kind = item["type"]
            if kind in ("reasoning", "function_call") or (kind == "message" and item["role"] == "assistant"):
                self.run.append((item, where))
                continue
            self._flush()
            if kind == "message":
                self.out.append({"role": item["role"], "content": _chat_content(item["content"])})
            else:  # function_call_output
                self.out.append({"role": "tool", "tool_call_id": "", "content": _output_text(item, where)})
                self.outputs.append((self.out[-1], item["call_id"]))
        self._flush()
        for message, call_id in self.outputs:  # ids are restored once every envelope was read
            message["tool_call_id"] = self.ids.get(call_id, call_id)
        return self.out

    def _flush(self) -> None:
        if not self.run:
            return
        state = carry.Carried()
        texts: list[str] = []
        refusals: list[str] = []
        calls: list[Json] = []
        for item, where in self.run:
            if item["type"] == "reasoning":
                try:
                    found = carry.decode(item.get("encrypted_content"))
                except carry.DamagedState:
                    param = f"{where}.encrypted_content" if where.startswith("input") else where
                    raise InvalidRequest(
                        f"'{param}' was altered; send reasoning items back exactly as received.",
                        param=param,
                        code="invalid_value",
                    ) from None
                if found is not None:
                    state.merge(found)
            elif item["type"] == "function_call":
                function = {"name": item["name"], "arguments": item["arguments"]}
                calls.append({"id": item["call_id"], "type": "function", "function": function})
            else:
                for part in item["content"]:
                    if part["type"] == "refusal":
                        refusals.append(part["refusal"])
                    else:
                        texts.append(part["text"])
        self.run = []
        self.ids.update(state.call_ids)
        if not (texts or refusals or calls):
            return  # only reasoning: nothing an upstream could be shown as a turn
        message: Json = {"role": "assistant", "content": "".join(texts) or None}
        if refusals:
            message["refusal"] = "".join(refusals)
        if calls:
            for call in calls:
                call["id"] = state.call_ids.get(call["id"], call["id"])
            message["tool_calls"] = calls
        if state.reasoning_content:
            message["reasoning_content"] = state.reasoning_content
        if state.reasoning_signature is not None:
            message["reasoning_signature"] = state.reasoning_signature
        self.out.append(message)


def _chat_content(parts: list[Json]) -> str | list[Json]:
    if len(parts) == 1 and parts[0]["type"] == "input_text":
        return parts[0]["text"]
    out: list[Json] = []
    for part in parts:
        kind = part["type"]
        if kind == "input_text":
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            out.append(
                {"type": "image_url", "image_url": {"url": part["image_url"], "detail": _CHAT_DETAIL[part["detail"]]}}
            )
        else:  # input_file
            file: Json = {"file_data": part["file_data"]}
            if "filename" in part:
                file["filename"] = part["filename"]
            out.append({"type": "file", "file": file})
    return out


def _output_text(item: Json, where: str) -> str:
    output = item["output"]
    if type(output) is str:
        return output
    texts = []
    for j, part in enumerate(output):
        if part["type"] != "input_text":
            raise InvalidRequest(
                f"'{where}.output[{j}]': only text can be returned from a function on this gateway.",
                param=f"{where}.output[{j}]",
                code="unsupported_value",
            )
        texts.append(part["text"])
    return "".join(texts)
