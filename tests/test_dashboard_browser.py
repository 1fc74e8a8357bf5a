"""The dashboard in a real browser: Debian's chromium driven by Playwright
(playwright-core, tests/node/dashboard_check.mjs).  Signs in as a key holder and as the
operator and checks every number shown against the usage log itself (SQL over the
seeded rows, not constants).  Screenshots are kept in tests/artifacts/dashboard/
(git-ignored) for a human to look at."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ENV, PRO_KEY, Gateway, base_config
from dashboard_support import ADMIN_KEY, NOW, insert_sqlite, rows

NODE_DIR = Path(__file__).parent / "node"
ARTIFACTS = Path(__file__).parent / "artifacts" / "dashboard"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the browser test must run)")
    pytest.skip(why)


def _log(db: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _n(text: str) -> int:
    return int(text.replace(",", ""))


async def test_key_holder_and_operator_pages_in_chromium(
    start_gateway: Any, openai_upstream: Any, tmp_path: Path
) -> None:
    if shutil.which("node") is None or not Path(CHROMIUM).exists():
        _unavailable(f"node or {CHROMIUM} is missing (apt-get install -y chromium)")
    if not (NODE_DIR / "node_modules" / "playwright-core").exists():
        pytest.fail("tests/node/node_modules/playwright-core is missing: run `make test` (npm install there)")
    doc = base_config({"oai": ("openai", openai_upstream[1])}, str(tmp_path / "usage.db"),
                      metrics={"admin_key": "${ADMIN_KEY}"})  # fmt: skip
    doc["tiers"]["pro"]["limits"] = {"rpm": 60, "tpm": 50000}
    gw: Gateway = await start_gateway(doc, {**ENV, "ADMIN_KEY": ADMIN_KEY})
    db = gw.config.database
    insert_sqlite(db, rows())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = str(gw.server.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "dashboard_check.mjs"), base, PRO_KEY, ADMIN_KEY, str(ARTIFACTS),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "CHROMIUM": CHROMIUM},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    seen = orjson.loads(out)
    assert seen["errors"] == []  # no CSP violation, no script error

    holder = seen["holder"]
    assert holder["url"] == "/dashboard/me" and holder["tier"] == "pro"
    assert holder["models"] == ["oai-small", "oai-large"]
    assert holder["cookieVisibleToScript"] == "" and holder["storage"] == "{}{}"  # HttpOnly; nothing stored
    assert holder["opsStatus"] == 403
    month_start = (NOW // 86400 - 29) * 86400  # the page's 30 days: today and the 29 before
    expected = dict(_log(db, "SELECT model, sum(total_tokens) FROM usage WHERE key_name = 'alice' AND ts >= ? "
                             "GROUP BY model", month_start))  # fmt: skip
    shown = {r[0]: _n(r[3]) for r in holder["totals"] if r[0] != "all models"}
    assert shown == expected and expected == {"oai-large": 600, "oai-small": 5120}
    # the chart's bars add up to the same tokens per model
    per_model: dict[str, float] = {}
    for bar in holder["bars"]:
        per_model[bar["series"]] = per_model.get(bar["series"], 0) + bar["value"]
    assert per_model == expected
    [(count,)] = _log(db, "SELECT count(*) FROM usage WHERE key_name = 'alice'")
    assert len(holder["recent"]) == count and all(r[2] != "bob-only-model" for r in holder["recent"])
    limits = {r[0]: r[1:] for r in holder["limits"]}
    assert limits["requests per minute (rpm)"] == ["60", "0", "60"]
    assert seen["afterSignOut"] == "/dashboard/"

    operator = seen["operator"]
    assert operator["url"] == "/dashboard/ops"
    day_ago = NOW - 86400
    for table, column in (("byTier", "tier"), ("byKey", "key_name"), ("byModel", "model")):
        expected_rows = {
            name: [requests, errors, prompt, completion, total]
            for name, requests, errors, prompt, completion, total in _log(
                db,
                f"SELECT {column}, count(*), sum(status >= 400), sum(prompt_tokens), sum(completion_tokens), "
                f"sum(total_tokens) FROM usage WHERE ts >= ? GROUP BY 1",
                day_ago,
            )  # fmt: skip
        }
        assert {r[0]: [_n(c) for c in r[1:]] for r in operator[table]} == expected_rows, table
    failed = "SELECT status, error_code, count(*) FROM usage WHERE ts >= ? AND status >= 400 GROUP BY 1, 2"
    expected_errors = {(str(s), c): n for s, c, n in _log(db, failed, day_ago)}
    assert {(r[0], r[1]): _n(r[2]) for r in operator["errors"]} == expected_errors
    assert {r[0] for r in operator["latency"]} == {"oai-large", "oai-small", "bob-only-model"}
    assert [r[0] for r in operator["keys"]] == ["alice", "bob"]
    assert PRO_KEY not in operator["text"] and ADMIN_KEY not in operator["text"]
    for name in ("key-holder.png", "operator.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000  # a real rendering, kept for a human to look at
