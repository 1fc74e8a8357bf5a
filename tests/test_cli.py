"""The command line's operator tools: `gateway keys new|list`, where and how `serve`
logs (stderr, text or JSON, workers included, nothing from libraries that quote data),
and `gateway usage --errors / --json`."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import ENV, PRO_KEY, SECRETS, base_config
from fakes import json_reply
from processes import Served, free_port, wait_until_serving

from gateway.cli import main as cli_main
from gateway.logs import JsonFormatter, setup_logging
from gateway.usage import UsageRecord, UsageStore

ROOT = Path(__file__).resolve().parent.parent
# words no id, timestamp or hex digest can contain
PROMPT = "a secret prompt: quokka"
ANSWER = "the private answer: walrus"
CHAT = {"model": "oai-small", "messages": [{"role": "user", "content": PROMPT}]}


def _gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`gateway ...` as a real process: what an operator runs."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=ROOT, env={**ENV, **(env or {})},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "oai-small-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }  # fmt: skip


# -- keys ---------------------------------------------------------------------------------

# written as text, `keys:` last: an entry is pasted by appending a line, as an operator would
_KEYS_CONFIG = """\
database: {db}
providers: {{oai: {{kind: openai, base_url: '{url}', api_key: '${{UPSTREAM_KEY}}'}}}}
models: [{{id: oai-small, provider: oai}}]
tiers:
  free: {{models: [oai-small], limits: {{rpm: 20, tokens_per_month: 1000}}}}
  pro: {{extends: free, limits: {{rpm: 600}}}}
keys:
  - {{name: alice, key: '${{PRO_KEY}}', tier: pro, limits: {{concurrency: 3}}}}
  - {{name: night-ops, key: '${{NIGHT_OPS_KEY}}', tier: free}}
"""


async def test_keys_new_prints_a_key_whose_entry_authenticates_a_real_gateway(fake_server: Any, tmp_path: Path) -> None:
    _, url = await fake_server()
    config = tmp_path / "gateway.yaml"
    config.write_text(_KEYS_CONFIG.format(db=tmp_path / "usage.db", url=url))
    made = _gateway("keys", "new", "--name", "carol", "--tier", "free", "--config", str(config))
    assert made.returncode == 0, made.stderr
    key, entry = made.stdout.splitlines()  # stdout: the key, then the entry; the advice on stderr
    assert re.fullmatch(r"sk-gw-[A-Za-z0-9_-]{43}", key)  # 32 random bytes, base64url
    assert entry == f"- {{name: carol, key_sha256: {hashlib.sha256(key.encode()).hexdigest()}, tier: free}}"
    assert "only this once" in made.stderr and str(config) in made.stderr and key not in made.stderr
    again = _gateway("keys", "new", "--name", "carol", "--tier", "free")  # no --config: nothing checked
    assert again.returncode == 0 and again.stdout.splitlines()[0] != key

    with config.open("a") as f:
        f.write(f"  {entry}\n")  # pasted under keys:
    assert key not in config.read_text()
    served = await _serve(tmp_path, config)
    try:
        async with aiohttp.ClientSession() as http:
            for bearer, status in ((key, 200), (key + "x", 401)):
                async with http.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {bearer}"}) as r:
                    assert r.status == status
    finally:
        await _stop(served)
    assert key not in served.output()
    taken = _gateway("keys", "new", "--name", "carol", "--tier", "free", "--config", str(config))
    assert taken.returncode == 2 and taken.stdout == ""
    assert "a key named 'carol' is already in" in taken.stderr


def test_keys_new_refuses_an_unknown_tier_a_taken_name_and_a_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(_KEYS_CONFIG.format(db=tmp_path / "usage.db", url="http://127.0.0.1:9"))
    # night-ops is disabled (NIGHT_OPS_KEY unset), but its name is taken all the same
    refused = _gateway("keys", "new", "--name", "night-ops", "--tier", "gold", "--config", str(config))
    assert refused.returncode == 2 and refused.stdout == ""  # no key printed for an entry that cannot go in
    assert refused.stderr.splitlines() == [
        f"keys new: tier 'gold' is not defined in {config} (tiers: free, pro)",
        f"keys new: a key named 'night-ops' is already in {config}: choose another --name",
    ]
    empty = _gateway("keys", "new", "--name", " ", "--tier", "free")
    assert (empty.returncode, empty.stdout, empty.stderr) == (2, "", "keys new: --name must not be empty\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tiers: [\n")
    bad = _gateway("keys", "new", "--name", "x", "--tier", "free", "--config", str(broken))
    assert bad.returncode == 2 and bad.stdout == "" and f"{broken}: invalid configuration:" in bad.stderr


def test_a_key_entry_reads_back_whatever_the_name(tmp_path: Path) -> None:
    """A name YAML would misread unquoted (`: `, `#`, a number) comes back as given."""
    for name in ("ops: night # shift", "1234", "yes"):
        made = _gateway("keys", "new", "--name", name, "--tier", "free")
        key, entry = made.stdout.splitlines()
        (item,) = yaml.safe_load(entry)
        assert item == {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "tier": "free"}


def test_keys_list_shows_tiers_limits_and_which_keys_are_usable(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        _KEYS_CONFIG.format(db=tmp_path / "usage.db", url="http://127.0.0.1:9")
        + f"  - {{name: bob, key_sha256: {'b' * 64}, tier: free, limits: {{rpm: 5}}}}\n"
    )
    listed = _gateway("keys", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert [line.split(None, 3)[:3] for line in listed.stdout.splitlines()] == [
        ["name", "tier", "secret"], ["alice", "pro", "key"], ["night-ops", "free", "key"],
        ["bob", "free", "key_sha256"],
    ]  # fmt: skip
    rows = [re.split(r"\s{2,}", line.strip()) for line in listed.stdout.splitlines()]
    assert rows[0] == ["name", "tier", "secret", "usable", "rpm", "tpm", "concurrency", "tokens/month"]
    # limits after the tier's (pro extends free) and the key's own
    assert rows[1] == ["alice", "pro", "key", "yes", "600", "-", "3", "1000"]
    assert rows[2] == ["night-ops", "free", "key", "no: NIGHT_OPS_KEY is not set", "20", "-", "-", "1000"]
    assert rows[3] == ["bob", "free", "key_sha256", "yes", "5", "-", "-", "1000"]
    set_now = _gateway("keys", "list", "--config", str(config), env={"NIGHT_OPS_KEY": "sk-night"})
    assert re.split(r"\s{2,}", set_now.stdout.splitlines()[2].strip())[3] == "yes"
    assert PRO_KEY not in listed.stdout + listed.stderr


# -- logs -----------------------------------------------------------------------------------


async def _serve(tmp_path: Path, config: Path, *args: str) -> Served:
    """`gateway serve` with its stderr (the log) and stdout in files of their own."""
    port = free_port()
    log = tmp_path / f"stderr-{port}.log"
    with log.open("wb") as err, (tmp_path / f"stdout-{port}.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), *args,
            cwd=ROOT, env={**ENV, "PATH": "/usr/bin:/bin"}, stdout=out, stderr=err,
        )  # fmt: skip
    served = Served(proc, port, config, log)
    await wait_until_serving(served)
    return served


async def _stop(served: Served) -> None:
    """SIGTERM, the graceful stop; it must end with exit code 0."""
    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), 20) == 0


async def _call(served: Served, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {PRO_KEY}"}) as http:
        async with http.post(f"{served.url}{path}", json=body) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(("fmt", "workers"), [("text", 1), ("json", 1), ("text", 2), ("json", 2)])
async def test_serve_logs_to_stderr_from_start_to_stop_in_either_format(
    fake_server: Any, tmp_path: Path, fmt: str, workers: int
) -> None:
    fake, url = await fake_server()
    fake.script(json_reply({"error": {"message": "boom"}}, 500), json_reply({"error": {"message": "boom"}}, 500))
    doc = base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db"), server={"workers": workers})
    doc["routing"] = {"attempts": 2, "backoff": 0.01}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(doc))
    served = await _serve(tmp_path, config, "--log-format", fmt)
    try:
        status, _ = await _call(served, "/v1/chat/completions", CHAT)
        assert status == 502
    finally:
        await _stop(served)
    port = served.port
    assert (tmp_path / f"stdout-{port}.log").read_text() == ""  # the log is stderr, all of it
    lines = served.output().splitlines()
    if fmt == "json":
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all(list(r)[:5] == ["ts", "level", "logger", "message", "pid"] for r in records)
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in records)
        said = [(r["level"], r["logger"], r["message"]) for r in records]
    else:
        said = []
        for line in lines:
            match = re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)", line)
            assert match, f"not a log line: {line!r}"
            said.append((match[1], match[2], match[3]))
    messages = [m for _, _, m in said]
    start = "listening on" if workers == 1 else f"starting {workers} workers"
    assert any(start in m for m in messages), messages
    assert ("WARNING", "gateway.pipeline") in {(lv, lg) for lv, lg, _ in said}  # the failed upstream attempts
    if workers == 1:
        assert messages[-1].startswith("stopped in "), messages
    else:  # a worker still starting when SIGTERM came stops without a word: the supervisor has the last
        assert messages[-1] == f"gateway stopped: all {workers} workers have exited", messages
    assert not any(s in line for line in lines for s in (*SECRETS, "quokka"))


async def test_a_debug_run_logs_no_prompt_or_answer_text(fake_server: Any, tmp_path: Path) -> None:
    """aiosqlite's DEBUG lines print each statement's parameters: a stored Response
    holds the prompt and the answer.  The gateway's own DEBUG lines still come out."""
    fake, url = await fake_server()
    fake.script(json_reply(_completion(ANSWER)), json_reply(_completion(ANSWER)))
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(base_config({"oai": ("openai", url)}, str(tmp_path / "usage.db"))))
    served = await _serve(tmp_path, config, "--log-level", "DEBUG")
    try:
        status, answer = await _call(served, "/v1/responses", {"model": "oai-small", "input": PROMPT})
        assert status == 200 and answer["output"][0]["content"][0]["text"] == ANSWER
        status, _ = await _call(served, "/v1/chat/completions", CHAT)
        assert status == 200
    finally:
        await _stop(served)
    output = served.output()
    assert "POST /v1/responses key=alice model=oai-small status=200" in output  # DEBUG is on
    for text in ("quokka", "walrus", *SECRETS):
        assert text not in output, f"{text!r} reached the log"
    with sqlite3.connect(tmp_path / "usage.db") as db:  # stored, so it did pass through aiosqlite
        assert db.execute("SELECT count(*) FROM responses").fetchone() == (1,)


def test_json_lines_carry_extra_fields_and_tracebacks_on_one_line() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("gateway.test_cli")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("INFO", "json", stream)
    setup_logging("INFO", "json", stream)  # set up twice: still one line per record
    try:
        logger.warning("two\nlines", extra={"request_id": "req-1", "status": 502, "path": Path("/x")})
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed")
        logger.debug("not at INFO")
        logging.getLogger("aiosqlite").info("executing (%r)", PROMPT)  # held at WARNING
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "ts": first["ts"], "level": "WARNING", "logger": "gateway.test_cli", "message": "two\nlines",
        "pid": first["pid"], "request_id": "req-1", "status": 502, "path": "/x",
    }  # fmt: skip
    assert second["message"] == "failed" and second["exc"].endswith("ValueError: bad")
    assert JsonFormatter().format(logging.makeLogRecord({"msg": "x"})).count("\n") == 0


# -- usage --errors / --json ----------------------------------------------------------------

NOW = time.time()
RECORDS = [
    UsageRecord(ts=100.0, key_name="alice", tier="t", model="gpt-4o", status=200, prompt_tokens=3, total_tokens=5),
    UsageRecord(ts=110.0, key_name="alice", tier="t", model="gpt-4o", status=502, error_code="upstream_error"),
    UsageRecord(ts=120.0, key_name="alice", tier="t", model="gpt-4o", status=502, error_code="upstream_error"),
    UsageRecord(ts=130.0, key_name="alice", tier="t", model="gpt-4o", status=429, error_code="rate_limit_exceeded"),
    UsageRecord(ts=140.0, key_name=None, model=None, status=401, error_code="invalid_api_key"),
    UsageRecord(ts=300.0, key_name="bob", model="mini", status=499, total_tokens=7, tokens_estimated=True),
    UsageRecord(ts=NOW, key_name="alice", tier="t", model="gpt-4o", status=200, total_tokens=40),
]
ERRORS = [
    ["(unauthenticated)", "-", "invalid_api_key", "401", "1"],
    ["alice", "gpt-4o", "rate_limit_exceeded", "429", "1"],
    ["alice", "gpt-4o", "upstream_error", "502", "2"],
    ["bob", "mini", "-", "499", "1"],
]


def usage_config(tmp_path: Path, database: str) -> Path:
    config = tmp_path / "g.yaml"
    config.write_text(
        f"database: '{database}'\nproviders: {{p: {{kind: openai, base_url: 'http://h'}}}}\n"
        "models: [{id: gpt-4o, provider: p}]\n"
        "tiers: {t: {models: [gpt-4o], limits: {tokens_per_month: 1000}}}\n"
        "keys: [{name: alice, key_sha256: " + "a" * 64 + ", tier: t}]\n"
    )
    return config


async def write_usage(database: str, store: UsageStore | None = None) -> None:
    store = store or await UsageStore.open(database)
    for record in RECORDS:
        store.record(copy.copy(record))
    await store.close()


def usage_outputs(config: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What `gateway usage` prints with --errors, --json, and --json --since."""
    outputs = []
    for args in (["--errors"], ["--json"], ["--json", "--since", "1970-01-01T00:04:00"]):
        assert cli_main(["usage", "--config", str(config), *args]) == 0
        outputs.append(capsys.readouterr().out)
    return outputs


def check_usage_outputs(outputs: list[str]) -> None:
    text, full, since = outputs
    blocks = text.split("\n\n")
    assert [line.split() for line in blocks[1].splitlines()] == [
        ["key", "model", "error_code", "status", "requests"], *ERRORS,
    ]  # fmt: skip
    assert blocks[2].splitlines()[1].split() == ["alice", "t", "1000", "40", "960"]  # the quotas, as before
    report = json.loads(full)
    assert list(report) == ["since", "month_start", "logged", "by_key", "by_tier", "errors", "quotas"]
    assert (report["since"], report["logged"]) == (None, True)
    assert report["month_start"].endswith("-01T00:00:00Z")
    assert report["by_key"] == [
        {"key": "(unauthenticated)", "model": "-", "requests": 1, "errors": 1, "prompt_tokens": 0,
         "completion_tokens": 0, "total_tokens": 0, "estimated_tokens": 0},
        {"key": "alice", "model": "gpt-4o", "requests": 5, "errors": 3, "prompt_tokens": 3,
         "completion_tokens": 0, "total_tokens": 45, "estimated_tokens": 0},
        {"key": "bob", "model": "mini", "requests": 1, "errors": 1, "prompt_tokens": 0,
         "completion_tokens": 0, "total_tokens": 7, "estimated_tokens": 7},
    ]  # fmt: skip
    assert report["by_tier"] == [
        {"tier": "-", "requests": 2, "errors": 2, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 7},
        {"tier": "t", "requests": 5, "errors": 3, "prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 45},
    ]
    assert report["errors"] == [
        {"key": k, "model": m, "error_code": c, "status": int(s), "requests": int(n)} for k, m, c, s, n in ERRORS
    ]
    assert report["quotas"] == [{"key": "alice", "tier": "t", "month_quota": 1000, "used": 40, "remaining": 960}]
    later = json.loads(since)
    assert later["since"] == "1970-01-01T00:04:00Z"
    assert [(e["key"], e["status"]) for e in later["errors"]] == [("bob", 499)]


async def test_usage_errors_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "u.db")
    config = usage_config(tmp_path, db)
    assert cli_main(["usage", "--config", str(config), "--json"]) == 0  # nothing logged yet: the same shape
    empty = json.loads(capsys.readouterr().out)
    assert (empty["logged"], empty["by_key"], empty["errors"]) == (False, [], [])
    assert empty["quotas"] == [{"key": "alice", "tier": "t", "month_quota": 1000, "used": 0, "remaining": 1000}]
    await write_usage(db)
    check_usage_outputs(usage_outputs(config, capsys))
    assert cli_main(["usage", "--config", str(config), "--errors", "--since", "1h"]) == 0
    assert "(no failed requests in this period)" in capsys.readouterr().out
