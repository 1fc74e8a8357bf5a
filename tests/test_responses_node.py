"""Acceptance (issue 12): the official `openai` Node SDK streams a function-tool loop over
`/v1/responses` through the gateway (`client.responses.stream(...)`, turn 2 chained
with `previous_response_id`), on every provider kind.  Every event the SDK yielded
and each `finalResponse()` are validated against OpenAI's schemas; turn 2 is
checked on what the fake upstream received."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import PRO_KEY
from openai_schema import validate_response
from responses_e2e import (
    MODELS,
    QUESTION,
    TOOL_OUTPUT,
    WEATHER,
    Stack,
    check_upstream_turn_two,
    function_call,
    settings,
    start_stack,
    text_reply,
    tool_call_reply,
)
from responses_support import check_events

NODE_DIR = Path(__file__).parent / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (CI installs it)")
@pytest.mark.parametrize("kind", list(MODELS))
async def test_node_sdk_streams_a_tool_loop(fake_server: Any, start_gateway: Any, tmp_path: Path, kind: str) -> None:
    if not (NODE_DIR / "node_modules" / "openai").exists():
        pytest.fail("tests/node/node_modules is missing: run `make test` (it runs npm install there)")
    stack: Stack = await start_stack(fake_server, start_gateway, tmp_path)
    stack.fakes[kind].script(tool_call_reply(kind, True), text_reply(kind, "It is sunny in Florence.", True))
    body = {"model": MODELS[kind], "input": QUESTION, "tools": [WEATHER], **settings(kind)}
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "responses_check.mjs"), stack.gw.url, PRO_KEY, orjson.dumps(body).decode(), TOOL_OUTPUT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out)
    first, second = report["turns"]
    for turn in (first, second):
        check_events(turn["events"])  # every event valid, in OpenAI's order
        assert turn["yielded"] == len(turn["events"])
        validate_response(turn["final"])
        assert turn["final"]["id"] == turn["events"][-1]["response"]["id"]
    call = function_call(kind, True, first["events"][-1]["response"])
    assert [item["call_id"] for item in first["final"]["output"] if item["type"] == "function_call"] == [
        call["call_id"]
    ]
    assert second["final"]["previous_response_id"] == first["final"]["id"]
    texts = [p["text"] for item in second["final"]["output"] if item["type"] == "message" for p in item["content"]]
    assert texts == ["It is sunny in Florence."]
    check_upstream_turn_two(stack, kind, True, call)
