"""Tool call ids that carry Gemini's thought signature: `new_tool_call_id` makes
one, `signature_of` reads the signature back (the package docstring has the format)."""

from __future__ import annotations

import re
import secrets
import string
from typing import Final

_SIG_MARK: Final = "__ts_"
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_BASE64: Final = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def new_tool_call_id(signature: str | None = None) -> str:
    """`call_<24 alphanumerics>`, plus `__ts_<signature, URL-safe base64>` when there is one."""
    head = "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))
    if not signature or not _BASE64.match(signature):
        return head
    return head + _SIG_MARK + signature.rstrip("=").replace("+", "-").replace("/", "_")


def signature_of(call_id: str) -> str | None:
    """The thought signature a tool call id of ours carries, in Google's base64; else None."""
    _, mark, encoded = call_id.partition(_SIG_MARK)
    if not mark or not encoded:
        return None
    signature = encoded.replace("-", "+").replace("_", "/")
    signature += "=" * (-len(signature) % 4)
    return signature if _BASE64.match(signature) else None
