"""A Gemini response -> OpenAI choices: parts -> the assistant message (text,
thoughts, tool calls with signed ids), finishReason -> finish_reason (or an error),
blocked prompts, logprobs, usage.  Shared with stream.py."""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.errors import InvalidRequest, UpstreamError
from gateway.providers.base import Json, usage_dict
from gateway.providers.gemini.signatures import new_tool_call_id

_FILTERED: Final = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "ESCALATION",
        "PUP_LIMITED_DISABLED",
        "MODEL_ARMOR",
    }
)
_LENGTH: Final = frozenset({"MAX_TOKENS", "CONTINUATION"})
# Reasons after which the answer is unusable: an error, not an empty success.
_FAILED: Final = {
    "MALFORMED_FUNCTION_CALL": "Gemini generated a malformed function call",
    "UNEXPECTED_TOOL_CALL": "Gemini called a function that was not declared or not allowed",
    "TOO_MANY_TOOL_CALLS": "Gemini made too many tool calls in one turn",
    "MALFORMED_RESPONSE": "Gemini produced a malformed response",
}
_MISSING_SIGNATURE: Final = "MISSING_THOUGHT_SIGNATURE"


def _choice(candidate: Json, position: int) -> Json:
    """One candidate of a whole response as an OpenAI choice."""
    reason = _check_finish(candidate)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[Json] = []
    for part in _parts(candidate):
        if isinstance(part.get("functionCall"), dict):
            call = _tool_call(part)
            if call is not None:
                calls.append(call)
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
    message: Json = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    return {
        "index": _index(candidate, position),
        "message": message,
        "logprobs": _logprobs(candidate),
        "finish_reason": _finish_reason(reason, bool(calls)),
    }


def _candidates(response: Json) -> list[Json]:
    candidates = response.get("candidates")
    return [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []


def _parts(candidate: Json) -> list[Json]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None  # absent on MAX_TOKENS, SAFETY...
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _index(candidate: Json, position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position  # Vertex omits 0


def _block_reason(response: Json) -> str | None:
    feedback = response.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return str(reason) if reason else None


def _blocked_message(reason: str) -> str:
    return f"Gemini blocked the prompt (blockReason: {reason}); no answer was generated."


def _check_finish(candidate: Json) -> str | None:
    """The candidate's finishReason; raises for the reasons that leave no usable answer."""
    reason = candidate.get("finishReason")
    if not isinstance(reason, str):
        return None
    detail = candidate.get("finishMessage")
    detail = f": {detail}" if isinstance(detail, str) and detail else "."
    if reason in _FAILED:
        raise UpstreamError(f"{_FAILED[reason]} (finishReason {reason}){detail}", code="upstream_bad_output")
    if reason == _MISSING_SIGNATURE:
        raise InvalidRequest(
            "Gemini needs the thought signature of an earlier tool call: send tool call ids back exactly "
            f"as the gateway returned them (finishReason {reason}){detail}",
            code="missing_thought_signature",
        )
    return reason


def _opens_with_call(candidate: Json) -> bool:
    """Whether a candidate opens with a function call rather than text or a thought."""
    for part in _parts(candidate):
        if isinstance(part.get("functionCall"), dict):
            return True
        if isinstance(part.get("text"), str) and part["text"]:
            return False
    return False


def _finish_reason(reason: str | None, called: bool) -> str:
    if reason in _LENGTH:
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called else "stop"


def _tool_call(part: Json) -> Json | None:
    call = part["functionCall"]
    if call.get("willContinue") or "partialArgs" in call:
        # Vertex's streamFunctionCallArguments: pieces to assemble by JSON path.  The
        # Developer API never sends them; refuse rather than hand out half a call.
        raise UpstreamError(
            "Gemini sent partial function-call arguments (streamFunctionCallArguments), "
            "which this gateway does not assemble.",
            code="upstream_bad_output",
        )
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = call.get("args")
    signature = part.get("thoughtSignature")
    return {
        "id": new_tool_call_id(signature if isinstance(signature, str) else None),
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(args if isinstance(args, dict) else {}).decode()},
    }


def _logprobs(candidate: Json) -> Json | None:
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    chosen = [c for c in result.get("chosenCandidates") or [] if isinstance(c, dict)]
    tops = result.get("topCandidates") or []
    content = []
    for k, token in enumerate(chosen):
        entry = _token_logprob(token)
        top = tops[k].get("candidates") if k < len(tops) and isinstance(tops[k], dict) else None
        entry["top_logprobs"] = [_token_logprob(t) for t in top or [] if isinstance(t, dict)]
        content.append(entry)
    return {"content": content, "refusal": None}


def _token_logprob(token: Json) -> Json:
    text = str(token.get("token") or "")
    logprob = token.get("logProbability")
    return {"token": text, "logprob": float(logprob or 0.0), "bytes": list(text.encode())}


def _count(meta: Any, key: str) -> int:
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(meta: Any) -> Json:
    thoughts = _count(meta, "thoughtsTokenCount")
    return usage_dict(
        _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount"),
        _count(meta, "candidatesTokenCount") + thoughts,
        cached=_count(meta, "cachedContentTokenCount"),
        reasoning=thoughts,
    )
