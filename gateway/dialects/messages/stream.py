"""Hub `chat.completion.chunk`s -> Messages stream events, sans-IO.

    ms = MessageStream(ctx)
    events = ms.start(input_tokens)        # message_start
    events = ms.feed(chunk)                # per hub chunk: block start / delta / stop
    events = ms.finish(usage)              # close blocks, message_delta, message_stop
    events = ms.fail(exc)                  # an upstream failure mid-stream: `error`
    wire = b"".join(frame(e) for e in events)

Anthropic's order is kept exactly: blocks have dense indexes from 0 and one is
open at a time.  Thinking and text stream live.  A tool call's block opens as
soon as its name is known, but its arguments go out as one `input_json_delta`
when it closes: the SDK parses every fragment as partial JSON and raises on
broken text, so the whole is checked first (not a JSON object -> `{}`, as
render.py does).  Chat lets the fragments of parallel calls interleave; a call
that starts while another is open waits, and the open one is closed as soon as
its arguments form a complete JSON object (so sequential calls still flow), or
at the end.  Text or thinking that comes once a call has started (rare: answers
put text first) is held and sent after the calls, since closing a call's block
early would cut its arguments.  Thinking blocks and the state envelope follow
render.py's rule, so the SDK's accumulated message equals `render_message` of
the same answer (for answers in Anthropic's order: thinking, text, tool calls).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.dialects.messages.render import MessageContext, render_error, stop_reason, tool_id, tool_input
from gateway.dialects.messages.render import usage as messages_usage
from gateway.dialects.messages.state import EMPTY, seal
from gateway.errors import GatewayError

Json = dict[str, Any]
PING: Final = {"type": "ping"}


def frame(event: Json) -> bytes:
    """One SSE event: `event: <type>`, then the JSON (anthropic-python dispatches on the event line)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class _Call:
    __slots__ = ("id", "name", "args")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.args: list[str] = []

    def arguments(self) -> str:
        if len(self.args) > 1:
            self.args = ["".join(self.args)]
        return self.args[0] if self.args else ""


class MessageStream:
    """One Messages stream: feed it hub chunks, send what it returns."""

    def __init__(self, ctx: MessageContext) -> None:
        self.ctx = ctx
        self._next = 0  # index of the next block
        self._open: str | None = None  # "thinking", "text" or "tool_use"
        self._calls: dict[int, _Call] = {}  # hub tool-call index -> call
        self._waiting: list[_Call] = []  # calls not started yet, in order of appearance
        self._current: _Call | None = None  # the open tool_use block's call
        self._ids: dict[str, str] = {}  # tool id shown -> upstream id
        self._signature: str | None = None
        self._finish: str | None = None
        self._refused = False
        self._usage: Json | None = None
        self._late: list[tuple[str, str]] = []  # (block kind, text) that came after a tool call started
        self._done = False

    def start(self, input_tokens: int = 0) -> list[Json]:
        message = {
            "id": self.ctx.id,
            "type": "message",
            "role": "assistant",
            "model": self.ctx.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,  # what Anthropic sends; message_delta carries the real count
            },
        }
        return [{"type": "message_start", "message": message}]

    def ping(self) -> Json:
        return PING

    def feed(self, chunk: Json | bytes) -> list[Json]:
        """The events for one hub chunk (a dict, or its JSON bytes)."""
        if self._done:
            return []
        if not isinstance(chunk, dict):
            chunk = orjson.loads(chunk)
        hub_usage = chunk.get("usage")
        if hub_usage:
            self._usage = hub_usage
        out: list[Json] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a Messages answer has one choice; the hub request never asks for more
            delta = choice.get("delta")
            if delta:
                self._delta(delta, out)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def finish(self, usage: Json | None = None) -> list[Json]:
        """Close everything: the last blocks, message_delta (stop reason, usage), message_stop."""
        if self._done:
            return []
        self._done = True
        if usage:
            self._usage = usage
        out: list[Json] = []
        if self._waiting or self._late:
            self._close(out)
            while self._waiting:
                self._start_call(out)
                self._close(out)
            for kind, text in self._late:
                self._text(kind, text, out)
        if self._open == "thinking":
            state = EMPTY
            self._close(out, seal(self._signature, self._ids))  # the last block carries the state
        else:
            self._close(out)
            state = seal(self._signature, self._ids) if self.ctx.thinking else EMPTY
        if state != EMPTY:
            self._open_block(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._close(out, state)
        reason = stop_reason(self._finish, bool(self._calls), self._refused)
        # unknown usage: only output_tokens (the SDK requires it), so message_start's input count stands
        delta_usage = messages_usage(self._usage) if self._usage else {"output_tokens": 0}
        out.append(
            {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": delta_usage}
        )
        out.append({"type": "message_stop"})
        return out

    def fail(self, exc: GatewayError) -> list[Json]:
        """The `error` event for a failure mid-stream; nothing follows it."""
        self._done = True
        return [{"type": "error", "error": render_error(exc)[1]["error"]}]

    # -- inside ------------------------------------------------------------------------------
    def _delta(self, delta: Json, out: list[Json]) -> None:
        reasoning = delta.get("reasoning_content")
        if reasoning and self.ctx.thinking:
            self._text("thinking", reasoning, out)
        signature = delta.get("reasoning_signature")
        if signature:
            self._signature = (self._signature or "") + signature
        for key in ("content", "refusal"):
            text = delta.get(key)
            if text:
                self._refused = self._refused or key == "refusal"
                self._text("text", text, out)
        calls = delta.get("tool_calls")
        if calls:
            self._fragments(calls, out)

    def _text(self, kind: str, text: str, out: list[Json]) -> None:
        """Thinking or answer text: live, until a tool call has started.  After that it
        waits for the end, as closing a call's block early would cut off its arguments."""
        if self._calls and not self._done:
            self._late.append((kind, text))
            return
        if self._open != kind:
            self._close(out)
            empty = (
                {"type": "thinking", "thinking": "", "signature": ""}
                if kind == "thinking"
                else {"type": "text", "text": ""}
            )
            self._open_block(out, kind, empty)
        delta = (
            {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        )
        out.append(self._block_delta(delta))

    def _fragments(self, fragments: list[Json], out: list[Json]) -> None:
        for fragment in fragments:
            index = fragment.get("index", 0)
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = _Call()
                self._waiting.append(call)
            if call.id is None and fragment.get("id"):
                call.id = fragment["id"]
            function = fragment.get("function")
            if function:
                if call.name is None and function.get("name"):
                    call.name = function["name"]
                if function.get("arguments"):
                    call.args.append(function["arguments"])
        # open the next call when it can be: nothing else open, or the open call is complete
        while self._waiting and self._waiting[0].name is not None:
            if self._current is not None and not _complete(self._current):
                break
            self._close(out)
            self._start_call(out)

    def _start_call(self, out: list[Json]) -> None:
        call = self._current = self._waiting.pop(0)
        name = call.name or ""
        block = {"type": "tool_use", "id": tool_id(call.id, self._ids), "name": name, "input": {}}
        self._open_block(out, "tool_use", block)

    def _open_block(self, out: list[Json], kind: str, block: Json) -> None:
        out.append({"type": "content_block_start", "index": self._next, "content_block": block})
        self._next += 1
        self._open = kind

    def _block_delta(self, delta: Json) -> Json:
        return {"type": "content_block_delta", "index": self._next - 1, "delta": delta}

    def _close(self, out: list[Json], signature: str = EMPTY) -> None:
        if self._open is None:
            return
        if self._open == "thinking":
            out.append(self._block_delta({"type": "signature_delta", "signature": signature}))
        elif self._open == "tool_use" and self._current is not None:
            call, self._current = self._current, None
            arguments = call.arguments()
            if arguments.strip():
                if not tool_input(arguments, call.name or ""):  # broken or not an object (logged there)
                    arguments = "{}"
                out.append(self._block_delta({"type": "input_json_delta", "partial_json": arguments}))
        out.append({"type": "content_block_stop", "index": self._next - 1})
        self._open = None


def _complete(call: _Call) -> bool:
    """Whether a call's arguments so far are a whole JSON object (cheap test first)."""
    arguments = call.arguments()
    if not arguments.rstrip().endswith("}"):
        return False
    try:
        return isinstance(orjson.loads(arguments), dict)
    except orjson.JSONDecodeError:
        return False
