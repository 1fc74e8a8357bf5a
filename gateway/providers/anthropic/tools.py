"""OpenAI `tools`, `tool_choice` and `parallel_tool_calls` -> Anthropic's, and JSON
mode (`response_format`) as the forced `json_answer` tool."""

from __future__ import annotations

from typing import Any, Final

from gateway.dialects import fields
from gateway.errors import InvalidRequest
from gateway.providers.base import Json

JSON_TOOL: Final = "json_answer"


def _tools(raw: Any) -> list[Json]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools", code="invalid_type")
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidRequest(
                f"{where}: only function tools are supported by Anthropic models.",
                param=f"{where}.type",
                code="unsupported_value",
            )
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.function.name is required.", param=f"{where}.function.name")
        if name == JSON_TOOL:
            raise InvalidRequest(
                f"{where}.function.name: '{JSON_TOOL}' is reserved by the gateway for JSON mode.",
                param=f"{where}.function.name",
                code="invalid_value",
            )
        schema = fields.obj(function, "parameters", f"{where}.function.parameters") or {}
        if schema.get("type") not in (None, "object"):  # Anthropic takes object schemas only
            raise InvalidRequest(
                f"{where}.function.parameters.type must be 'object' for Anthropic models.",
                param=f"{where}.function.parameters.type",
                code="invalid_value",
            )
        # the last `type` also replaces a null one, which the API refuses
        entry: Json = {"name": name, "input_schema": {"type": "object", "properties": {}} | schema | {"type": "object"}}
        description = fields.string(function, "description", f"{where}.function.description")
        if description:
            entry["description"] = description
        tools.append(entry)
    return tools


def _tool_choice(body: Json, tools: list[Json], thinking: bool) -> Json | None:
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        mapped: Json | None = {"type": "auto"} if choice == "auto" else None
    elif choice == "none":
        mapped = {"type": "none"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = fields.required_string(choice["function"], "name", "tool_choice.function.name")
        mapped = {"type": "tool", "name": name}
        if mapped["name"] not in {t["name"] for t in tools}:
            raise InvalidRequest(
                f"'tool_choice' names the function {mapped['name']!r}, which is not in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
    else:
        raise InvalidRequest(
            "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", ...} for Anthropic models.",
            param="tool_choice",
            code="unsupported_value",
        )
    if mapped is not None and mapped["type"] in ("any", "tool"):
        if not tools:
            raise InvalidRequest(
                "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice", code="invalid_value"
            )
        if thinking:
            raise InvalidRequest(
                "Anthropic models cannot be forced to call a tool while thinking: use 'tool_choice' 'auto' "
                "or drop 'reasoning_effort'.",
                param="tool_choice",
                code="unsupported_value",
            )
    if (
        fields.boolean(body, "parallel_tool_calls", "parallel_tool_calls") is False
        and tools
        and (mapped is None or mapped["type"] != "none")
    ):
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    return mapped


def _json_schema(response_format: Any) -> Json | None:
    """The schema JSON mode must follow, or None when the client did not ask for JSON."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            return {"type": "object"}
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise InvalidRequest(
                "'response_format.json_schema.schema' must describe a JSON object for Anthropic models.",
                param="response_format.json_schema.schema",
                code="invalid_value",
            )
        return schema
    raise InvalidRequest(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
        param="response_format",
        code="invalid_value",
    )


def _json_mode(
    schema: Json, tools: list[Json], choice: Json | None, thinking: bool
) -> tuple[list[Json], Json | None, str | None]:
    """(tools, tool_choice, system hint) that make the answer arrive as the input of `JSON_TOOL`."""
    kind = choice["type"] if choice else "auto"
    if kind in ("any", "tool"):
        return tools, choice, None  # the client wants a tool call, which is never the JSON answer
    answer = {
        "name": JSON_TOOL,
        "description": "Give your final answer by calling this tool: its input is the answer, as JSON.",
        "input_schema": schema,
    }
    if kind == "none":
        tools = []  # the client's tools may not be called; only the answer tool remains
    tools = [*tools, answer]
    serial = {"disable_parallel_tool_use": True} if choice and choice.get("disable_parallel_tool_use") else {}
    if thinking:  # forcing a tool is not allowed while thinking: ask instead
        hint = f"Answer only by calling the {JSON_TOOL} tool, with no text before or after it."
        return tools, {"type": "auto", **serial}, hint
    if len(tools) > 1:
        hint = f"When you have the final answer, give it by calling the {JSON_TOOL} tool."
        return tools, {"type": "any", **serial}, hint
    return tools, {"type": "tool", "name": JSON_TOOL}, None
