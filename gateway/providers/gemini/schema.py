"""JSON Schema -> the OpenAPI subset Gemini's `Schema` accepts (`clean_schema`),
for tool parameters and `response_format` schemas: unknown keys dropped, type
arrays and `const` rewritten, local `$ref`s inlined within node and depth limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from gateway.errors import InvalidRequest
from gateway.providers.base import Json

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
