"""The real `gateway serve` process: graceful stop loses nothing, SIGHUP reloads, logs hold no secret."""

from __future__ import annotations

import asyncio
import os
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
from processes import children

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
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
    if proc.returncode is None:
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


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def _fresh_connection_calls(port: int, n: int, path: str = "/v1/chat/completions") -> list[Any]:
    """`n` calls, each on its own new connection, so the kernel spreads them over the workers."""
    body = {"model": "oai-small", "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {PRO_KEY}"}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> Any:
            url = f"http://127.0.0.1:{port}{path}"
            call = session.post(url, json=body) if path.endswith("completions") else session.get(url)
            async with call as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        return await asyncio.gather(*(one() for _ in range(n)))


async def test_workers_share_one_port_one_log_and_reload_together(fake_server: Any, tmp_path: Path) -> None:
    """server.workers: 2 -> two processes on one port (SO_REUSEPORT), both serving,
    one usage log with every row, SIGHUP reaching both, a killed worker replaced."""
    fake, url = await fake_server()
    completion = fixture_bytes("openai_chat_completion_text.json")
    fake.script(*(Reply(body=completion) for _ in range(400)))
    db = tmp_path / "usage.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(base_config({"oai": ("openai", url)}, str(db), server={"workers": 2})))
    port = free_port()
    proc = await start_process(config, port)
    try:
        workers = children(proc.pid)
        assert len(workers) == 2
        before = {pid: _cpu_ticks(pid) for pid in workers}
        answers = await _fresh_connection_calls(port, 300)
        assert {a["model"] for a in answers} == {"oai-small"}
        busy = [pid for pid in workers if _cpu_ticks(pid) > before[pid]]
        assert busy == workers, "each worker served a share of the connections"

        config.write_text(config.read_text().replace("oai-large", "oai-huge"))
        proc.send_signal(signal.SIGHUP)
        for _ in range(50):  # every worker reloads on its own; give a loaded machine time
            await asyncio.sleep(0.1)
            listings = await _fresh_connection_calls(port, 40, "/v1/models")
            seen = {tuple(m["id"] for m in listing["data"]) for listing in listings}
            if seen == {("oai-small", "oai-huge")}:
                break
        assert seen == {("oai-small", "oai-huge")}

        for _ in range(100):  # the writers linger up to 0.2 s; a crash loses only what is unwritten
            with sqlite3.connect(db) as conn:
                if conn.execute("SELECT count(*) FROM usage").fetchone()[0] >= 300:
                    break
            await asyncio.sleep(0.05)
        os.kill(workers[0], signal.SIGKILL)  # a crashed worker is replaced
        for _ in range(100):
            now = children(proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            await asyncio.sleep(0.05)
        assert len(now) == 2 and workers[0] not in now
        await _fresh_connection_calls(port, 50)

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert children(proc.pid) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with sqlite3.connect(db) as conn:
        statuses = [row[0] for row in conn.execute("SELECT status FROM usage")]
    assert statuses == [200] * 350  # written before the crash, and flushed on SIGTERM after it
