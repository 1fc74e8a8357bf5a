"""Hub chunks -> Responses stream events, in OpenAI's order.

`ResponseStream(ctx)`: `start()` gives `response.created` and
`response.in_progress`; `feed(chunk)` the events a `chat.completion.chunk`
(a dict) calls for; `finish(usage)` closes what is open and ends with exactly one
of `response.completed` / `response.incomplete` (by the finish_reason seen:
`length` -> incomplete `max_output_tokens`, `content_filter` -> incomplete
`content_filter`); `fail(error)` ends with the nested `error` event then
`response.failed`.  `response` is the final Response object the terminal event
carries (for the store); `frame(event)` is its SSE bytes.

The rules clients hold us to (openai-python's accumulator, openai-node, Codex):
dense `sequence_number`s from 0; one output item open at a time, `added` before
its deltas, `done` with the complete item; item ids stable from added to done;
`function_call_arguments.done` with the full `arguments` and the `name`.
Chat lets tool-call fragments of several calls alternate (index 0, 1, 0, ...);
here a call streams live while it is the open item and later calls wait in a
buffer.  An open call is closed as soon as another call starts and its arguments
already parse as JSON (nothing valid can follow a complete JSON value), so
sequential parallel calls (OpenAI's way) all stream live; genuinely interleaved
ones come out whole, one after the other.

Provider state (`carry.py`) rides in reasoning items' `encrypted_content`, even
when the client did not ask for it in `include`: clients replay output items as
they received them, and without the state the next turn fails upstream
(Anthropic: thinking signature; Gemini: thought signatures in tool-call ids).
A reasoning item carries its own text plus the state known when it closes; a
call id that does not fit Responses' 64 characters is replaced by its short form
and the map rides in a reasoning item placed just before the call (the open
reasoning item, or a state-only one); state that arrives after every reasoning
item closed (Anthropic sends its signature at the end of the answer) rides in a
last, state-only reasoning item.  `request.to_hub` merges every reasoning item of
a turn, wherever it stands in that turn.  `render_response` goes through this
same machine, so a Response has the same items streamed or not.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.dialects import carry
from gateway.dialects.responses.context import ResponseContext, usage_of
from gateway.ids import hex_id

Json = dict[str, Any]

_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


def frame(event: Json) -> bytes:
    """One SSE event: `event: <type>`, then the JSON (whose `type` Codex reads)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class _Call:
    __slots__ = ("call_id", "name", "args", "state")

    def __init__(self, call_id: str, name: str) -> None:
        self.call_id = call_id
        self.name = name
        self.args: list[str] = []
        self.state = "waiting"  # -> "open" -> "done"


class ResponseStream:
    """One Responses stream, fed hub chunks one by one (see the module docstring)."""

    def __init__(self, ctx: ResponseContext) -> None:
        self.ctx = ctx
        self.seq = 0
        self.output: list[Json] = []  # finished items, in order
        self.out: list[Json] = []  # events of the current call
        self.kind: str | None = None  # the open item: "reasoning", "message" or "call"
        self.item_id = ""
        self.index = 0  # output_index of the open item
        self.texts: list[str] = []  # reasoning text, or the open content part's text
        self.parts: list[Json] = []  # finished parts of the open message
        self.part: str | None = None  # the open part's type: "output_text" or "refusal"
        self.call: _Call | None = None
        self.calls: dict[int, _Call] = {}  # hub tool-call index -> call
        self.order: list[_Call] = []  # calls by first appearance
        self.pending = carry.Carried()  # state not yet placed in a reasoning item
        self.finish_reason: str | None = None
        self.usage: Json | None = None
        self.final: Json | None = None

    @property
    def response(self) -> Json | None:
        """The Response the terminal event carried (None before it)."""
        return self.final

    # -- the interface -----------------------------------------------------------------
    def start(self) -> list[Json]:
        snapshot = self.ctx.response("in_progress", [])
        self.out = []
        self._emit({"type": "response.created", "response": snapshot})
        self._emit({"type": "response.in_progress", "response": snapshot})
        return self.out

    def feed(self, chunk: Json) -> list[Json]:
        self.out = []
        usage = chunk.get("usage")
        if type(usage) is dict:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # Responses has one answer; n > 1 is not offered on this dialect
            delta = choice.get("delta") or {}
            text = delta.get("reasoning_content")
            if text and type(text) is str:
                self._reasoning(text)
            signature = delta.get("reasoning_signature")
            if signature and type(signature) is str:
                self.pending.reasoning_signature = (self.pending.reasoning_signature or "") + signature
            text = delta.get("content")
            if text and type(text) is str:
                self._content("output_text", text)
            text = delta.get("refusal")
            if text and type(text) is str:
                self._content("refusal", text)
            calls = delta.get("tool_calls")
            if calls and type(calls) is list:
                self._tool_calls(calls)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return self.out

    def finish(self, usage: Json | None = None) -> list[Json]:
        self.out = []
        reason = _INCOMPLETE.get(self.finish_reason or "")
        status = "incomplete" if reason else "completed"
        self._close(status)
        while (call := self._next_call()) is not None:
            self._open_call(call)
            self._close(status)
        if not self.output:  # an empty answer is still one (empty) message, as at OpenAI
            self._content("output_text", "")
            self._close(status)
        if self.pending:
            self._state_item()
        usage = usage_of(usage if usage is not None else self.usage)
        self.final = self.ctx.response(status, self.output, usage, incomplete=reason)
        self._emit({"type": "response." + status, "response": self.final})
        return self.out

    def fail(self, error: Json) -> list[Json]:
        """The mid-stream failure `error` (an OpenAI error body, or its inner object)."""
        self.out = []
        inner = error.get("error") if type(error.get("error")) is dict else error
        message = str(inner.get("message") or "The upstream failed while answering.")
        kind = inner.get("type") or "server_error"
        code = inner.get("code")
        self._emit(
            {"type": "error", "error": {"type": kind, "code": code, "message": message, "param": inner.get("param")}}
        )
        failure = {"code": code or kind, "message": message}
        self.final = self.ctx.response("failed", self.output, error=failure)
        self._emit({"type": "response.failed", "response": self.final})
        return self.out

    # -- items -------------------------------------------------------------------------
    def _emit(self, event: Json) -> None:
        event["sequence_number"] = self.seq
        self.seq += 1
        self.out.append(event)

    def _item_event(self, kind: str, **fields: Any) -> None:
        self._emit({"type": kind, "item_id": self.item_id, "output_index": self.index, **fields})

    def _open(self, kind: str, prefix: str, item: Json) -> None:
        self.kind, self.index = kind, len(self.output)
        self.item_id = item["id"] = self.ctx.item_id(prefix, self.index)
        self._emit({"type": "response.output_item.added", "output_index": self.index, "item": item})

    def _close(self, status: str = "completed") -> None:
        kind = self.kind
        if kind is None:
            return
        if kind == "reasoning":
            item = self._reasoning_item()
        elif kind == "message":
            self._close_part()
            item = {"id": self.item_id, "type": "message", "status": status, "content": self.parts, "role": "assistant"}
            self.parts = []
        else:
            call = self.call
            assert call is not None
            arguments = "".join(call.args)
            self._item_event("response.function_call_arguments.done", arguments=arguments, name=call.name)
            item = {
                "id": self.item_id,
                "type": "function_call",
                "status": status,
                "arguments": arguments,
                "call_id": call.call_id,
                "name": call.name,
            }
            call.state, self.call = "done", None
        self.output.append(item)
        self._emit({"type": "response.output_item.done", "output_index": self.index, "item": item})
        self.kind = None

    # -- reasoning ---------------------------------------------------------------------
    def _reasoning(self, text: str) -> None:
        if self.kind != "reasoning":
            self._close_all_calls()
            self._close()
            self._open("reasoning", "rs_", {"id": "", "type": "reasoning", "summary": []})
            self.texts = []
            if self.ctx.summaries:
                self._item_event(
                    "response.reasoning_summary_part.added", summary_index=0, part={"type": "summary_text", "text": ""}
                )
        self.texts.append(text)
        if self.ctx.summaries:
            self._item_event("response.reasoning_summary_text.delta", summary_index=0, delta=text)

    def _reasoning_item(self) -> Json:
        text = "".join(self.texts)
        self.texts = []
        summary = []
        if self.ctx.summaries and text:
            part = {"type": "summary_text", "text": text}
            self._item_event("response.reasoning_summary_text.done", summary_index=0, text=text)
            self._item_event("response.reasoning_summary_part.done", summary_index=0, part=part)
            summary.append(part)
        state = carry.Carried(reasoning_content=text or None)
        state.merge(self.pending)
        self.pending = carry.Carried()
        item: Json = {"id": self.item_id, "type": "reasoning", "summary": summary}
        if state:
            item["encrypted_content"] = carry.encode(state)
        return item

    def _state_item(self) -> None:
        """A reasoning item holding nothing but state (`self.pending`), added and done."""
        self._open("reasoning", "rs_", {"id": "", "type": "reasoning", "summary": []})
        self.texts = []
        self._close()

    # -- message content ---------------------------------------------------------------
    def _content(self, kind: str, text: str) -> None:
        if self.kind != "message":
            self._close_all_calls()
            self._close()
            self._open(
                "message",
                "msg_",
                {"id": "", "type": "message", "status": "in_progress", "content": [], "role": "assistant"},
            )
        if self.part != kind:
            self._close_part()
            self.part, self.texts = kind, []
            part = _empty_part(kind)
            self._item_event("response.content_part.added", content_index=len(self.parts), part=part)
        if not text:
            return
        self.texts.append(text)
        if kind == "output_text":
            self._emit(  # the hot path: one literal per text delta
                {
                    "type": "response.output_text.delta",
                    "item_id": self.item_id,
                    "output_index": self.index,
                    "content_index": len(self.parts),
                    "delta": text,
                    "logprobs": [],
                }
            )
        else:
            self._item_event("response.refusal.delta", content_index=len(self.parts), delta=text)

    def _close_part(self) -> None:
        kind = self.part
        if kind is None:
            return
        text = "".join(self.texts)
        index = len(self.parts)
        if kind == "output_text":
            self._item_event("response.output_text.done", content_index=index, text=text, logprobs=[])
            part: Json = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        else:
            self._item_event("response.refusal.done", content_index=index, refusal=text)
            part = {"type": "refusal", "refusal": text}
        self._item_event("response.content_part.done", content_index=index, part=part)
        self.parts.append(part)
        self.part, self.texts = None, []

    # -- function calls ----------------------------------------------------------------
    def _tool_calls(self, fragments: list[Any]) -> None:
        for position, fragment in enumerate(fragments):
            index = fragment.get("index", position)
            function = fragment.get("function") or {}
            call = self.calls.get(index)
            if call is None:
                original = fragment.get("id") or "call_" + hex_id(96)
                short = carry.short_call_id(original)
                if short != original:
                    self.pending.call_ids[short] = original
                call = self.calls[index] = _Call(short, function.get("name") or "")
                self.order.append(call)
            elif function.get("name") and call.state == "waiting" and not call.name:
                call.name = function["name"]
            arguments = function.get("arguments")
            # a fragment for a call already done cannot be shown any more; a
            # complete JSON value is never followed by more, so real streams never send one
            if arguments and type(arguments) is str and call.state != "done":
                call.args.append(arguments)
                if call is self.call:
                    self._item_event("response.function_call_arguments.delta", delta=arguments)
        self._advance()

    def _next_call(self) -> _Call | None:
        for call in self.order:
            if call.state == "waiting":
                return call
        return None

    def _advance(self) -> None:
        """Open the next waiting call when the open item may be closed."""
        while (call := self._next_call()) is not None:
            if self.kind == "call" and not _complete_json(self.call):
                return  # the open call may still grow: later calls wait
            self._close()
            self._open_call(call)

    def _close_all_calls(self) -> None:
        """Before other content: every call ends, waiting ones come out whole."""
        if self.kind == "call":
            self._close()
        while (call := self._next_call()) is not None:
            self._open_call(call)
            self._close()

    def _open_call(self, call: _Call) -> None:
        if self.pending.call_ids:
            self._state_item()  # the original ids must precede the calls that use their short forms
        self.call, call.state = call, "open"
        self._open(
            "call",
            "fc_",
            {
                "id": "",
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call.call_id,
                "name": call.name,
            },
        )
        if call.args:
            self._item_event("response.function_call_arguments.delta", delta="".join(call.args))


def _empty_part(kind: str) -> Json:
    if kind == "output_text":
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    return {"type": "refusal", "refusal": ""}


def _complete_json(call: _Call | None) -> bool:
    if call is None or not call.args:
        return call is None
    try:
        orjson.loads("".join(call.args))
    except orjson.JSONDecodeError:
        return False
    return True
