"""Tool-call ids every upstream accepts, whoever minted them (dialects.md C7).

A conversation may carry ids another provider minted: a client that switches
model between a tool call and its answer, or a fallback to another deployment.
Each upstream has its own rule, and ids can be far outside it: Gemini's ids carry
the thought signature (`call_<24>__ts_<signature>`, 400+ characters), Kimi's look
like `functions.Bash:0`.  An id is sent as it is when it fits the target's rule,
else as its short form: `call_` + the first 32 characters of
base64url(sha256(id)), 37 characters of `[A-Za-z0-9_-]`, which fits every rule.

The short form is a pure function of the id (carry.py's, which the Responses and
Messages dialects use too), so the assistant's `tool_calls[].id` and the `tool`
message's `tool_call_id` map to the same value without any store, in this request
and in every later turn.  The client keeps the original, so a later request to
the provider that minted it (Gemini) still finds its state there.

Rules, per upstream:
- OpenAI-compatible: at most 40 characters (OpenAI's limit).  Only the length
  counts: OpenAI takes any character, and some compatible servers depend on their
  own format (Kimi's `functions.<name>:<n>`), which must come back unchanged.
- Anthropic: `^[a-zA-Z0-9_-]+$` (the documented pattern), at most 64 characters
  (the cap Bedrock documents for the same ids; Anthropic documents none): a
  Gemini signature is useless to Anthropic and would only ride along as bulk.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.dialects.carry import short_call_id

OPENAI_LIMIT: Final = 40
ANTHROPIC_LIMIT: Final = 64


def for_openai(call_id: str) -> str:
    """`call_id` when OpenAI accepts it, else its short form."""
    return call_id if len(call_id) <= OPENAI_LIMIT else short_call_id(call_id, OPENAI_LIMIT)


def for_anthropic(call_id: str) -> str:
    """`call_id` when it matches Anthropic's pattern within 64 characters, else its short form."""
    return short_call_id(call_id, ANTHROPIC_LIMIT)


def openai_messages(messages: list[Any]) -> list[Any] | None:
    """`messages` with every tool-call id OpenAI would refuse replaced by its short
    form, and without the gateway's own `reasoning_signature` (provider state for
    Anthropic or Gemini, meaningless to an OpenAI-compatible server, and an unknown
    field to OpenAI), or None when nothing needs it (the body then goes up
    untouched).  Copies what it changes: the hub body is shared with later attempts,
    which may go to another provider (Gemini needs its long ids back)."""
    fitted: list[Any] | None = None
    for i, message in enumerate(messages):  # objects: validation.check_chat saw to it
        # the hot path: a plain message costs three key lookups, nothing more
        if "tool_calls" not in message and "tool_call_id" not in message and "reasoning_signature" not in message:
            continue
        changed = _fit_message(message)
        if "reasoning_signature" in message:
            changed = dict(changed or message)
            del changed["reasoning_signature"]
        if changed is not None:
            if fitted is None:
                fitted = list(messages)
            fitted[i] = changed
    return fitted


def _fit_message(message: dict[str, Any]) -> dict[str, Any] | None:
    call_id = message.get("tool_call_id")
    if type(call_id) is str and len(call_id) > OPENAI_LIMIT:
        return {**message, "tool_call_id": short_call_id(call_id, OPENAI_LIMIT)}
    calls = message.get("tool_calls")
    if type(calls) is not list:
        return None
    fitted: list[Any] | None = None
    for j, call in enumerate(calls):
        call_id = call.get("id") if type(call) is dict else None
        if type(call_id) is str and len(call_id) > OPENAI_LIMIT:
            if fitted is None:
                fitted = list(calls)
            fitted[j] = {**call, "id": short_call_id(call_id, OPENAI_LIMIT)}
    return None if fitted is None else {**message, "tool_calls": fitted}
