"""Provider state carried through the client, in one opaque string.

A hub answer can hold state that the next turn must send back byte for byte:
Anthropic's thinking signature (`reasoning_signature`), the reasoning text some
upstreams want again (`reasoning_content`), and tool-call ids that carry Gemini
thought signatures (`call_<24>__ts_<signature>`, often 400+ characters).  A dialect
whose ids are limited (Responses `call_id`: 1..64 characters) and which has one
opaque slot that clients replay as received (Responses `reasoning` items'
`encrypted_content`, Messages `thinking.signature`) uses this module to:

- give each id that does not fit a short, deterministic replacement
  (`short_call_id`: `call_` + 32 characters of base64url(sha256(original))).  The
  same original always gives the same short id, so a call and its output stay
  paired across turns without any store;
- put an envelope in the slot: `gwr1.` + base64url(JSON) holding the reasoning
  text, the signature and the map short id -> original id (`encode`), and read it
  back (`decode`).

There is no secret and no MAC on purpose: the envelope holds only what the client
already received, and each upstream validates its own signatures, so a tampered
value fails at the provider exactly as it would without the gateway.  `decode`
answers None for anything that is not ours (OpenAI's own `gAAAA...` encrypted
reasoning, another gateway's value): the dialect then drops it, as state from
another provider must never reach an upstream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Final

import orjson

PREFIX: Final = "gwr1."  # gateway reasoning, version 1
_FITS: Final = re.compile(r"[A-Za-z0-9_-]+")
RESPONSES_ID_LIMIT: Final = 64  # Responses `call_id` is 1..64 characters


class DamagedState(ValueError):
    """An envelope with our prefix that does not decode: the client altered it."""


@dataclass(slots=True)
class Carried:
    """The hub state of one assistant turn that must travel through the client."""

    reasoning_content: str | None = None
    reasoning_signature: str | None = None
    call_ids: dict[str, str] = field(default_factory=dict)  # short call id -> original hub id

    def __bool__(self) -> bool:
        return bool(self.reasoning_content or self.reasoning_signature or self.call_ids)

    def merge(self, other: Carried) -> None:
        """Add the state of a later envelope of the same turn (a turn may be split over
        several reasoning items: its text first, a signature sent at the end)."""
        if other.reasoning_content:
            self.reasoning_content = (self.reasoning_content or "") + other.reasoning_content
        if other.reasoning_signature is not None:
            self.reasoning_signature = other.reasoning_signature
        self.call_ids.update(other.call_ids)


def short_call_id(original: str, limit: int = RESPONSES_ID_LIMIT) -> str:
    """`original` when it is 1..limit characters of [A-Za-z0-9_-], else its short form."""
    if len(original) <= limit and _FITS.fullmatch(original):
        return original
    digest = base64.urlsafe_b64encode(hashlib.sha256(original.encode()).digest()).decode()
    return "call_" + digest[:32]


def encode(state: Carried) -> str:
    """The envelope for `state` (fields that are empty are left out)."""
    doc: dict[str, object] = {}
    if state.reasoning_content:
        doc["reasoning_content"] = state.reasoning_content
    if state.reasoning_signature is not None:
        doc["reasoning_signature"] = state.reasoning_signature
    if state.call_ids:
        doc["call_ids"] = state.call_ids
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


def is_envelope(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def decode(value: object) -> Carried | None:
    """The state in an envelope; None when `value` is not ours.  Raises
    `DamagedState` when it carries our prefix but was altered."""
    if not is_envelope(value):
        return None
    assert isinstance(value, str)
    body = value[len(PREFIX) :]
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        raise DamagedState("the gateway's reasoning state does not decode") from None
    if not isinstance(doc, dict):
        raise DamagedState("the gateway's reasoning state is not an object")
    content, signature, ids = doc.get("reasoning_content"), doc.get("reasoning_signature"), doc.get("call_ids", {})
    if not (
        isinstance(content, str | None)
        and isinstance(signature, str | None)
        and isinstance(ids, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in ids.items())
    ):
        raise DamagedState("the gateway's reasoning state has fields of the wrong type")
    return Carried(content, signature, ids)
