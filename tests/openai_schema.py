"""Validate what the gateway returns against OpenAI's published schemas
(extracted into tests/schemas/openai.json by scripts/extract_schemas.py)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

_DOC = Path(__file__).parent / "schemas" / "openai.json"


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = json.loads(_DOC.read_text())
    schema = {"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": f"#/$defs/{name}"}
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=None)


def validate(name: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError when `instance` is not a valid `name`."""
    _validator(name).validate(instance)


def validate_chunk(chunk: Any) -> None:
    validate("CreateChatCompletionStreamResponse", chunk)


def validate_completion(completion: Any) -> None:
    validate("CreateChatCompletionResponse", completion)


def validate_error(body: Any) -> None:
    validate("ErrorResponse", body)
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body


def validate_response(response: Any) -> None:
    validate("Response", response)


def validate_response_event(event: Any) -> None:
    validate("ResponseStreamEvent", event)


def validate_response_item_list(page: Any) -> None:
    validate("ResponseItemList", page)
