"""Typed reads of values already in hand (list items, fetched fields), each failure a
400 naming the field.

gateway/dialects/fields.py reads `container[key]`; a Messages body is mostly arrays
of blocks, whose items have no key, so these take the value itself.  The wording
is the shared one (`wrong_type`, `invalid_value`), so both dialects say the same
thing; `param` paths use brackets for items: `messages[1].content[0].input`.
A value that must be there and is null or absent is "missing".
"""

from __future__ import annotations

from typing import Any, NoReturn

from gateway.dialects.fields import invalid_value, wrong_type
from gateway.errors import InvalidRequest

Json = dict[str, Any]


def fail(param: str, message: str) -> NoReturn:
    raise InvalidRequest(f"Invalid '{param}': {message}.", param=param, code="invalid_value")


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def obj(value: Any, param: str) -> Json:
    if type(value) is not dict:
        raise _missing(param) if value is None else wrong_type(param, "an object", value)
    return value


def opt_obj(value: Any, param: str) -> Json | None:
    return None if value is None else obj(value, param)


def array(value: Any, param: str) -> list[Any]:
    if type(value) is not list:
        raise _missing(param) if value is None else wrong_type(param, "an array", value)
    return value


def string(value: Any, param: str, *, empty: bool = True) -> str:
    if type(value) is not str:
        raise _missing(param) if value is None else wrong_type(param, "a string", value)
    if not empty and not value:
        fail(param, "expected a non-empty string")
    return value


def opt_string(value: Any, param: str) -> str | None:
    return None if value is None else string(value, param)


def boolean(value: Any, param: str) -> bool | None:
    if value is not None and type(value) is not bool:
        raise wrong_type(param, "a boolean", value)
    return value


def integer(value: Any, param: str, low: int) -> int | None:
    if value is None:
        return None
    if type(value) is not int:  # a bool is not an integer here
        raise wrong_type(param, "an integer", value)
    if value < low:
        fail(param, f"expected an integer >= {low}, but got {value} instead")
    return value


def number(value: Any, param: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float):
        raise wrong_type(param, "a number", value)
    if not low <= value <= high:
        fail(param, f"expected a number between {low:g} and {high:g}, but got {value} instead")
    return value


def choice(value: Any, param: str, allowed: tuple[str, ...]) -> str:
    if value is None:
        raise _missing(param)
    if value not in allowed:
        raise invalid_value(param, value, allowed)
    return value
