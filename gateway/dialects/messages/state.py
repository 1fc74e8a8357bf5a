"""Provider state that must outlive a turn, carried in a Messages client's own slot.

A Messages client replays `thinking` blocks byte for byte, so the `signature` of a
thinking block is where the gateway keeps what the hub needs back next turn:

- the hub's `reasoning_signature` (opaque state of the upstream that thought), and
- tool-call ids that Anthropic's pattern `^[a-zA-Z0-9_-]+$` refuses, which go to
  the client as `toolu_` + base64url(sha256(id))[:24] and come back as the original.

The value is `gwm1.` + base64url(JSON), no padding: `{"s": signature, "t": {shown
id: original id}}` with empty members left out (`gwm1.e30` is "ours, no state").
Genuine Anthropic signatures are plain base64 and never contain '.', so the prefix
cannot collide with one.  There is no MAC: the envelope only restores hub fields
a client may send directly on /v1/chat/completions anyway, so forging one gains
nothing; a value with our prefix that does not decode is the client's 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import orjson

from gateway.errors import InvalidRequest

PREFIX: Final = "gwm1."
EMPTY: Final = PREFIX + "e30"  # base64url of b"{}": a thinking block of ours that carries nothing
TOOL_ID: Final = re.compile(r"^[a-zA-Z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class Carried:
    """What one envelope holds."""

    signature: str | None = None  # the hub's reasoning_signature
    ids: dict[str, str] = field(default_factory=dict)  # id shown to the client -> upstream id


def client_tool_id(upstream_id: str) -> str:
    """The id a Messages client may see for an upstream tool-call id: itself when
    Anthropic's pattern allows it, else a deterministic stand-in (stable across
    turns, so a call and its result always agree without any store)."""
    if TOOL_ID.match(upstream_id):
        return upstream_id
    digest = base64.urlsafe_b64encode(hashlib.sha256(upstream_id.encode()).digest()).decode()
    return "toolu_" + digest[:24]


def seal(signature: str | None, ids: Mapping[str, str] | None) -> str:
    """The envelope for this state (EMPTY when there is none)."""
    payload: dict[str, object] = {}
    if signature:
        payload["s"] = signature
    if ids:
        payload["t"] = dict(ids)
    if not payload:
        return EMPTY
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()


def unseal(value: str, param: str) -> Carried | None:
    """The state in an envelope of ours; None when `value` is not ours (an Anthropic
    signature, say).  A value with our prefix that does not decode is a 400."""
    if not value.startswith(PREFIX):
        return None
    encoded = value[len(PREFIX) :]
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        payload = None
    if not isinstance(payload, dict):
        raise _tampered(param)
    signature, ids = payload.get("s"), payload.get("t", {})
    if signature is not None and not isinstance(signature, str):
        raise _tampered(param)
    if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
        raise _tampered(param)
    return Carried(signature, ids)


def _tampered(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param}: this signature was issued by the gateway but has been altered; send thinking blocks back unchanged.",
        param=param,
        code="invalid_signature",
    )
