"""PostgreSQL plumbing shared by the usage log and the stored Responses.

- `asyncpg` is imported here, lazily (`driver()`): a gateway on SQLite runs without it.
- `describe(url)` names the database in log lines and errors: scheme, user, host,
  port and database, never the password (nor the query string, which may hold one).
- `one_line(exc, url)` is an error on one line, scrubbed of the URL's password should
  a library ever echo it.
- `migrate(...)` applies numbered migrations under a transaction-scoped advisory
  lock: instances starting together serialise on the lock, the first migrates, the
  others find the version current and change nothing.  Each applied migration is a
  row (version, applied_at) in the caller's version table, so "migrated once" can be
  checked from the database itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import asyncpg

CONNECT_TIMEOUT: Final = 5.0  # seconds to open a connection (and for its first round trip)
INSTALL_HINT: Final = "asyncpg is not installed (pip install 'gateway[postgres]')"


class MissingDriver(Exception):  # noqa: N818 - a condition, named as such
    """`asyncpg` is not installed."""


def driver() -> ModuleType:
    """The asyncpg module, imported on first use (raises MissingDriver without it)."""
    try:
        import asyncpg
    except ImportError:
        raise MissingDriver(INSTALL_HINT) from None
    return asyncpg


def describe(url: str) -> str:
    """`postgresql://user@host:port/db`: enough to find the database, nothing secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:  # a malformed port: asyncpg will say what is wrong with it
        return f"{url.split('://', 1)[0]}://(unparsable URL)"
    user = f"{unquote(parts.username)}@" if parts.username else ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{user}{host}:{port}{parts.path or '/'}"


def password(url: str) -> str | None:
    """The password in `url` (userinfo or `?password=`), to scrub it from messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return unquote(parts.password)
    match = re.search(r"(?:^|&)password=([^&]*)", parts.query)
    return unquote(match.group(1)) if match and match.group(1) else None


def one_line(exc: BaseException, url: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    secret = password(url)
    if secret:
        text = text.replace(secret, "***")
    return text


def spill_name(url: str) -> str:
    """A file-name-safe name for `url`'s database, stable across restarts and
    distinct per host, port, database and session settings (a `search_path`
    selects other tables), so spilled rows replay into the database they were
    meant for.  No credential goes into it."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or 5432
    except ValueError:
        host, port = "invalid", 0
        parts = urlsplit("")
    settings = "&".join(sorted(p for p in parts.query.split("&") if p and not p.startswith(("password=", "user="))))
    name = f"pg-{host}-{port}-{parts.path.strip('/') or 'default'}"
    if settings:
        name += "-" + hashlib.sha256(settings.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


async def connect(url: str, timeout: float = CONNECT_TIMEOUT) -> asyncpg.Connection:
    """One connection (raises MissingDriver, OSError, asyncpg errors, TimeoutError)."""
    return await driver().connect(url, timeout=timeout)


async def migrate(
    conn: asyncpg.Connection,
    *,
    lock: int,
    table: str,
    migrations: Sequence[str],
    after: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> int:
    """Bring the schema to `len(migrations)` in one transaction under advisory lock
    `lock`; `after` runs under the same lock (idempotent fix-ups).  Returns the
    version found.  Raises ValueError when the database is newer than this code."""
    async with conn.transaction():
        # held until the transaction ends: a second instance waits here, then sees
        # the version the first one wrote
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        found = int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {table}"))
        if found > len(migrations):
            raise ValueError(f"schema version {found} is newer than this gateway's ({len(migrations)})")
        for number, script in enumerate(migrations[found:], start=found + 1):
            await conn.execute(script)  # no arguments: several statements may go at once
            await conn.execute(f"INSERT INTO {table} (version) VALUES ($1)", number)
        if after is not None:
            await after(conn)
    return found


def sql_literal(value: Any) -> str:
    """A DEFAULT clause's value: numbers and booleans (as 0/1) as they are, text quoted."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
