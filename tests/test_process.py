"""The real `gateway serve` process: graceful stop loses nothing, SIGHUP reloads, logs hold no secret."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml
from conftest import ENV, FREE_KEY, PRO_KEY, UPSTREAM_KEY, base_config
from fakes import Reply, fixture_bytes, json_reply

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "a secret prompt 4711"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_process(config: Path, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port),
        cwd=ROOT, env={**ENV, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("gateway did not start: " + (await proc.stdout.read()).decode())  # type: ignore[union-attr]


async def test_sigterm_lets_the_stream_finish_and_flushes_usage(fake_server: Any, tmp_path: Path) -> None:
    fake, url = await fake_server()
    db = tmp_path / "usage.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(base_config({"oai": ("openai", url)}, str(db))))
    port = free_port()
    proc = await start_process(config, port)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=PRO_KEY, max_retries=0)
    try:
        fake.script(json_reply({"error": {"message": f"bad key {UPSTREAM_KEY}"}}, 401))
        try:
            await client.chat.completions.create(model="oai-small", messages=MESSAGES)
        except openai.InternalServerError as exc:
            assert UPSTREAM_KEY not in str(exc.body)

        # reload with an invalid file: rejected, the old configuration keeps serving
        good = config.read_text()
        config.write_text("tiers: [\n")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        assert len((await client.models.list()).data) == 2
        config.write_text(good.replace("oai-large", "oai-huge"))
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        assert [m.id for m in (await client.models.list()).data] == ["oai-small", "oai-huge"]

        fake.script(Reply(body=fixture_bytes("openai_chunks_text_usage.sse"), content_type="text/event-stream",
                          delay=0.5))  # fmt: skip
        stream = await client.chat.completions.create(model="oai-small", messages=MESSAGES, stream=True)
        proc.send_signal(signal.SIGTERM)  # while the answer is still being written
        chunks = [c async for c in stream]
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
    assert "reload rejected" in output and "configuration reloaded" in output
    for secret in (UPSTREAM_KEY, PRO_KEY, FREE_KEY, "4711"):
        assert secret not in output, f"a secret or prompt reached the log: {secret}"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, stream, total_tokens FROM usage ORDER BY id").fetchall()
    assert rows == [(502, 0, 0), (200, 1, 44)]
