"""The generic field readers the section parsers share.  `FieldReader` accumulates
errors instead of stopping at the first one, so an operator fixes a file in one round;
read from a file, each error and warning starts with its line and column."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from gateway.config.document import Marks, Place

_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# `$NAME` without braces is not expanded.  Flagged when it is the whole value, or a word
# of it (`Bearer $TOKEN`, `http://$HOST/v1`); not inside a word, where a secret may
# simply hold a `$` (`sk-ab$CD12`), nor written back into a log from one.
_BARE_REF: Final = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$|(?:^|(?<=[\s/:@=]))\$([A-Z_][A-Z0-9_]*)(?=$|[\s/:@])")
_USERINFO: Final = re.compile(r"//[^/@\s]*@")  # `//user:password@` in a URL


def closest(name: object, choices: Iterable[str]) -> str | None:
    """The one of `choices` that `name` is most likely a typo of, if any is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return close[0] if close else None


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """'; did you mean 'X'?' for the closest of `choices`, or '' when none is close."""
    guess = closest(name, choices)
    return f"; did you mean {guess!r}?" if guess else ""


def join(where: str, key: object) -> str:
    """The path of `key` inside `where`; top-level fields are named alone (`models`)."""
    return str(key) if where == "(top level)" else f"{where}.{key}"


class FieldReader:
    def __init__(
        self,
        environ: Mapping[str, str],
        created: int,
        *,
        marks: Marks | None = None,
        folder: Path | None = None,
        probe_database: bool = False,
    ) -> None:
        self.env = environ
        self.created = created
        self.marks = marks or Marks()
        self.folder = folder  # the configuration file's folder; None for a document built in code
        self.probe_database = probe_database  # look inside an existing database file (check-config)
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._places: list[Place] = []  # of each error, to list them in file order
        # Fields given under a misspelled name (`modles:`): the unknown field is the one
        # error; "required" and what follows from the absence would only repeat it.
        self.misspelled: set[str] = set()
        # Sections whose absence or shape is already an error: what refers into them
        # (a tier's models, a key's tier) is not reported once more, name by name.
        self.failed: set[str] = set()

    def error(self, where: str, message: str, *, key: bool = False) -> None:
        """Record a problem at `where`; `key`: it is the field's name, not its value."""
        self.error_at(self.marks.place(where, key=key), where, message)

    def error_at(self, place: Place | None, where: str, message: str) -> None:
        self.errors.append(f"{_prefix(place)}{where}: {message}")
        self._places.append(place or (0, 0))

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{_prefix(self.marks.place(where))}{where}: {message}")

    def errors_in_file_order(self) -> list[str]:
        """Sorted by place (the order discovered when there are no places: a stable sort)."""
        order = sorted(range(len(self.errors)), key=lambda i: self._places[i])
        return [self.errors[i] for i in order]

    # -- generic field readers ---------------------------------------------------------

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                guess = closest(key, (name for name in allowed if name not in value))
                if guess is not None:
                    self.misspelled.add(join(where, guess))
                    self.error(join(where, key), f"unknown field; did you mean {guess!r}?", key=True)
                else:
                    self.error(join(where, key), f"unknown field (allowed: {', '.join(allowed)})", key=True)
        return value

    def string(self, obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
        value = obj.get(key)
        if value is None:
            if required and f"{where}.{key}" not in self.misspelled:
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
        # a URL's user:password is left out: a `$` in a password must not reach a log
        for bare in _BARE_REF.finditer(_USERINFO.sub("//", _ENV_REF.sub("", value))):
            name = bare.group(1) or bare.group(2)
            self.warn(where, f"${name} is taken literally; write ${{{name}}} to read the variable {name}")
        result = _ENV_REF.sub(substitute, value)
        if missing:
            return None, missing[0]
        return result, None


def _prefix(place: Place | None) -> str:
    return f"line {place[0]}, column {place[1]}: " if place else ""


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "nothing"
    return kinds.get(type(value), type(value).__name__)
