"""One usage row: the `UsageRecord` handlers fill in, and its flat form (a tuple in
`COLUMNS` order) that every usage sink and the spill file take.

Kept apart from the writer (`gateway.usage`) and the SQLite sink so both can share it
without importing each other."""

from __future__ import annotations

import math
import operator
import time
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final

CLIENT_CLOSED: Final = 499  # nginx's status for "client closed request"

Row = tuple[Any, ...]  # a UsageRecord's values in COLUMNS order


class UsageLogError(Exception):
    """The usage database cannot be opened; the message is one line naming the path and the cause."""


@dataclass(slots=True)
class UsageRecord:
    ts: float
    request_id: str | None = None
    endpoint: str | None = None
    key_name: str | None = None
    tier: str | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    error_code: str | None = None
    attempts: str | None = None
    tokens_estimated: bool = False  # the token counts are our estimate, not the upstream's report
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it (Anthropic's cache creation)
    upstream_id: str | None = None  # the provider's own id of the answer (support tickets quote it)

    def add_usage(self, usage: Any) -> None:
        """Take token counts from an OpenAI-shaped usage object, tolerating junk."""
        if not isinstance(usage, dict):
            return
        self.prompt_tokens = _int(usage.get("prompt_tokens"))
        self.completion_tokens = _int(usage.get("completion_tokens"))
        self.total_tokens = _int(usage.get("total_tokens")) or self.prompt_tokens + self.completion_tokens
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            self.cached_tokens = _int(details.get("cached_tokens"))
            self.cache_write_tokens = _int(details.get("cache_write_tokens"))


COLUMNS: Final = tuple(f.name for f in fields(UsageRecord))
# what a spilled row written by an older version lacks (a column added since) becomes
DEFAULTS: Final = {f.name: None if f.default is MISSING else f.default for f in fields(UsageRecord)}
# a C-level getter: dataclasses.astuple deep-copies and cost 4 % of a request (scripts/bench)
ROW: Final = operator.attrgetter(*COLUMNS)


def coerce_row(row: Row) -> Row:
    """`row` with every value of the type its column holds (junk becomes the default).

    Only for a batch the database refused for its data (a handler that put a dict in a
    string field, say): one bad row must neither block the log nor be lost."""
    return tuple(_COERCE[kind](value, default) for (kind, default), value in zip(_KINDS, row, strict=True))


def _as_int(value: Any, default: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    return value if isinstance(value, int) and -(2**63) <= value < 2**63 else default


def _as_float(value: Any, default: Any) -> Any:
    if isinstance(value, int | float) and math.isfinite(value) and abs(value) < 2**63:
        return float(value)
    return default


def _as_str(value: Any, default: Any) -> Any:
    return value if value is None or isinstance(value, str) else str(value)


_COERCE: Final = {"int": _as_int, "float": _as_float, "str": _as_str}
# (kind, default) per column, from the annotations ("float | None" -> float); ts defaults to 0
_KINDS: Final = tuple(
    (str(f.type).split()[0].replace("bool", "int"), 0.0 if f.name == "ts" else DEFAULTS[f.name])
    for f in fields(UsageRecord)
)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def now() -> float:
    return time.time()
