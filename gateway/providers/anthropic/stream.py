"""Messages API stream events -> OpenAI `chat.completion.chunk`s (`_AnthropicStream`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from gateway.providers.anthropic.response import _finish_reason, anthropic_usage
from gateway.providers.anthropic.thinking import encode_reasoning
from gateway.providers.anthropic.tools import JSON_TOOL
from gateway.providers.base import Json, Reply, StreamTranslator, truncated
from gateway.sse import Event

if TYPE_CHECKING:
    from gateway.providers.anthropic import AnthropicAdapter


class _AnthropicStream(StreamTranslator):
    """Messages API events -> OpenAI chunks, one event at a time.

    Content blocks are tracked by Anthropic's block index; tool calls get their
    own running OpenAI index (a text block before a tool must not shift it).  The
    role chunk waits for the first block, which decides its `content`: null before
    a tool call, "" otherwise, as OpenAI opens its own streams."""

    def __init__(self, reply: Reply, adapter: AnthropicAdapter) -> None:
        super().__init__(reply)
        self.adapter = adapter
        self.blocks: dict[int, Json] = {}  # block index -> what we know of that block
        self.thinking: list[Json] = []  # finished thinking blocks, in order, for the signature
        self.calls = 0  # client tool calls emitted so far
        self.raw_usage: Json = {}
        self.stop_reason: Any = None
        self.stopped = False
        self.opened = False  # the role chunk went out

    def feed(self, event: Event) -> list[Json]:
        if self.stopped:
            return []
        data = self.adapter.parse_json(event.data)
        kind = data.get("type")
        if kind == "error":
            raise self.adapter.error_from_body(0, data, {})
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        return handler(self, data) if handler else []  # ping and unknown events carry nothing for us

    def finish(self) -> list[Json]:
        if not self.stopped:
            raise truncated(self.adapter.provider)
        return []

    # -- events ---------------------------------------------------------------------------

    def _on_message_start(self, data: Json) -> list[Json]:
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        if isinstance(message.get("id"), str) and message["id"]:
            self.reply.upstream_id = message["id"]  # Anthropic's id, for the usage row
        self._take_usage(message.get("usage"))
        return []  # the role chunk goes out with the first block (_open)

    def _on_content_block_start(self, data: Json) -> list[Json]:
        block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
        if self.opened:
            return self._start_block(data.get("index"), block)
        tool_call = block.get("type") == "tool_use" and block.get("name") != JSON_TOOL
        return self._open(None if tool_call else "") + self._start_block(data.get("index"), block)

    def _start_block(self, index: Any, block: Json) -> list[Json]:
        kind = block.get("type")
        state: Json = {"type": kind, "args": False}
        self.blocks[index] = state
        if kind == "text":
            return self._content(str(block.get("text") or ""))
        if kind == "thinking":
            state.update(thinking=str(block.get("thinking") or ""), signature=str(block.get("signature") or ""))
            return self._reasoning(state["thinking"])
        if kind == "redacted_thinking":
            self.thinking.append({"type": "redacted_thinking", "data": block.get("data") or ""})
            return []
        if kind != "tool_use":
            return []
        if block.get("name") == JSON_TOOL:
            state["type"] = "answer"  # JSON mode: the tool input is the message content
            return []
        state["call"] = self.calls
        self.calls += 1
        first = {
            "index": state["call"],
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self.reply.delta({"tool_calls": [first]})]

    def _on_content_block_delta(self, data: Json) -> list[Json]:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        state = self.blocks.get(data.get("index"), {})
        kind = delta.get("type")
        if kind == "text_delta":
            return self._content(str(delta.get("text") or ""))
        if kind == "thinking_delta":
            text = str(delta.get("thinking") or "")
            state["thinking"] = state.get("thinking", "") + text
            return self._reasoning(text)
        if kind == "signature_delta":
            state["signature"] = state.get("signature", "") + str(delta.get("signature") or "")
            return []
        if kind == "input_json_delta":
            return self._arguments(state, str(delta.get("partial_json") or ""))
        return []  # citations_delta and future kinds

    def _on_content_block_stop(self, data: Json) -> list[Json]:
        state = self.blocks.get(data.get("index"), {})
        if state.get("type") == "thinking":
            self.thinking.append({"type": "thinking", "thinking": state["thinking"], "signature": state["signature"]})
        if state.get("type") in ("tool_use", "answer") and not state["args"]:
            return self._arguments(state, "{}")  # a tool without input: clients json.loads the arguments
        return []

    def _on_message_delta(self, data: Json) -> list[Json]:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        if delta.get("stop_reason") is not None:
            self.stop_reason = delta["stop_reason"]
        self._take_usage(data.get("usage"))
        return []

    def _on_message_stop(self, data: Json) -> list[Json]:
        self.stopped = True
        out = self._open("")  # an answer without a single block
        signature = encode_reasoning(self.thinking)
        if signature:
            out.append(self.reply.delta({"reasoning_signature": signature}))
        return out + self.closing([(0, _finish_reason(self.stop_reason, self.calls > 0))])

    _handlers: Final = {
        "message_start": _on_message_start,
        "content_block_start": _on_content_block_start,
        "content_block_delta": _on_content_block_delta,
        "content_block_stop": _on_content_block_stop,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
    }

    # -- helpers --------------------------------------------------------------------------

    def _open(self, content: str | None) -> list[Json]:
        if self.opened:
            return []
        self.opened = True
        return [self.reply.delta({"role": "assistant", "content": content})]

    def _content(self, text: str) -> list[Json]:
        return [self.reply.delta({"content": text})] if text else []

    def _reasoning(self, text: str) -> list[Json]:
        return [self.reply.delta({"reasoning_content": text})] if text else []

    def _arguments(self, state: Json, fragment: str) -> list[Json]:
        if not fragment or state.get("type") not in ("tool_use", "answer"):
            return []
        state["args"] = True
        if state["type"] == "answer":
            return self._content(fragment)
        return [self.reply.delta({"tool_calls": [{"index": state["call"], "function": {"arguments": fragment}}]})]

    def _take_usage(self, raw: Any) -> None:
        """Usage is cumulative: every value present replaces the one before."""
        if isinstance(raw, dict):
            self.raw_usage.update({k: v for k, v in raw.items() if v is not None})
            self.usage = anthropic_usage(self.raw_usage)
