"""Typed reads of a client's JSON, each failure a 400 naming the field.

Dialects read many optional fields of many types; a wrong type must come back as
OpenAI's `invalid_type` 400 naming the exact place (`input[2].content[0].text`),
never as a TypeError deep in a translation.  Messages copy OpenAI's wording.
A null value reads as absent, as it does at OpenAI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.errors import InvalidRequest

_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object", list: "an array"}


def kind(value: Any) -> str:
    """How OpenAI names the JSON type of `value` in its messages."""
    return "null" if value is None else _NAMES.get(type(value), type(value).__name__)


def wrong_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {kind(value)} instead.",
        param=param,
        code="invalid_type",
    )


def invalid_value(param: str, value: Any, allowed: Iterable[str]) -> InvalidRequest:
    choices = ", ".join(f"'{a}'" for a in allowed)
    return InvalidRequest(
        f"Invalid value for '{param}': {value!r}. Supported values are: {choices}.",
        param=param,
        code="invalid_value",
    )


def string(obj: Mapping[str, Any], key: str, param: str) -> str | None:
    value = obj.get(key)
    if value is None or type(value) is str:
        return value
    raise wrong_type(param, "a string", value)


def required_string(obj: Mapping[str, Any], key: str, param: str) -> str:
    value = string(obj, key, param)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    return value


def boolean(obj: Mapping[str, Any], key: str, param: str) -> bool | None:
    value = obj.get(key)
    if value is None or type(value) is bool:
        return value
    raise wrong_type(param, "a boolean", value)


def integer(obj: Mapping[str, Any], key: str, param: str, minimum: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int:  # bool is not an integer here
        raise wrong_type(param, "an integer", value)
    if minimum is not None and value < minimum:
        raise InvalidRequest(
            f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    return value


def number(obj: Mapping[str, Any], key: str, param: str, low: float, high: float) -> float | int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise wrong_type(param, "a number", value)
    if value < low:
        raise InvalidRequest(
            f"Invalid '{param}': decimal below minimum value. Expected a value >= {low:g}, but got {value} instead.",
            param=param,
            code="decimal_below_min_value",
        )
    if value > high:
        raise InvalidRequest(
            f"Invalid '{param}': decimal above maximum value. Expected a value <= {high:g}, but got {value} instead.",
            param=param,
            code="decimal_above_max_value",
        )
    return value


def obj(container: Mapping[str, Any], key: str, param: str) -> dict[str, Any] | None:
    value = container.get(key)
    if value is None or type(value) is dict:
        return value
    raise wrong_type(param, "an object", value)


def array(container: Mapping[str, Any], key: str, param: str) -> list[Any] | None:
    value = container.get(key)
    if value is None or type(value) is list:
        return value
    raise wrong_type(param, "an array", value)


def choice(container: Mapping[str, Any], key: str, param: str, allowed: tuple[str, ...]) -> str | None:
    value = string(container, key, param)
    if value is None or value in allowed:
        return value
    raise invalid_value(param, value, allowed)
