"""The generic field readers the section parsers share.  `FieldReader` accumulates
errors instead of stopping at the first one, so an operator fixes a file in one round."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class FieldReader:
    def __init__(self, environ: Mapping[str, str], created: int) -> None:
        self.env = environ
        self.created = created
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # -- generic field readers ---------------------------------------------------------

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.error(f"{where}.{key}", f"unknown field (allowed: {', '.join(allowed)})")
        return value

    def string(self, obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.error(f"{where}.{key}", "required")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            self.error(f"{where}.{key}", f"must be a non-empty string, got {_kind(value)}")
            return None
        return value

    def number(
        self, obj: dict[str, Any], key: str, where: str, default: float, *, integer: bool = False, zero: bool = False
    ) -> float:
        value = obj.get(key, default)
        if isinstance(value, str):
            try:
                value = float(value) if not integer else int(value)
            except ValueError:
                pass
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or value < 0 or (value == 0 and not zero):
            kind = ("a non-negative " if zero else "a positive ") + ("integer" if integer else "number")
            self.error(f"{where}.{key}", f"must be {kind}, got {value!r}")
            return default
        return value

    def expand(self, value: str, where: str) -> tuple[str | None, str | None]:
        """Expand `${VAR}` references.  Returns (value, unset variable name); the value
        is None when a referenced variable has no value and no default."""
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            got = self.env.get(name)
            if got:
                return got
            if default is not None:
                return default
            missing.append(name)
            return ""

        if "${" in value and not _ENV_REF.search(value):
            self.error(where, "malformed ${...} reference (use ${VAR} or ${VAR:-default})")
        result = _ENV_REF.sub(substitute, value)
        if missing:
            return None, missing[0]
        return result, None


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "nothing"
    return kinds.get(type(value), type(value).__name__)
