"""Readers for the files in deploy/ (a systemd unit, a Dockerfile), shared by the tests
that check them and the test that runs the single-file build the way the unit does."""

from __future__ import annotations

import shlex
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _logical_lines(text: str, comment: tuple[str, ...]) -> list[str]:
    """Lines with comments dropped and backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(comment)):
            continue
        if line.startswith(comment):  # a comment inside a continued line: skipped, as both formats do
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending.rstrip())
    return out


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}: a key may repeat (SystemCallFilter=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in _logical_lines(path.read_text(), ("#", ";")):
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_value(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def unit_command(unit: dict[str, dict[str, list[str]]], key: str = "ExecStart") -> list[str]:
    return shlex.split(unit_value(unit, "Service", key))


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; a parser directive (# syntax=) is a comment here."""
    out = []
    for line in _logical_lines(path.read_text(), ("#",)):
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out
