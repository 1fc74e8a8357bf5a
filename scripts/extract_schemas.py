"""Extract the OpenAI response schemas the tests validate against.

    python scripts/extract_schemas.py ../shared/spec/openai-openapi.json tests/schemas/openai.json

Copies the named schemas and everything they reference from OpenAI's OpenAPI file
into one JSON Schema document (so the suite runs without ../shared), rewriting
OpenAPI 3.0's `nullable: true`, which JSON Schema validators ignore, into an
explicit null alternative.

`FIXES` then loosens the few places where the spec is stricter than what OpenAI
really sends (recorded traffic under tests/fixtures, and dialects.md A5/A6), so
that real answers validate; each fix says why.  They only widen: anything the
spec accepts is still accepted.
"""

from __future__ import annotations

import json
import sys
from typing import Any

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "CreateEmbeddingResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
)
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref[len(PREFIX) :])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def denull(node: Any) -> Any:
    if isinstance(node, list):
        return [denull(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: denull(v) for k, v in node.items()}
    node = {k: (v.replace(PREFIX, "#/$defs/") if k == "$ref" else v) for k, v in node.items()}
    if node.pop("nullable", False):
        if "type" in node and "$ref" not in node and not any(k in node for k in ("anyOf", "oneOf", "allOf")):
            types = node["type"] if isinstance(node["type"], list) else [node["type"]]
            node["type"] = [*types, "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [node, {"type": "null"}]}


def _not_required(schema: dict[str, Any], *names: str) -> None:
    schema["required"] = [r for r in schema["required"] if r not in names]


def _fix_user(defs: dict[str, Any]) -> None:
    """Every real Response carries `"user": null`; the spec types it string only."""
    props = defs["ModelResponseProperties"]["properties"]
    props["user"] = _nullable(props["user"])


def _fix_usage(defs: dict[str, Any]) -> None:
    """`usage` is null in `response.created`/`in_progress` (and in the spec's own
    examples); `cache_write_tokens` is newer than most traffic (recorded streams
    of 2026 omit it), so it cannot be required."""
    props = defs["Response"]["allOf"][2]["properties"]
    props["usage"] = _nullable(props["usage"])
    _not_required(defs["ResponseUsage"]["properties"]["input_tokens_details"], "cache_write_tokens")


def _fix_arguments_done(defs: dict[str, Any]) -> None:
    """OpenAI's `response.function_call_arguments.done` has no `name` (every
    recording); the gateway sends it, but the schema must not require it."""
    _not_required(defs["ResponseFunctionCallArgumentsDoneEvent"], "name")


def _fix_error_event(defs: dict[str, Any]) -> None:
    """A mid-stream `error` event from OpenAI nests its fields under `error`
    (`{"type":"error","sequence_number":N,"error":{type,code,message,param}}`,
    dialects.md A6.5); openai-python raises on exactly that shape and yields the
    spec's flat one as a plain event.  Accept both."""
    nested = {
        "type": "object",
        "properties": {
            "type": {"enum": ["error"]},
            "sequence_number": {"type": "integer"},
            "error": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                },
                "required": ["type", "code", "message", "param"],
            },
        },
        "required": ["type", "sequence_number", "error"],
    }
    defs["ResponseErrorEvent"] = {"anyOf": [defs["ResponseErrorEvent"], nested]}


def _fix_error_code(defs: dict[str, Any]) -> None:
    """Failed Responses carry codes outside the spec's enum (`insufficient_quota`,
    `context_length_exceeded`, `usage_not_included`: Codex branches on them)."""
    defs["ResponseErrorCode"] = {"type": "string", "description": defs["ResponseErrorCode"].get("description", "")}


FIXES = (_fix_user, _fix_usage, _fix_arguments_done, _fix_error_event, _fix_error_code)


def main(src: str, dst: str) -> None:
    schemas = json.load(open(src, encoding="utf-8"))["components"]["schemas"]
    wanted, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        todo.extend(refs(schemas[name]) - wanted)
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "Extracted by scripts/extract_schemas.py from openai/openai-openapi (MIT licence).",
        "$defs": {name: denull(schemas[name]) for name in sorted(wanted)},
    }
    for fix in FIXES:
        fix(doc["$defs"])
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(wanted)} schemas to {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
