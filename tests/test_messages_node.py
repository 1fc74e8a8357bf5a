"""Acceptance (issue 13): the official Anthropic TypeScript SDK (`@anthropic-ai/sdk`) as a
second real Messages client: one streamed tool loop on Claude (the passthrough) and
one on Gemini 3 (translated), each checked on what the fake upstream received."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import PRO_KEY
from messages_e2e import gemini_signature, recorded_signature, start_stack, text_reply, tool_call_reply

NODE_DIR = Path(__file__).parent / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (CI installs it)")
async def test_anthropic_typescript_sdk_streamed_tool_loop(
    aiohttp_server: Any, start_gateway: Any, tmp_path: Path
) -> None:
    if not (NODE_DIR / "node_modules" / "@anthropic-ai" / "sdk").exists():
        pytest.fail("tests/node/node_modules lacks @anthropic-ai/sdk: run `make test` (it runs npm install there)")
    stack = await start_stack(aiohttp_server, start_gateway, tmp_path)
    for kind in ("ant", "gem"):
        stack.fake(kind).script(tool_call_reply(kind, True), text_reply(kind, True))
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "messages_check.mjs"), stack.root, PRO_KEY, "ant-small", "gem-3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out)

    claude, gemini = report["ant-small"], report["gem-3"]
    assert claude["first"]["blocks"] == ["thinking", "tool_use"] and claude["first"]["stopReason"] == "tool_use"
    assert claude["first"]["call"] == {
        "id": "toolu_01Js4AMfx5qpTLhwTusnvT68", "name": "weather", "input": {"location": "Florence, Italy"},
    }  # fmt: skip
    assert claude["second"] == {**claude["second"], "stopReason": "end_turn", "text": "Hello there!"}
    turn_two = stack.ant.last.json  # the signature the SDK accumulated went back as Anthropic signed it
    assert turn_two["model"] == "ant-small-2024"
    assert turn_two["messages"][1]["content"][0]["signature"] == recorded_signature(True)

    assert gemini["first"]["stopReason"] == "tool_use" and gemini["first"]["call"]["name"] == "weather"
    assert gemini["first"]["call"]["input"] == {"location": "San Francisco"}
    events = gemini["first"]["events"]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert gemini["second"]["stopReason"] == "end_turn" and gemini["second"]["text"]
    parts = stack.gem.last.json["contents"][1]["parts"]
    assert next(p for p in parts if "functionCall" in p)["thoughtSignature"] == gemini_signature(True)
    rows = await stack.gw.usage_rows()
    assert [(r["endpoint"], r["model"], r["status"]) for r in rows] == [
        ("/v1/messages", model, 200) for model in ("ant-small", "ant-small", "gem-3", "gem-3")
    ]
    await stack.close()
