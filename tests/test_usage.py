"""The usage log: one row per API call, whatever its outcome, flushed on shutdown."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import FREE_KEY, Gateway
from fakes import FakeUpstream, fixture_bytes, fixture_json, json_reply, sse_reply

from gateway.cli import main as cli_main
from gateway.cli import parse_since
from gateway.usage import UsageRecord, UsageStore
from gateway.usage_sqlite import _MIGRATIONS

MESSAGES = [{"role": "user", "content": "Hello"}]


async def test_rows_for_success_stream_and_errors(gateway: Gateway, upstream: FakeUpstream) -> None:
    client = gateway.client()
    upstream.script(json_reply(fixture_json("openai_chat_completion_text.json")))
    await client.chat.completions.create(model="oai-small", messages=MESSAGES)
    upstream.script(sse_reply(fixture_bytes("openai_chunks_text_usage.sse")))
    async for _ in await client.chat.completions.create(model="oai-large", messages=MESSAGES, stream=True):
        pass
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.client(FREE_KEY).chat.completions.create(model="oai-large", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        await gateway.client("sk-nope").chat.completions.create(model="oai-small", messages=MESSAGES)
    await client.models.list()  # not an accounted call

    rows = await gateway.usage_rows()
    assert len(rows) == 4
    ok, streamed, denied, unauth = rows
    expected = fixture_json("openai_chat_completion_text.json")["usage"]
    assert (ok["key_name"], ok["tier"], ok["model"], ok["provider"], ok["upstream_model"]) == (
        "alice", "pro", "oai-small", "oai", "oai-small-2024",
    )  # fmt: skip
    assert (ok["status"], ok["stream"], ok["prompt_tokens"], ok["completion_tokens"], ok["total_tokens"]) == (
        200, 0, expected["prompt_tokens"], expected["completion_tokens"], expected["total_tokens"],
    )  # fmt: skip
    assert ok["latency_ms"] > 0 and ok["ttfb_ms"] > 0 and ok["request_id"]
    assert (streamed["stream"], streamed["status"], streamed["total_tokens"], streamed["upstream_model"]) == (
        1, 200, 44, "oai-large",
    )  # fmt: skip
    assert streamed["ttfb_ms"] <= streamed["latency_ms"]
    assert (denied["status"], denied["error_code"], denied["key_name"], denied["tier"]) == (
        403, "model_not_allowed", "bob", "free",
    )  # fmt: skip
    assert (unauth["status"], unauth["error_code"], unauth["key_name"]) == (401, "invalid_api_key", None)


async def test_close_flushes_every_queued_row(tmp_path: Path) -> None:
    path = str(tmp_path / "u.db")
    store = await UsageStore.open(path)
    for i in range(1234):
        store.record(UsageRecord(ts=float(i), key_name="k", model="m", status=200, total_tokens=1))
    await store.close()  # no flush() first: close alone must lose nothing
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*), sum(total_tokens) FROM usage").fetchone() == (1234, 1234)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_reopening_keeps_schema_and_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "u.db")
    for _ in range(2):
        store = await UsageStore.open(path)
        store.record(UsageRecord(ts=1.0, status=200))
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM usage").fetchone() == (2,)
        assert db.execute("PRAGMA user_version").fetchone() == (len(_MIGRATIONS),)


def test_parse_since() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("1970-01-02") == 86400.0
    with pytest.raises(ValueError):
        parse_since("yesterday-ish")


async def test_usage_command_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    db = tmp_path / "u.db"
    store = await UsageStore.open(str(db))
    store.record(UsageRecord(ts=100.0, key_name="alice", model="gpt-4o", status=200, prompt_tokens=3, total_tokens=5))
    store.record(UsageRecord(ts=200.0, key_name="alice", model="gpt-4o", status=502, prompt_tokens=2, total_tokens=2))
    store.record(UsageRecord(ts=300.0, key_name="bob", model="mini", status=499, total_tokens=7, tokens_estimated=True))
    await store.close()
    config = tmp_path / "g.yaml"
    config.write_text(
        f"database: {db}\nproviders: {{p: {{kind: openai, base_url: 'http://h'}}}}\n"
        "models: [{id: gpt-4o, provider: p}]\ntiers: {t: {models: [gpt-4o]}}\n"
    )
    assert cli_main(["usage", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["key", "model", "requests", "errors", "prompt", "completion", "total", "estimated"]
    assert out[1].split() == ["alice", "gpt-4o", "2", "1", "5", "0", "7", "0"]
    assert out[2].split() == ["bob", "mini", "1", "1", "0", "0", "7", "7"]
    assert cli_main(["usage", "--config", str(config), "--since", "1970-01-01T00:04:00"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["bob"]


async def test_tokens_estimated_column(tmp_path: Path) -> None:
    path = str(tmp_path / "u.db")
    with sqlite3.connect(path) as db:  # a v2 log written before the column existed
        db.executescript(_MIGRATIONS[0] + _MIGRATIONS[1] + "PRAGMA user_version = 2;")
        db.execute("INSERT INTO usage (ts, status) VALUES (1.0, 200)")
    store = await UsageStore.open(path)
    store.record(UsageRecord(ts=2.0, status=499, total_tokens=9, tokens_estimated=True))
    store.record(UsageRecord(ts=3.0, status=200, total_tokens=4))
    await store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT ts, tokens_estimated FROM usage ORDER BY ts").fetchall()
    assert rows == [(1.0, 0), (2.0, 1), (3.0, 0)]
