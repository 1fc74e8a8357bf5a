"""`make demo` and its stand-in providers (scripts/mock_providers.py): tool calling in
each provider's own wire format, driven through the gateway; the demo script run for
real, and refusing a port some other program holds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from mock_providers import make_app  # noqa: E402
from processes import children  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "days", "unit"],
        },
    },
}
OTHER = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PROVIDERS = {"oai": "openai", "claude": "anthropic", "gem": "gemini"}


@pytest.fixture
async def stand_ins(aiohttp_server: Any) -> str:
    server = await aiohttp_server(make_app(chunks=4, delay=0.0), host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def demo_gateway(stand_ins: str, start_gateway: Any, tmp_path: Path) -> Any:
    """The gateway in front of the stand-ins, one provider of each kind (as config/demo.yaml)."""
    bases = {"openai": f"{stand_ins}/v1", "anthropic": stand_ins, "gemini": stand_ins}
    doc = {
        "database": str(tmp_path / "usage.db"),
        "providers": {
            name: {"kind": kind, "base_url": bases[kind], "api_key": "demo"} for name, kind in PROVIDERS.items()
        },
        "models": [{"id": f"{name}-model", "provider": name} for name in PROVIDERS],
        "tiers": {"pro": {"models": [f"{name}-model" for name in PROVIDERS]}},
        "keys": [{"name": "alice", "key": "${PRO_KEY}", "tier": "pro"}],
    }
    return await start_gateway(doc)


async def _ask(client: openai.AsyncOpenAI, model: str, messages: list[Any], stream: bool, **kw: Any) -> Any:
    """One chat completion, streamed or not, as (content, tool_calls as dicts, finish_reason)."""
    if not stream:
        answer = await client.chat.completions.create(model=model, messages=messages, **kw)
        message = answer.choices[0].message
        calls = [c.model_dump() for c in message.tool_calls or []]
        return message.content, calls, answer.choices[0].finish_reason
    text, calls, finish = "", {}, None
    async for chunk in await client.chat.completions.create(model=model, messages=messages, stream=True, **kw):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for part in delta.tool_calls or []:  # the SDK's way: pieces keyed by index
            call = calls.setdefault(
                part.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = part.id or call["id"]
            if part.function:
                call["function"]["name"] += part.function.name or ""
                call["function"]["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return text or None, list(calls.values()), finish


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_tool_loop_through_the_gateway(demo_gateway: Any, provider: str, stream: bool) -> None:
    """Call, tool result, answer: each stand-in speaks its own protocol (tool_calls,
    tool_use, functionCall) and the gateway turns it into OpenAI's for the SDK."""
    client = demo_gateway.client()
    model = f"{provider}-model"
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    content, calls, finish = await _ask(client, model, messages, stream, tools=[WEATHER, OTHER])
    assert finish == "tool_calls" and content is None
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    # arguments made up from the schema: every required property, of its type
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "example city", "days": 1, "unit": "C"}
    assert calls[0]["id"]

    messages += [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature_c": 21}'},
    ]
    content, calls, finish = await _ask(client, model, messages, stream, tools=[WEATHER, OTHER])
    assert finish == "stop" and calls == []
    assert "The tool answered:" in content and "21" in content and "temperature_c" in content

    # a forced tool is the one called; tool_choice "none" gets text
    _, calls, _ = await _ask(client, model, messages[:1], stream, tools=[WEATHER, OTHER],
                             tool_choice={"type": "function", "function": {"name": "get_time"}})  # fmt: skip
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {}
    content, calls, finish = await _ask(client, model, messages[:1], stream, tools=[WEATHER], tool_choice="none")
    assert calls == [] and finish == "stop" and "You said: Weather in Paris?" in content


async def test_without_tools_the_answer_is_the_plain_echo(demo_gateway: Any) -> None:
    """The benchmark's path: no tools, the same echo as before (an empty tool list too)."""
    client = demo_gateway.client()
    for provider in PROVIDERS:
        for extra in ({}, {"tools": []}):
            answer = await client.chat.completions.create(
                model=f"{provider}-model", messages=[{"role": "user", "content": "hi"}], **extra
            )
            kind = {"oai": "OpenAI", "claude": "Anthropic", "gem": "Gemini"}[provider]
            assert answer.choices[0].message.content.startswith(f"Hello from the local {kind} stand-in! You said: hi")
            assert answer.choices[0].finish_reason == "stop"


async def test_anthropic_stand_in_streams_tool_use_the_sdk_accepts(stand_ins: str) -> None:
    """Straight to the stand-in with the official Anthropic SDK, which assembles
    `input_json_delta` pieces itself: the wire format is Anthropic's, not an approximation."""
    client = anthropic.AsyncAnthropic(base_url=stand_ins, api_key="demo", max_retries=0)
    tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]  # type: ignore[index]
    messages: list[Any] = [{"role": "user", "content": "Weather?"}]
    async with client.messages.stream(model="claude-x", max_tokens=100, messages=messages, tools=tools) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use" and block.input == {"city": "example city", "days": 1, "unit": "C"}
    messages += [
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]},
    ]
    after = await client.messages.create(model="claude-x", max_tokens=100, messages=messages, tools=tools)
    assert after.stop_reason == "end_turn" and "The tool answered: sunny" in after.content[0].text
    await client.close()


# -- the demo script, as `make demo` runs it ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_config(tmp_path: Path) -> Path:
    """config/demo.yaml with its usage log in tmp_path, not in the work tree."""
    text = (ROOT / "config" / "demo.yaml").read_text()
    assert "database: data/demo.db" in text
    path = tmp_path / "demo.yaml"
    path.write_text(text.replace("database: data/demo.db", f"database: {tmp_path / 'demo.db'}"))
    return path


async def _start_demo(tmp_path: Path, port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "demo.py"), "--port", str(port), "--config", str(_demo_config(tmp_path)),
        "--delay", "0", cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_the_demo_runs_every_provider_with_tools_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    demo = await _start_demo(tmp_path, port)
    assert demo.stdout is not None and demo.stderr is not None
    out = b""
    try:
        while b"Press Ctrl-C to stop." not in out:
            line = await asyncio.wait_for(demo.stdout.readline(), 60)
            assert line, "the demo ended early:\n" + (out + await demo.stderr.read()).decode()
            out += line
        spawned = children(demo.pid)
        assert len(spawned) == 2  # the stand-ins and the gateway
        demo.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(demo.wait(), 30) == 0
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    text = out.decode()
    err = (await demo.stderr.read()).decode()
    for kind in ("OpenAI", "Anthropic", "Gemini"):
        assert f"Hello from the local {kind} stand-in! You said: What is a gateway?" in text
        assert f"Hello from the local {kind} stand-in! The tool answered:" in text
    assert text.count('tool call: get_weather({"city":"example city"})') == 3
    assert f"base_url=http://127.0.0.1:{port}/v1" in text
    assert f"listening on http://127.0.0.1:{port}/v1 (3 providers, 3 models, 1 tier, 1 usable key)" in err
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in spawned) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # reaped by the demo before it exited; a zombie's /proc entry goes at once
    assert not [pid for pid in spawned if Path(f"/proc/{pid}").exists()], "the demo left a child running"


async def test_the_demo_refuses_a_port_held_by_another_program(tmp_path: Path) -> None:
    """One line, exit 1, and the program holding the port never gets a connection."""
    connections = 0

    async def stranger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status":"ok"}')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(stranger, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        demo = await _start_demo(tmp_path, port)
        out, err = await asyncio.wait_for(demo.communicate(), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert demo.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith(
        f"demo: port {port} is taken by another program (the demo sent it nothing); try: make demo PORT="
    )
    assert "Traceback" not in err.decode() and out == b""
    assert connections == 0
