"""Google's error bodies: the RPC status -> HTTP status table, the status of an
error object, and RetryInfo -> Retry-After (used by the adapter's `error_from_body`)."""

from __future__ import annotations

import math
from typing import Final

from gateway.providers.base import Json

_RPC_STATUS: Final = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "CANCELLED": 500,
    "ABORTED": 503,
    "UNIMPLEMENTED": 500,
}


def _status_of(err: Json) -> int:
    code = err.get("code")
    return code if isinstance(code, int) and 400 <= code < 600 else 500


def _retry_delay(details: list[Json]) -> str | None:
    """RetryInfo.retryDelay ("34.4s") as whole seconds, rounded up, for Retry-After."""
    for detail in details:
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("RetryInfo") and isinstance(delay, str):
            try:
                return str(max(1, math.ceil(float(delay.removesuffix("s")))))
            except ValueError:
                return None
    return None
