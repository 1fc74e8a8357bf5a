"""`make demo`: try the gateway with no provider account and no network.

Starts the local stand-in providers (scripts/mock_providers.py) and the gateway on
config/demo.yaml, streams one answer per provider through the official `openai`
SDK, then keeps both running until Ctrl-C so you can point your own client at it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import openai

ROOT = Path(__file__).resolve().parent.parent
MOCK_PORT = int(os.environ.get("DEMO_MOCK_PORT", "8181"))
GATEWAY = "http://127.0.0.1:8080"
KEY = os.environ.get("DEMO_KEY", "sk-demo-key")


async def wait_until_up(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up; is the port already in use?")
            await asyncio.sleep(0.2)


async def show() -> None:
    client = openai.AsyncOpenAI(base_url=f"{GATEWAY}/v1", api_key=KEY)
    models = await client.models.list()
    print("models:", ", ".join(m.id for m in models.data))
    for model in [m.id for m in models.data]:
        print(f"\n{model} (streamed): ", end="", flush=True)
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "What is a gateway?"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    print(chunk.choices[0].delta.content, end="", flush=True)
                if chunk.usage:
                    print(f"\n  usage: {chunk.usage.prompt_tokens} in, {chunk.usage.completion_tokens} out")
        except openai.APIError as exc:
            print(f"error: {exc.message}")
    await client.close()


def main() -> int:
    python = sys.executable
    env = {**os.environ, "DEMO_MOCK_PORT": str(MOCK_PORT)}
    mock = subprocess.Popen(
        [
            python,
            str(ROOT / "scripts" / "mock_providers.py"),
            "--port",
            str(MOCK_PORT),
            "--delay",
            "0.05",
            "--chunks",
            "8",
        ],
        env=env,
    )
    gateway = subprocess.Popen(
        [python, "-m", "gateway", "serve", "--config", str(ROOT / "config" / "demo.yaml"), "--log-level", "WARNING"],
        cwd=ROOT,
        env=env,
    )
    try:
        asyncio.run(wait_until_up(f"http://127.0.0.1:{MOCK_PORT}/"))
        asyncio.run(wait_until_up(f"{GATEWAY}/healthz"))
        asyncio.run(show())
        print(f"\n\nThe gateway is running.  base_url={GATEWAY}/v1  api_key={KEY}")
        print(f"Try:  curl -N {GATEWAY}/v1/chat/completions -H 'Authorization: Bearer {KEY}' \\")
        print(
            '        -d \'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}\''
        )
        print("Press Ctrl-C to stop.")
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (gateway, mock):
            proc.send_signal(signal.SIGINT)
        for proc in (gateway, mock):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
