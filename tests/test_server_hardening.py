"""Issue 11's attacks on the HTTP server layer, kept as tests against a real `gateway
serve` process (gateway/server/, gateway/workers.py): requests the parser rejects,
slowloris, a short body, a too-large `Expect: 100-continue`, HTTP/1.0 streams, a
database that cannot open, SIGTERM with streams in flight, a supervisor killed under
its workers, and a reload of the server settings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import ENV, PRO_KEY, UPSTREAM_KEY, Gateway, base_config
from fakes import FakeUpstream, fixture_bytes, json_reply, sse_reply
from processes import ROOT, Served, children, free_port, launch, raise_own_fd_limit, wait_until_serving, write_config

PROMPT = "a secret prompt 4711"
AUTH = {"Authorization": f"Bearer {PRO_KEY}"}
NOWHERE = "http://127.0.0.1:9/v1"  # an upstream never called by these tests


def gateway_doc(tmp_path: Path, upstream: str = NOWHERE, **server: Any) -> dict[str, Any]:
    return base_config({"oai": ("openai", upstream)}, str(tmp_path / "usage.db"), server=server)


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes; everything the gateway answers until it closes (or `timeout`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        writer.close()
    return received


def split(answer: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


def error_of(body: bytes) -> dict[str, Any]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


async def stop(served: Served, timeout: float = 10.0) -> int:
    if served.proc.returncode is None:
        served.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(served.proc.wait(), timeout)


# -- 4. requests the HTTP parser rejects ---------------------------------------------------

_KEY = PRO_KEY.encode()
_BODY = orjson.dumps({"model": "oai-small", "messages": [{"role": "user", "content": PROMPT}]})
MALFORMED = {
    "bare LF line endings": b"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer " + _KEY
    + b"\nContent-Length: %d\n\n" % len(_BODY) + _BODY,
    "control character after the key": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + _KEY + b"\x01\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
    "obs-fold": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + _KEY
    + b"\r\nX-Note: begins\r\n " + PROMPT.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY,
}  # fmt: skip


async def test_parser_errors_answer_json_and_log_neither_key_nor_prompt(tmp_path: Path) -> None:
    served = await launch(tmp_path, write_config(tmp_path, gateway_doc(tmp_path)))
    try:
        for name, request in MALFORMED.items():
            answer = await exchange(served.port, request)
            status, headers, body = split(answer)
            assert status.split()[1] == b"400", (name, answer[:300])
            assert headers["content-type"].startswith("application/json")
            assert error_of(body)["code"] == "malformed_request"
            assert _KEY not in answer and PROMPT.encode() not in answer, name
        out = await served.wait_for_output("malformed HTTP requests rejected")
        assert await stop(served) == 0
    finally:
        await served.stop()
    out = served.output()
    assert PRO_KEY not in out and PROMPT not in out and "4711" not in out
    assert "Traceback" not in out and " ERROR " not in out, out
    assert all(" WARNING " in line for line in out.splitlines() if "malformed" in line)


# -- 6. slowloris --------------------------------------------------------------------------

_PARTIAL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl"


def _open_partial(port: int, n: int) -> list[socket.socket]:
    """`n` connections that each send half a request's headers, then nothing."""
    held: list[socket.socket] = []
    for _ in range(n):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=3)
            sock.sendall(_PARTIAL)
        except OSError:  # the gateway no longer accepts: the attack has succeeded
            break
        held.append(sock)
    return held


def _wait_all_closed(held: list[socket.socket], timeout: float) -> int:
    """Wait until the gateway has closed every held connection; returns how many it has not."""
    open_ = list(held)
    for sock in open_:
        sock.setblocking(False)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        still = []
        for sock in open_:
            try:
                if sock.recv(4096):
                    still.append(sock)
            except BlockingIOError:
                still.append(sock)
            except OSError:
                pass  # reset: closed
        open_ = still
        time.sleep(0.1)
    return len(open_)


async def test_slowloris_cannot_lock_clients_out(tmp_path: Path) -> None:
    """2,000 half-sent requests against a process limited to 1,024 descriptors (the
    issue's `ulimit -n 1024` case): a well-behaved client is still answered at once,
    the shedding is logged, and the half-sent ones are closed after header_timeout."""
    raise_own_fd_limit()
    doc = gateway_doc(tmp_path, max_connections=100, header_timeout=2)
    served = await launch(tmp_path, write_config(tmp_path, doc), open_files=1024)
    held: list[socket.socket] = []
    try:
        held = await asyncio.to_thread(_open_partial, served.port, 2000)
        assert len(held) == 2000
        connector = aiohttp.TCPConnector(force_close=True)  # a fresh connection per call
        async with aiohttp.ClientSession(connector=connector, headers=AUTH) as session:
            for _ in range(5):
                async with asyncio.timeout(5), session.get(f"{served.url}/v1/models") as resp:
                    assert resp.status == 200
        await served.wait_for_output("connection limit (server.max_connections) reached")
        assert await asyncio.to_thread(_wait_all_closed, held, 2 + 3) == 0
        await served.wait_for_output("request headers not received within server.header_timeout")
        assert await stop(served) == 0
    finally:
        for sock in held:
            sock.close()
        await served.stop()
    assert "Traceback" not in served.output()


# -- 7. a short body; a too-large body announced with Expect: 100-continue -------------------


async def test_body_shorter_than_its_content_length_gets_408(tmp_path: Path) -> None:
    served = await launch(tmp_path, write_config(tmp_path, gateway_doc(tmp_path, body_timeout=1)))
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + _KEY
        + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + _BODY[:20]
    )  # fmt: skip
    try:
        started = time.monotonic()
        answer = await exchange(served.port, request, timeout=5)
        assert time.monotonic() - started < 4  # answered, and the connection closed
        status, headers, body = split(answer)
        assert status.split()[1] == b"408", answer[:300]
        assert error_of(body)["code"] == "request_timeout"
        assert headers["connection"] == "close"
        assert await stop(served) == 0
    finally:
        await served.stop()
    with sqlite3.connect(tmp_path / "usage.db") as db:
        assert db.execute("SELECT status, error_code FROM usage").fetchall() == [(408, "request_timeout")]


async def test_expect_continue_over_the_limit_gets_413_at_once(tmp_path: Path) -> None:
    served = await launch(tmp_path, write_config(tmp_path, gateway_doc(tmp_path, max_body_bytes=1000)))
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + _KEY
        + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )  # fmt: skip
    try:
        started = time.monotonic()
        answer = await exchange(served.port, request, timeout=5)
        assert time.monotonic() - started < 2  # no wait for a body never asked for
        assert b"100 Continue" not in answer
        status, headers, body = split(answer)
        assert status.split()[1] == b"413", answer[:300]
        assert error_of(body)["code"] == "request_too_large"
        assert headers["connection"] == "close"
    finally:
        await served.stop()


# -- 10. HTTP/1.0 streams --------------------------------------------------------------------


async def test_http10_stream_is_close_delimited_with_every_event(gateway: Gateway, upstream: FakeUpstream) -> None:
    """nginx speaks HTTP/1.0 to upstreams by default: no chunks, the close ends the stream."""
    upstream.script(sse_reply(fixture_bytes("openai_chunks_text_usage.sse")))
    body = orjson.dumps({"model": "oai-small", "messages": [{"role": "user", "content": "Hi"}], "stream": True})
    request = (
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer " + _KEY
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip
    answer = await exchange(gateway.server.port, request)
    status, headers, payload = split(answer)
    assert status.startswith(b"HTTP/1.0 200 "), answer[:300]
    assert "transfer-encoding" not in headers and headers["connection"] == "close"
    assert headers["content-type"].startswith("text/event-stream")
    events = [e for e in payload.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    recorded = fixture_bytes("openai_chunks_text_usage.sse").split(b"\n\n")
    sent = [orjson.loads(e.removeprefix(b"data: ")) for e in recorded if e.startswith(b"data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(c["choices"][0]["delta"].get("content") or "" for c in sent if c["choices"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# -- 11. a usage database that cannot open ---------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["directory", "garbage file"])
async def test_a_database_that_cannot_open_is_one_line_and_a_quick_exit(
    tmp_path: Path, kind: str, workers: int
) -> None:
    db = tmp_path / "usage.db"
    if kind == "directory":
        db.mkdir()
    else:
        db.write_bytes(b"this is not a database\n" * 200)
    served = await launch(tmp_path, write_config(tmp_path, gateway_doc(tmp_path, workers=workers)), ready=False)
    try:
        started = time.monotonic()
        code = await asyncio.wait_for(served.proc.wait(), 10)
        assert time.monotonic() - started < 5
    finally:
        await served.stop()
    out = served.output()
    assert code != 0
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert str(db) in errors[0], out


# -- 12. SIGTERM with a stream in flight -----------------------------------------------------


def _chunk(text: str) -> bytes:
    data = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]}  # fmt: skip
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def _endless_stream(aiohttp_server: Any) -> str:
    """An upstream whose stream goes on for minutes, a word every 50 ms."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(6000):
                await resp.write(_chunk("word "))
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("/v1"))


def dechunk(data: bytes) -> tuple[bytes, bytes | None]:
    """A chunked body: (payload, what follows the final 0-size chunk; None if it never came)."""
    payload = b""
    while True:
        size_line, crlf, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return payload, None
        if not crlf:
            return payload, None
        if size == 0:
            return payload, rest.removeprefix(b"\r\n")
        payload += rest[:size]
        data = rest[size + 2 :]


async def test_sigterm_stops_within_shutdown_timeout_and_ends_cut_streams(aiohttp_server: Any, tmp_path: Path) -> None:
    """A stream still running at SIGTERM: the process is gone within shutdown_timeout
    plus a second, the client's stream ends with a final `server_shutting_down`
    error event (then a proper end of the chunked body), and the usage log has the
    stream's row."""
    url = await _endless_stream(aiohttp_server)
    doc = gateway_doc(tmp_path, url, shutdown_timeout=2)
    served = await launch(tmp_path, write_config(tmp_path, doc))
    body = orjson.dumps({"model": "oai-small", "messages": [{"role": "user", "content": "Go on."}], "stream": True})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + _KEY
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )  # fmt: skip
        received = await reader.readuntil(b"\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 200 "), received
        received += await reader.readuntil(b"\n\n")  # the first event: the stream is under way
        signalled = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)

        async def exited() -> float:
            await served.proc.wait()
            return time.monotonic() - signalled

        exit_time = asyncio.create_task(exited())
        try:
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    received += chunk
        finally:
            writer.close()
        took = await asyncio.wait_for(exit_time, 10)
    finally:
        await served.stop()
    out = served.output()
    assert served.proc.returncode == 0, out
    assert took < 2 + 1, f"stopped in {took:.1f} s\n{out}"
    assert "stopping: 1 requests in flight" in out and "stopped in" in out
    with sqlite3.connect(tmp_path / "usage.db") as db:
        assert db.execute("SELECT stream FROM usage").fetchall() == [(1,)]
    # the handler's part (the lead's): the final event, then a proper end of the body
    payload, after = dechunk(received.partition(b"\r\n\r\n")[2])
    events = [e for e in payload.split(b"\n\n") if e.startswith(b"data: ")]
    final = orjson.loads(events[-1].removeprefix(b"data: "))
    assert final.get("error", {}).get("code") == "server_shutting_down", events[-1]
    assert after == b"", received[-300:]


# -- 13. the supervisor killed under its workers -----------------------------------------------


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its reaping is left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_workers_exit_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    served = await launch(tmp_path, write_config(tmp_path, gateway_doc(tmp_path, workers=2)))
    workers: list[int] = []
    try:
        for _ in range(100):
            workers = children(served.proc.pid)
            if len(workers) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(workers) == 2
        served.proc.send_signal(signal.SIGKILL)
        await served.proc.wait()
        killed = time.monotonic()
        while any(map(_running, workers)) and time.monotonic() - killed < 5:
            await asyncio.sleep(0.05)
        assert not any(map(_running, workers)), "workers outlived their supervisor"
        with pytest.raises(OSError):  # nothing serves the port any more
            socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        await served.stop()


_WATCHING = """
import sys
from gateway import server
from gateway.app import create_app
from gateway.config import load_config
from gateway.workers import listening_socket

path, fd, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = load_config(path)
server.run(create_app(config, path), listening_socket("127.0.0.1", port), config, watch_fd=fd)
"""


async def test_a_worker_stops_when_its_supervisor_pipe_closes(tmp_path: Path) -> None:
    """The portable half of "die with the supervisor" (no PR_SET_PDEATHSIG outside
    Linux): a worker serving with the pipe's read end stops when the write end closes."""
    read_end, write_end = os.pipe()
    port = free_port()
    config = write_config(tmp_path, gateway_doc(tmp_path))
    log = tmp_path / "worker.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WATCHING, str(config), str(read_end), str(port), pass_fds=(read_end,),
                cwd=ROOT, env={**ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}, stdout=out, stderr=out,
            )  # fmt: skip
        os.close(read_end)
        served = Served(proc, port, config, log)
        await wait_until_serving(served)
        os.close(write_end)  # as the supervisor's death would
        write_end = -1
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if write_end >= 0:
            os.close(write_end)
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "the supervisor is gone; stopping" in log.read_text()


# -- 14. SIGHUP and the server settings ------------------------------------------------------


async def test_reload_applies_max_body_bytes_and_names_settings_needing_a_restart(
    fake_server: Any, tmp_path: Path
) -> None:
    fake, url = await fake_server()
    fake.script(*[json_reply(orjson.loads(fixture_bytes("openai_chat_completion_text.json")))] * 2)
    config = write_config(tmp_path, gateway_doc(tmp_path, url))
    served = await launch(tmp_path, config)
    body = {"model": "oai-small", "messages": [{"role": "user", "content": "x" * 3000}]}
    try:
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with session.post(f"{served.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
            write_config(tmp_path, gateway_doc(tmp_path, url, max_body_bytes=1000, port=free_port()))
            served.proc.send_signal(signal.SIGHUP)
            out = await served.wait_for_output("configuration reloaded")
            async with session.post(f"{served.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 413
                assert error_of(await resp.read())["code"] == "request_too_large"
        assert await stop(served) == 0
    finally:
        await served.stop()
    warnings = [line for line in out.splitlines() if " WARNING " in line and "server.port" in line]
    assert len(warnings) == 1 and "restart" in warnings[0], out
    assert UPSTREAM_KEY not in served.output()
