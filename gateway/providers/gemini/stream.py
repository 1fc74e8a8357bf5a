"""Gemini `streamGenerateContent` SSE events -> OpenAI `chat.completion.chunk`s (`_GeminiStream`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.providers.base import Json, Reply, StreamTranslator, truncated, usage_dict
from gateway.providers.gemini.errors import _status_of
from gateway.providers.gemini.response import (
    _block_reason,
    _blocked_message,
    _candidates,
    _check_finish,
    _finish_reason,
    _index,
    _logprobs,
    _opens_with_call,
    _parts,
    _tool_call,
    _usage,
)
from gateway.sse import Event

if TYPE_CHECKING:
    from gateway.providers.gemini import GeminiAdapter


class _GeminiStream(StreamTranslator):
    """Each Gemini SSE event is a whole response fragment; we turn its parts into deltas.

    finishReason is only remembered (old models repeat STOP on every event) and
    acted on at EOF, when the finish chunk per choice and the usage chunk go out."""

    def __init__(self, reply: Reply, adapter: GeminiAdapter) -> None:
        super().__init__(reply)
        self.adapter = adapter
        self.seen_event = False
        self.started: set[int] = set()  # choices whose role chunk went out
        self.calls: dict[int, int] = {}  # tool calls emitted so far, per choice
        self.reasons: dict[int, str] = {}  # the latest finishReason, per choice
        self.blocked: str | None = None

    # usageMetadata comes with every event; it is converted only when read (at the end):
    # converting each one was 5 % of a Gemini stream in the profile (scripts/bench)
    @property  # type: ignore[override]
    def usage(self) -> Json | None:
        return _usage(self._meta) if self._meta is not None else self._usage

    @usage.setter
    def usage(self, value: Json | None) -> None:
        self._meta: Json | None = None
        self._usage = value

    def feed(self, event: Event) -> list[Json]:
        response = self.adapter.parse_json(event.data)
        if isinstance(response.get("error"), dict):
            raise self.adapter.error_from_body(_status_of(response["error"]), response, {})
        if not self.seen_event and isinstance(response.get("responseId"), str) and response["responseId"]:
            self.reply.upstream_id = response["responseId"]  # Google's id, for the usage row
        self.seen_event = True
        if isinstance(response.get("usageMetadata"), dict):
            self._meta = response["usageMetadata"]  # cumulative: the last one wins
        candidates = _candidates(response)
        out: list[Json] = []
        if not candidates and (blocked := _block_reason(response)) is not None:
            self.blocked = blocked
            out += self._start(0)
            out.append(self.reply.delta({"refusal": _blocked_message(blocked)}))
            return out
        for position, candidate in enumerate(candidates):
            index = _index(candidate, position)
            reason = _check_finish(candidate)
            if index not in self.started:
                out += self._start(index, None if _opens_with_call(candidate) else "")
            out += self._deltas(candidate, index)
            if reason is not None:
                self.reasons[index] = reason
        return out

    def _start(self, index: int, content: str | None = "") -> list[Json]:
        """The role chunk of a choice; `content` null before a tool call, as OpenAI sends it."""
        if index in self.started:
            return []
        self.started.add(index)
        return [self.reply.delta({"role": "assistant", "content": content}, None, index)]

    def _deltas(self, candidate: Json, index: int) -> list[Json]:
        out: list[Json] = []
        logprobs = _logprobs(candidate)
        for part in _parts(candidate):
            if isinstance(part.get("functionCall"), dict):
                call = _tool_call(part)
                if call is not None:
                    k = self.calls.get(index, 0)
                    self.calls[index] = k + 1
                    out.append(self.reply.delta({"tool_calls": [{"index": k, **call}]}, None, index))
                continue
            text = part.get("text")
            if not isinstance(text, str) or not text:
                continue  # e.g. the empty part that only carries a thoughtSignature
            if part.get("thought"):
                out.append(self.reply.delta({"reasoning_content": text}, None, index))
                continue
            chunk = self.reply.delta({"content": text}, None, index)
            if logprobs is not None:  # this event's tokens ride on its first text delta
                chunk["choices"][0]["logprobs"], logprobs = logprobs, None
            out.append(chunk)
        return out

    def finish(self) -> list[Json]:
        if self.usage is None:
            self.usage = usage_dict(0, 0)
        if self.blocked is not None:
            return self.closing([(0, "content_filter")])
        if not self.started or any(index not in self.reasons for index in self.started):
            raise truncated(self.adapter.provider)
        return self.closing(
            [
                (index, _finish_reason(self.reasons[index], self.calls.get(index, 0) > 0))
                for index in sorted(self.started)
            ]
        )
