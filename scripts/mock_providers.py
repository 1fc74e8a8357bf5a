"""Local stand-ins for OpenAI, Anthropic and Gemini, speaking each one's real wire format.

One aiohttp server answers all three APIs (their paths do not collide):

    POST /v1/chat/completions                          OpenAI (JSON or SSE + [DONE])
    POST /v1/embeddings                                OpenAI embeddings
    POST /v1/messages                                  Anthropic Messages (JSON or named SSE events)
    POST /v1beta/models/{m}:generateContent            Gemini (JSON)
    POST /v1beta/models/{m}:streamGenerateContent      Gemini (SSE with CRLF framing, ?alt=sse)
    POST /v1beta/models/{m}:batchEmbedContents         Gemini embeddings

The answer echoes the last user message, split into `--chunks` pieces sent
`--delay` seconds apart.  Used by `make demo` (a visible, slowly streamed answer)
and by the benchmark (many chunks, no delay: then every event of a stream leaves in
a single write, so the mock stays cheap next to what it is measuring).

    python scripts/mock_providers.py --port 8181 --chunks 20 --delay 0
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

CHUNKS = web.AppKey("CHUNKS", int)
DELAY = web.AppKey("DELAY", float)


def _last_user_text(body: Any) -> str:
    """Best effort over the three request shapes; the mock only needs something to echo."""
    try:
        if "contents" in body:  # Gemini
            parts = body["contents"][-1]["parts"]
            return " ".join(p.get("text", "") for p in parts if isinstance(p, dict))
        content = body["messages"][-1]["content"]
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    except (KeyError, IndexError, TypeError):
        return ""


def _pieces(app: web.Application, body: Any, kind: str) -> list[str]:
    said = _last_user_text(body)[:200] or "nothing"
    text = f"Hello from the local {kind} stand-in! You said: {said}"
    n = max(1, app[CHUNKS])
    words = text.split(" ")
    if len(words) >= n:  # spread the words over n pieces
        step = len(words) / n
        return [" ".join(words[int(i * step) : int((i + 1) * step)]) + " " for i in range(n)]
    return [w + " " for w in words] + ["."] * (n - len(words))


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def _stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    delay = request.app[DELAY]
    if delay:
        for event in events:
            await asyncio.sleep(delay)
            await resp.write(event)
    else:  # the same events and bytes in one write: one syscall instead of one per event
        await resp.write(b"".join(events))
    await resp.write_eof()
    return resp


# -- OpenAI ------------------------------------------------------------------------------


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    pieces = _pieces(request.app, body, "OpenAI")
    base = {"id": "chatcmpl-mock", "created": int(time.time()), "model": body.get("model", "mock")}
    usage = {"prompt_tokens": 10, "completion_tokens": len(pieces), "total_tokens": 10 + len(pieces)}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return _json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage_chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        events.append(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return await _stream(request, events)


async def openai_embeddings(request: web.Request) -> web.Response:
    body = await request.json(loads=orjson.loads)
    inputs = body.get("input")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
    usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
    return _json({"object": "list", "data": data, "model": body.get("model"), "usage": usage})


# -- Anthropic ---------------------------------------------------------------------------


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    pieces = _pieces(request.app, body, "Anthropic")
    model = body.get("model", "mock")
    if not body.get("stream"):
        return _json(
            {
                "id": "msg_mock",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": "".join(pieces)}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": len(pieces)},
            }
        )

    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"

    start = {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": []}
    start |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    events = [
        event("message_start", {"message": start}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("ping", {}),
    ]
    events += [event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    events += [
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": len(pieces)}},
        ),
        event("message_stop", {}),
    ]
    return await _stream(request, events)


# -- Gemini ------------------------------------------------------------------------------


async def gemini(request: web.Request) -> web.StreamResponse:
    model, _, method = request.match_info["call"].partition(":")
    body = await request.json(loads=orjson.loads)
    if method == "batchEmbedContents":
        requests = body.get("requests") or []
        return _json({"embeddings": [{"values": [0.1, 0.2, 0.3]} for _ in requests]})
    pieces = _pieces(request.app, body, "Gemini")

    def fragment(text: str, last: bool, count: int) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        usage = {"promptTokenCount": 10, "candidatesTokenCount": count, "totalTokenCount": 10 + count}
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "mock"}

    if method == "generateContent":
        return _json(fragment("".join(pieces), True, len(pieces)))
    if method != "streamGenerateContent":
        raise web.HTTPNotFound()
    events = [
        b"data: " + orjson.dumps(fragment(p, i == len(pieces) - 1, i + 1)) + b"\r\n\r\n" for i, p in enumerate(pieces)
    ]
    return await _stream(request, events)


def make_app(chunks: int = 20, delay: float = 0.0) -> web.Application:
    app = web.Application()
    app[CHUNKS] = chunks
    app[DELAY] = delay
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/v1/embeddings", openai_embeddings)
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_post("/v1beta/models/{call}", gemini)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8181)
    parser.add_argument("--chunks", type=int, default=20, help="pieces per answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between streamed pieces")
    args = parser.parse_args()
    try:  # faster when installed; the gateway and the benchmark's pipe pick it the same way
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(
        make_app(args.chunks, args.delay),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        **({"loop": loop} if loop else {}),
    )


if __name__ == "__main__":
    main()
