"""Reading a configuration file: YAML in, a validated `Config` out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.config.model import Config, ConfigError
from gateway.config.parser import Parser


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate `path`; raise `ConfigError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: {where}invalid YAML: {problem}"]) from None
    created = int(path.stat().st_mtime)
    return parse_config(raw, os.environ if environ is None else environ, created=created)


def parse_config(raw: Any, environ: Mapping[str, str], created: int = 0) -> Config:
    """Validate an already-parsed YAML document (tests build these in code)."""
    return Parser(environ, created).parse(raw)
