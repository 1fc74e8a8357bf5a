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

Tools: when a request declares tools (and does not turn them off with its tool
choice), the answer is a call of the first tool (or the one the tool choice forces),
with arguments made up from its JSON schema, in each API's own shape: OpenAI
`tool_calls`, Anthropic `tool_use`, Gemini `functionCall`, streamed or not.  When
the last message is a tool's result, the answer is text quoting that result, so a
client's whole tool loop can be watched offline.  A request without tools never
enters that code: the benchmark's path is the one above, unchanged.

    python scripts/mock_providers.py --port 8181 --chunks 20 --delay 0
    python scripts/mock_providers.py --fd 3      # serve on an inherited listening socket
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import time
from typing import Any

import orjson
from aiohttp import web

CHUNKS = web.AppKey("CHUNKS", int)
DELAY = web.AppKey("DELAY", float)
_CALLS = itertools.count(1)  # tool call ids: unique per process, and valid for every provider's id pattern


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


def _pieces(app: web.Application, body: Any, kind: str, text: str | None = None) -> list[str]:
    if text is None:
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


# -- tools: one shape-neutral decision, then each API's own wire format ------------------


def _example(schema: Any, name: str = "value", depth: int = 0) -> Any:
    """A plausible value for a JSON schema (Gemini's upper-case types too): what a
    model would fill in, good enough to show a tool call and to satisfy a client's parser."""
    if not isinstance(schema, dict) or depth > 6:
        return f"example {name}"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if str(k).lower() != "null"), "string")
    kind = str(kind or ("object" if "properties" in schema else "string")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        wanted = schema.get("required") or list(props)
        return {key: _example(props.get(key), key, depth + 1) for key in wanted if isinstance(key, str)}
    if kind == "array":
        return [_example(schema.get("items"), name, depth + 1)]
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    return f"example {name.replace('_', ' ')}"


def _tool_call(tools: list[tuple[str, Any]], forced: str | None) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) of the call to make: the forced tool, else the first declared."""
    for name, schema in tools:
        if forced is None or name == forced:
            args = _example(schema if isinstance(schema, dict) else {"type": "object"}, name)
            return name, args if isinstance(args, dict) else {}
    return None


def _after_tool(kind: str, result: str) -> str:
    return f"Hello from the local {kind} stand-in! The tool answered: {result[:200] or 'nothing'}"


def _text_of(content: Any) -> str:
    """A message's or tool result's text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _split(text: str, n: int) -> list[str]:
    """`text` in at most `n` consecutive pieces (streamed tool arguments)."""
    n = max(1, min(n, len(text)))
    step = len(text) / n
    return [text[int(i * step) : int((i + 1) * step)] for i in range(n)]


# -- OpenAI ------------------------------------------------------------------------------


async def openai_chat(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    if body.get("tools"):  # one lookup: requests without tools (the benchmark's) go on as before
        return await _openai_tools(request, body)
    return await _openai_text(request, body, _pieces(request.app, body, "OpenAI"))


async def _openai_text(request: web.Request, body: Any, pieces: list[str]) -> web.StreamResponse:
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


async def _openai_tools(request: web.Request, body: Any) -> web.StreamResponse:
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        text = _after_tool("OpenAI", _text_of(last.get("content")))
        return await _openai_text(request, body, _pieces(request.app, body, "OpenAI", text))
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, dict):
        forced = (choice.get("function") or {}).get("name")
    tools = [
        ((t.get("function") or {}).get("name"), (t.get("function") or {}).get("parameters"))
        for t in body["tools"]
        if isinstance(t, dict) and t.get("type") == "function"
    ]
    call = None if choice == "none" else _tool_call(tools, forced)
    if call is None:
        return await _openai_text(request, body, _pieces(request.app, body, "OpenAI"))
    name, args = call
    call_id = f"call_mock_{next(_CALLS)}"
    arguments = orjson.dumps(args).decode()
    base = {"id": "chatcmpl-mock", "created": int(time.time()), "model": body.get("model", "mock")}
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    if not body.get("stream"):
        function = {"name": name, "arguments": arguments}
        message = {"role": "assistant", "content": None, "refusal": None}
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
        choice_out = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        return _json({**base, "object": "chat.completion", "choices": [choice_out], "usage": usage})

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"

    opening = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    events = [chunk({"role": "assistant", "content": None, "tool_calls": [opening]})]
    events += [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for piece in _split(arguments, request.app[CHUNKS])
    ]
    events.append(chunk({}, "tool_calls"))
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
    if body.get("tools"):  # one lookup: requests without tools (the benchmark's) go on as before
        return await _anthropic_tools(request, body)
    return await _anthropic_text(request, body, _pieces(request.app, body, "Anthropic"))


def _anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _anthropic_start(model: str) -> bytes:
    start = {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": []}
    start |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    return _anthropic_event("message_start", {"message": start})


async def _anthropic_text(request: web.Request, body: Any, pieces: list[str]) -> web.StreamResponse:
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

    event = _anthropic_event
    events = [
        _anthropic_start(model),
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


async def _anthropic_tools(request: web.Request, body: Any) -> web.StreamResponse:
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    content = last.get("content") if isinstance(last.get("content"), list) else []
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    if last.get("role") == "user" and results:
        text = _after_tool("Anthropic", " ".join(_text_of(r.get("content")) for r in results))
        return await _anthropic_text(request, body, _pieces(request.app, body, "Anthropic", text))
    choice = body.get("tool_choice") or {}
    forced = choice.get("name") if choice.get("type") == "tool" else None
    tools = [
        (t.get("name"), t.get("input_schema"))
        for t in body["tools"]
        if isinstance(t, dict) and t.get("type") in (None, "custom")  # server tools run at Anthropic, not here
    ]
    call = None if choice.get("type") == "none" else _tool_call(tools, forced)
    if call is None:
        return await _anthropic_text(request, body, _pieces(request.app, body, "Anthropic"))
    name, args = call
    call_id = f"toolu_mock_{next(_CALLS)}"
    model = body.get("model", "mock")
    if not body.get("stream"):
        return _json(
            {
                "id": "msg_mock",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "tool_use", "id": call_id, "name": name, "input": args}],
                "stop_reason": "tool_use",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5},
            }
        )
    event = _anthropic_event
    block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
    events = [_anthropic_start(model), event("content_block_start", {"index": 0, "content_block": block})]
    events += [
        event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}})
        for piece in _split(orjson.dumps(args).decode(), request.app[CHUNKS])
    ]
    events += [
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {"delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 5}},
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
    if body.get("tools"):  # one lookup: requests without tools (the benchmark's) go on as before
        return await _gemini_tools(request, body, model, method)
    return await _gemini_text(request, model, method, _pieces(request.app, body, "Gemini"))


async def _gemini_text(request: web.Request, model: str, method: str, pieces: list[str]) -> web.StreamResponse:
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


async def _gemini_tools(request: web.Request, body: Any, model: str, method: str) -> web.StreamResponse:
    contents = body.get("contents") or [{}]
    parts = contents[-1].get("parts") if isinstance(contents[-1], dict) else None
    results = [p["functionResponse"] for p in parts or () if isinstance(p, dict) and "functionResponse" in p]
    if results:
        said = " ".join(orjson.dumps(r.get("response")).decode() for r in results if isinstance(r, dict))
        text = _after_tool("Gemini", said)
        return await _gemini_text(request, model, method, _pieces(request.app, body, "Gemini", text))
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = config.get("allowedFunctionNames") or [None]
    tools = [
        (d.get("name"), d.get("parameters") or d.get("parametersJsonSchema"))
        for t in body["tools"]
        if isinstance(t, dict)
        for d in t.get("functionDeclarations") or ()
        if isinstance(d, dict)
    ]
    call = None if config.get("mode") == "NONE" else _tool_call(tools, allowed[0])
    if call is None:
        return await _gemini_text(request, model, method, _pieces(request.app, body, "Gemini"))
    name, args = call
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if model.startswith("gemini-3"):  # Gemini 3 signs its calls and wants the signature back
        part["thoughtSignature"] = "bW9jay1zaWduYXR1cmU="
    candidate = {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
    answer = {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": model,
    }
    answer["responseId"] = "mock"
    if method == "generateContent":
        return _json(answer)
    if method != "streamGenerateContent":
        raise web.HTTPNotFound()
    # Gemini sends a function call whole, in one event, never in pieces
    return await _stream(request, [b"data: " + orjson.dumps(answer) + b"\r\n\r\n"])


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
    parser.add_argument(
        "--fd",
        type=int,
        help="serve on this inherited listening socket instead (the demo binds it: no race for a port)",
    )
    args = parser.parse_args()
    try:  # faster when installed; the gateway and the benchmark's pipe pick it the same way
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    where: dict[str, Any] = {"host": args.host, "port": args.port}
    if args.fd is not None:
        where = {"sock": socket.socket(fileno=args.fd)}
    web.run_app(
        make_app(args.chunks, args.delay),
        **where,
        access_log=None,
        print=None,
        **({"loop": loop} if loop else {}),
    )


if __name__ == "__main__":
    main()
