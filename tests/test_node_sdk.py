"""The official `openai` Node SDK as a second real client: models, chat, stream, tools, errors."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
from conftest import FREE_KEY, PRO_KEY, Gateway
from fakes import FakeUpstream, fixture_bytes, fixture_json, json_reply, sse_reply

NODE_DIR = Path(__file__).parent / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (CI installs it)")
async def test_node_sdk_against_the_gateway(gateway: Gateway, upstream: FakeUpstream) -> None:
    if not (NODE_DIR / "node_modules" / "openai").exists():
        pytest.fail("tests/node/node_modules is missing: run `make test` (it runs npm install there)")
    upstream.script(
        json_reply(fixture_json("openai_chat_completion_text.json")),
        sse_reply(fixture_bytes("openai_chunks_text_usage.sse"), "split_utf8"),
        sse_reply(fixture_bytes("openai_chunks_tool_calls_parallel.sse")),
    )
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "sdk_check.mjs"), gateway.url, PRO_KEY, FREE_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out)
    assert report["models"] == ["oai-small", "oai-large"]
    assert report["chat"]["model"] == "oai-small" and report["chat"]["content"].startswith("**Holiday")
    assert report["stream"]["text"].startswith("I'm unable to provide") and report["stream"]["usage"] == 44
    assert [t["name"] for t in report["tools"]] == ["GetWeatherArgs", "get_stock_price"]
    assert all(isinstance(t["args"], dict) for t in report["tools"])
    errors = report["errors"]
    assert errors["unknownKey"] == {"cls": "AuthenticationError", "status": 401, "code": "invalid_api_key"}
    assert errors["unknownModel"] == {"cls": "NotFoundError", "status": 404, "code": "model_not_found"}
    assert errors["outsideTier"]["cls"] == "PermissionDeniedError" and errors["outsideTier"]["status"] == 403
    assert errors["emptyMessages"]["cls"] == "BadRequestError"
