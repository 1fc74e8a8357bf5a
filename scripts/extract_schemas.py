"""Extract the OpenAI response schemas the tests validate against.

    python scripts/extract_schemas.py ../shared/spec/openai-openapi.json tests/schemas/openai.json

Copies the named schemas and everything they reference from OpenAI's OpenAPI file
into one JSON Schema document (so the suite runs without ../shared), rewriting
OpenAPI 3.0's `nullable: true`, which JSON Schema validators ignore, into an
explicit null alternative.
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
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(wanted)} schemas to {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
