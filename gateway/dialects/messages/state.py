"""Provider state that must outlive a turn, carried in a Messages client's own slot.

A Messages client replays `thinking` blocks byte for byte, so the `signature` of a
thinking block is where the gateway keeps what the hub needs back next turn: the
hub's `reasoning_signature`, and the upstream ids of tool calls whose ids
Anthropic's pattern `^[a-zA-Z0-9_-]+$` refuses (Kimi's `functions.Bash:0`...).
The envelope is the one every dialect uses (gateway/dialects/carry.py:
`gwr1.` + base64url JSON, no MAC); genuine Anthropic signatures are plain base64
and never contain '.', so they cannot be mistaken for ours.  This module only
fits it to Messages:

- ids are only replaced when they break the pattern (Anthropic sets no length
  limit), so Gemini's signed ids (`call_<24>__ts_<signature>`) reach the client
  as they are and still work when the client did not enable thinking;
- the reasoning text travels in the block's own `thinking` field, not again in
  the envelope;
- an envelope of ours that does not decode is the client's 400, naming the field.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Final

from gateway.dialects import carry
from gateway.dialects.carry import Carried
from gateway.errors import InvalidRequest

__all__ = ["EMPTY", "Carried", "client_tool_id", "seal", "unseal"]

EMPTY: Final = carry.encode(Carried())  # a thinking block of ours that carries nothing


def client_tool_id(upstream_id: str) -> str:
    """The id a Messages client sees for an upstream tool-call id: itself when the
    pattern allows it, else carry's deterministic `call_` + hash (stable across
    turns, so a call and its result always agree without any store)."""
    return carry.short_call_id(upstream_id, limit=sys.maxsize)


def seal(signature: str | None, ids: Mapping[str, str] | None) -> str:
    """The envelope for this state (EMPTY when there is none)."""
    return carry.encode(Carried(reasoning_signature=signature or None, call_ids=dict(ids or {})))


def unseal(value: str, param: str) -> Carried | None:
    """The state in an envelope of ours; None when `value` is not ours (an Anthropic
    signature, say)."""
    try:
        return carry.decode(value)
    except carry.DamagedState:
        raise InvalidRequest(
            f"{param}: this signature was issued by the gateway but has been altered; "
            "send thinking blocks back unchanged.",
            param=param,
            code="invalid_signature",
        ) from None
