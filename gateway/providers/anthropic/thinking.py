"""The thinking round trip: a turn's thinking blocks <-> the `reasoning_signature`
string an OpenAI message carries (Anthropic's own signature for one thinking
block, else `BLOCKS_PREFIX` + base64url of the blocks' JSON)."""

from __future__ import annotations

import base64
import binascii
from typing import Final

import orjson

from gateway.dialects import fields
from gateway.errors import InvalidRequest
from gateway.providers.base import Json

BLOCKS_PREFIX: Final = "thinking-blocks.v1:"  # Anthropic signatures are plain base64: never contain ':'

_THINKING_TYPES: Final = frozenset({"thinking", "redacted_thinking"})


def encode_reasoning(blocks: list[Json]) -> str | None:
    """The `reasoning_signature` for a turn's thinking blocks (see the module docstring)."""
    if not blocks:
        return None
    if len(blocks) == 1 and blocks[0]["type"] == "thinking":
        return blocks[0]["signature"]
    return BLOCKS_PREFIX + base64.urlsafe_b64encode(orjson.dumps(blocks)).decode()


def _thinking_blocks(message: Json, where: str) -> list[Json]:
    """The thinking blocks an assistant message carries back, exactly as Anthropic sent them."""
    signature = message.get("reasoning_signature")
    if signature is None or signature == "":
        return []  # reasoning_content alone cannot be replayed: the API needs the signature
    param = f"{where}.reasoning_signature"
    if not isinstance(signature, str):
        raise InvalidRequest(f"{param} must be a string.", param=param, code="invalid_type")
    if not signature.startswith(BLOCKS_PREFIX):
        reasoning = fields.string(message, "reasoning_content", f"{where}.reasoning_content")
        return [{"type": "thinking", "thinking": reasoning or "", "signature": signature}]
    try:
        blocks = orjson.loads(base64.urlsafe_b64decode(signature[len(BLOCKS_PREFIX) :]))
    except (binascii.Error, ValueError):
        blocks = None
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and b.get("type") in _THINKING_TYPES for b in blocks
    ):
        raise InvalidRequest(f"{param} is damaged; send it back as received.", param=param, code="invalid_value")
    return blocks
