"""The `database` setting on disk: where a relative path points, and whether the file
there can be the usage log, checked before `serve` would trip on it.

Only SQLite paths are checked; a `postgresql://` URL is the server's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from gateway.config.model import is_postgres

SQLITE_HEADER: Final = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def resolve(database: str, folder: Path) -> str:
    """A relative SQLite path is relative to the configuration file's folder: the file
    then means the same thing whichever directory the gateway is started from."""
    if is_postgres(database) or Path(database).is_absolute():
        return database
    return str(folder / database)


def folder_problem(database: str) -> tuple[str | None, str | None]:
    """(error, note) about the folder of an SQLite `database`.  The gateway creates the
    database's own folder at first start, and no more: a missing grandparent is far more
    often a typo (or an unmounted volume) than a wish for a new directory tree."""
    if is_postgres(database):
        return None, None
    folder = Path(database).parent
    if folder.is_dir():
        return None, None
    if folder.exists():
        return f"{folder} is not a directory", None
    if not folder.parent.is_dir():
        return f"the folder {folder.parent} does not exist (only the database's own folder is created)", None
    return None, f"the folder {folder} does not exist; the gateway creates it at first start"


def file_problem(database: str) -> str | None:
    """Why the file at `database` cannot be the usage log (None when it can): a directory,
    or a file that is not an SQLite database.  An empty file is fine (SQLite fills it)."""
    if is_postgres(database):
        return None
    path = Path(database)
    if path.is_dir():
        return f"{path} is a directory, not an SQLite database file"
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return None  # created at first start
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror or exc}"
    if header and header != SQLITE_HEADER:
        return f"{path} exists and is not an SQLite database"
    return None
