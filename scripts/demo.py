"""`make demo`: try the gateway with no provider account and no network.

Starts the local stand-in providers (scripts/mock_providers.py) and the gateway on
config/demo.yaml, streams one answer per provider through the official `openai`
SDK, runs one tool call loop per provider, then keeps both running until Ctrl-C so
you can point your own client at it.

    python scripts/demo.py [--port 8080] [--config config/demo.yaml]

The stand-ins listen on a socket this script binds itself (a free port, handed to
them as a file descriptor), so no port of theirs can be taken.  The gateway binds
`--port` itself, and the demo talks to it only after the gateway said it listens
there: a port held by some other program is reported in one line, and that program
never receives a byte from the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import openai

ROOT = Path(__file__).resolve().parent.parent
KEY = os.environ.get("DEMO_KEY", "sk-demo-key")
_LISTENING = re.compile(r"listening on (http://\S+)/v1")
_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class DemoError(Exception):
    """Ends the demo with one line, no traceback."""


class _Stop(Exception):
    """SIGTERM, turned into an exception so the `finally` that stops the children runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stop


class _Log:
    """The gateway's log: held back until it has started (a failure then becomes the
    demo's one error line), echoed to stderr once it has."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._echo = False
        self._lock = threading.Lock()  # no line lost or reordered when echoing starts
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                if self._echo:
                    print(line, file=sys.stderr, flush=True)
                else:
                    self.lines.put(line)
        self.lines.put(None)

    def echo_from_now(self) -> None:
        with self._lock:
            self._echo = True
            while not self.lines.empty():
                line = self.lines.get()
                if line is not None:
                    print(line, file=sys.stderr, flush=True)


def wait_until_listening(gateway: subprocess.Popen[bytes], lines: queue.Queue[str | None], seconds: float) -> str:
    """The URL the gateway says it listens on: its own line, from the process we started,
    is the proof that the port is ours and not some other program's."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise DemoError(f"the gateway did not start within {seconds:.0f} s") from None
        if line is None:  # the gateway exited: say why, in its own words
            errors = [re.sub(r"^.*? ERROR [\w.]+: ", "", s) for s in seen if " ERROR " in s]
            raise DemoError(
                f"the gateway could not start: {errors[-1] if errors else 'exit code ' + str(gateway.wait())}"
            )
        seen.append(line)
        match = _LISTENING.search(line)
        if match:
            for earlier in seen:  # its warnings and start-up line, now that they are not an error
                print(earlier, file=sys.stderr, flush=True)
            return match.group(1)


def _free_port_near(port: int) -> int | None:
    for candidate in range(port + 1, port + 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    return None


async def show(base: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    try:
        models = [m.id for m in (await client.models.list()).data]
        print("models:", ", ".join(models))
        for model in models:
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
                await tool_loop(client, model)
            except openai.APIError as exc:
                print(f"error: {exc.message}")
    finally:
        await client.close()


async def tool_loop(client: openai.AsyncOpenAI, model: str) -> None:
    """One round of tool calling, as an agent would do it: the model asks for a tool,
    the client runs it and sends the result back, the model answers."""
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = await client.chat.completions.create(model=model, messages=messages, tools=[_WEATHER])
    calls = first.choices[0].message.tool_calls or []
    if not calls:
        print(f"  tools: no tool call ({first.choices[0].message.content!r})")
        return
    call = calls[0]
    print(f"  tool call: {call.function.name}({call.function.arguments})")  # type: ignore[union-attr]
    result = json.dumps({"temperature_c": 21, "sky": "clear"})
    messages += [first.choices[0].message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": call.id, "content": result}]
    second = await client.chat.completions.create(model=model, messages=messages, tools=[_WEATHER])
    print(f"  after the tool's result {result}: {second.choices[0].message.content}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080, help="the gateway's port (default 8080)")
    parser.add_argument("--config", default=str(ROOT / "config" / "demo.yaml"), help="the gateway's configuration")
    parser.add_argument("--chunks", type=int, default=8, help="pieces per streamed answer")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between streamed pieces")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    # the stand-ins' socket: bound here on a free port, so it cannot be anyone else's
    mock_sock = socket.socket()
    mock_sock.bind(("127.0.0.1", 0))
    mock_sock.listen(128)
    mock_port = mock_sock.getsockname()[1]
    env = {**os.environ, "DEMO_MOCK_PORT": str(mock_port), "DEMO_KEY": KEY}
    python = sys.executable
    mock = subprocess.Popen(
        [python, str(ROOT / "scripts" / "mock_providers.py"), "--fd", str(mock_sock.fileno()),
         "--chunks", str(args.chunks), "--delay", str(args.delay)],
        env=env, pass_fds=(mock_sock.fileno(),),
    )  # fmt: skip
    mock_sock.close()  # the child has its own copy
    gateway = subprocess.Popen(
        [python, "-m", "gateway", "serve", "--config", args.config, "--port", str(args.port), "--log-level", "INFO"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert gateway.stderr is not None
    log = _Log(gateway.stderr)
    code = 0
    try:
        base = wait_until_listening(gateway, log.lines, 30)
        log.echo_from_now()
        asyncio.run(show(base))
        print(f"\n\nThe gateway is running.  base_url={base}/v1  api_key={KEY}")
        print(f"Try:  curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {KEY}' \\")
        print(
            '        -d \'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}\''
        )
        print("Press Ctrl-C to stop.", flush=True)
        while gateway.poll() is None and mock.poll() is None:
            time.sleep(0.5)
        print("demo: a child process stopped; stopping the other", file=sys.stderr)
        code = 1
    except DemoError as exc:
        line = str(exc)
        if "Address already in use" in line:  # the usual cause, with the way out
            free = _free_port_near(args.port)
            line = f"port {args.port} is taken by another program (the demo sent it nothing)"
            line += f"; try: make demo PORT={free}" if free else ""
        print(f"demo: {line}", file=sys.stderr)
        code = 1
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for proc in (gateway, mock):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (gateway, mock):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
