"""Reading a configuration file: YAML in, a validated `Config` out.

The messages do not repeat the file's name: whoever reports them names it once
(`gateway check-config` prints "<file>: invalid configuration:" above them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.document import DocumentError, read_document
from gateway.config.model import Config, ConfigError
from gateway.config.parser import Parser


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, probe_database: bool = False
) -> Config:
    """Read and validate `path`; raise `ConfigError` listing every problem, each with
    its line and column.  A relative SQLite `database` is resolved against the file's
    folder.  `probe_database` also refuses an existing database path that is a
    directory or not an SQLite file (`check-config`; `serve` finds out when it opens it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"]) from None
    try:
        document = read_document(text)
    except DocumentError as exc:
        raise ConfigError([str(exc)]) from None
    parser = Parser(
        os.environ if environ is None else environ,
        int(path.stat().st_mtime),
        marks=document.marks,
        folder=path.absolute().parent,
        probe_database=probe_database,
    )
    for place, where, message in document.duplicates:
        parser.error_at(place, where, message)
    return parser.parse(document.data)


def parse_config(raw: Any, environ: Mapping[str, str], created: int = 0) -> Config:
    """Validate an already-parsed YAML document (tests build these in code)."""
    return Parser(environ, created).parse(raw)
