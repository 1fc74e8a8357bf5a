"""Typed reads out of a Messages body: a wrong type is the client's 400 naming the field.

Every value the dialect reads goes through one of these, so a malformed body can
never reach the translation as a TypeError (which would be our 500).  `param`
paths use brackets for list items: `messages[1].content[0].input`.
"""

from __future__ import annotations

from typing import Any, NoReturn

from gateway.errors import InvalidRequest

Json = dict[str, Any]


def fail(param: str, expected: str) -> NoReturn:
    raise InvalidRequest(f"{param}: {expected}.", param=param, code="invalid_type")


def obj(value: Any, param: str) -> Json:
    if not isinstance(value, dict):
        fail(param, "must be an object")
    return value


def opt_obj(value: Any, param: str) -> Json | None:
    return None if value is None else obj(value, param)


def array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        fail(param, "must be an array")
    return value


def string(value: Any, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        fail(param, "must be a string" if empty else "must be a non-empty string")
    return value


def opt_string(value: Any, param: str) -> str | None:
    return None if value is None else string(value, param)


def boolean(value: Any, param: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        fail(param, "must be a boolean")
    return value


def integer(value: Any, param: str, low: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        fail(param, f"must be an integer >= {low}")
    return value


def number(value: Any, param: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        fail(param, f"must be a number between {low} and {high}")
    return value


def choice(value: Any, param: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequest(
            f"{param}: must be one of {', '.join(repr(a) for a in allowed)}.", param=param, code="invalid_value"
        )
    return value
