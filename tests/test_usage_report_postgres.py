"""`gateway usage --errors / --json` read from PostgreSQL print exactly what they print
from SQLite (the same rows in both)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pg_support import pg_url_fixture, require_asyncpg  # noqa: F401 - fixtures
from test_cli import check_usage_outputs, usage_config, usage_outputs, write_usage

from gateway.usage import UsageStore
from gateway.usage_postgres import PostgresSink

require_asyncpg()


async def test_usage_errors_and_json_read_postgres_as_sqlite(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_usage(str(tmp_path / "u.db"))
    sqlite_out = await asyncio.to_thread(usage_outputs, usage_config(tmp_path, str(tmp_path / "u.db")), capsys)
    await write_usage(pg_url, await UsageStore.start(await PostgresSink.open(pg_url, spill_dir=tmp_path / "spill")))
    pg_out = await asyncio.to_thread(usage_outputs, usage_config(tmp_path, pg_url), capsys)
    assert pg_out == sqlite_out  # character for character
    check_usage_outputs(pg_out)
