"""The Messages API's request rules, for a `FakeUpstream` playing Anthropic.

`check(path, headers, body)` answers what the real API answers to a request it
refuses (status and Anthropic's error body), or None when the request is
acceptable.  It is stricter than the API where that is cheap (roles must
alternate, which the API would merge), never more lenient, so a gateway that
passes it builds requests Anthropic accepts.
"""

from __future__ import annotations

import re
from typing import Any

from fakes import Reply, json_reply

TOP_LEVEL = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "service_tier",
        "output_config",
    }
)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class Rejected(Exception):
    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.type = status, type


def error_body(type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}, "request_id": "req_fake0123456789"}


def check(path: str, headers: dict[str, str], body: Any) -> Reply | None:
    try:
        _check(path, {k.lower(): v for k, v in headers.items()}, body)
    except Rejected as exc:
        return json_reply(error_body(exc.type, str(exc)), exc.status)
    return None


def _check(path: str, headers: dict[str, str], body: Any) -> None:
    if path != "/v1/messages":
        raise Rejected(f"Not found: {path}", 404, "not_found_error")
    if not headers.get("x-api-key"):
        raise Rejected("x-api-key header is required", 401, "authentication_error")
    if not headers.get("anthropic-version"):
        raise Rejected("anthropic-version: header is required")
    if not isinstance(body, dict):
        raise Rejected("Request body must be a JSON object")
    for key in body:
        if key not in TOP_LEVEL:
            raise Rejected(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Rejected("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Rejected("max_tokens: Field required")
    _sampling(body)
    _system(body.get("system"))
    tools = _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"), tools)
    _messages(body.get("messages"))
    _thinking(body)
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise Rejected("metadata: only user_id is allowed")
    if metadata and "@" in str(metadata.get("user_id")):
        raise Rejected("metadata.user_id: user_id appears to contain an email address.")


def _sampling(body: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise Rejected("temperature: Input should be less than or equal to 1")
    top_p = body.get("top_p")
    if top_p is not None and not 0 <= top_p <= 1:
        raise Rejected("top_p: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise Rejected("stop_sequences: Input should be a valid list of strings")
        if any(not s.strip() for s in stops):
            raise Rejected("stop_sequences: each stop sequence must contain non-whitespace")


def _system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Rejected("system: Input should be a valid list")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Rejected(f"system.{i}: Input tag does not match the expected 'text'")
        _text(block, f"system.{i}")


def _tools(tools: Any) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise Rejected("tools: Input should be a valid list")
    names = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not TOOL_NAME.match(str(tool.get("name"))):
            raise Rejected(f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Rejected(f"tools.{i}.input_schema.type: Input should be 'object'")
        if set(tool) - {"name", "description", "input_schema", "cache_control", "strict", "type"}:
            raise Rejected(f"tools.{i}: Extra inputs are not permitted")
        if tool["name"] in names:
            raise Rejected("tools: Tool names must be unique.")
        names.add(tool["name"])
    return names


def _tool_choice(choice: Any, tools: set[str]) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise Rejected("tool_choice: Input tag does not match any of the expected tags")
    if not tools:
        raise Rejected("tool_choice may only be specified while providing tools.")
    if kind == "tool" and choice.get("name") not in tools:
        raise Rejected(f"tool_choice.name: Tool '{choice.get('name')}' not found in tools")
    if kind == "none" and "disable_parallel_tool_use" in choice:
        raise Rejected("tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted")


def _messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise Rejected("messages: at least one message is required")
    previous_tool_uses: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Rejected(f"{where}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise Rejected('messages: first message must use the "user" role')
        if i > 0 and messages[i - 1]["role"] == role:
            raise Rejected('messages: roles must alternate between "user" and "assistant"')
        blocks = _blocks(message.get("content"), where, final=i == len(messages) - 1 and role == "assistant")
        if _has_thinking(message) and blocks[0]["type"] not in ("thinking", "redacted_thinking"):
            raise Rejected(
                f"{where}.content.0: If an assistant message contains any thinking blocks, the first block "
                f"must be thinking or redacted_thinking. Found {blocks[0]['type']}."
            )
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if role == "user":
            _answers(previous_tool_uses, results, blocks, where)
        elif results:
            raise Rejected(f"{where}: tool_result blocks are only allowed in user messages")
        previous_tool_uses = {b["id"] for b in blocks if b["type"] == "tool_use"}
    if previous_tool_uses:
        raise Rejected("messages: `tool_use` ids were found without `tool_result` blocks immediately after")


def _answers(tool_uses: set[str], results: list[str], blocks: list[dict[str, Any]], where: str) -> None:
    for tool_id in results:
        if tool_id not in tool_uses:
            raise Rejected(
                f"{where}.content: unexpected `tool_use_id` found in `tool_result` blocks: {tool_id}. "
                f"Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            )
    missing = tool_uses - set(results)
    if missing:
        raise Rejected(
            f"{where}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(sorted(missing))}. Each `tool_use` block must have a corresponding `tool_result` "
            f"block in the next message."
        )
    kinds = [b["type"] for b in blocks]
    if results and kinds[: len(results)] != ["tool_result"] * len(results):
        raise Rejected(f"{where}.content: tool_result blocks must come first in the message")


def _blocks(content: Any, where: str, *, final: bool) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content.strip() and not final:
            raise Rejected(f"{where}: all messages must have non-empty content")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise Rejected(f"{where}: all messages must have non-empty content")
    for j, block in enumerate(content):
        _block(block, f"{where}.content.{j}")
    if final and content[-1].get("type") == "text" and content[-1]["text"] != content[-1]["text"].rstrip():
        raise Rejected("final assistant content cannot end with trailing whitespace")
    return content


def _block(block: Any, where: str) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        _text(block, where)
    elif kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in IMAGE_TYPES or not source.get("data"):
                raise Rejected(f"{where}.source.media_type: Input should be 'image/jpeg', 'image/png', ...")
        elif source.get("type") != "url" or not str(source.get("url", "")).startswith(("http://", "https://")):
            raise Rejected(f"{where}.source: Input tag does not match any of the expected tags")
    elif kind == "document":
        source = block.get("source") or {}
        if source.get("type") != "base64" or source.get("media_type") != "application/pdf":
            raise Rejected(f"{where}.source: unsupported document source")
    elif kind == "tool_use":
        if not isinstance(block.get("input"), dict) or not block.get("id") or not block.get("name"):
            raise Rejected(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not block.get("tool_use_id"):
            raise Rejected(f"{where}.tool_use_id: Field required")
        content = block.get("content")
        if isinstance(content, list):
            for k, inner in enumerate(content):
                _block(inner, f"{where}.content.{k}")
    elif kind == "thinking":
        if not isinstance(block.get("thinking"), str) or not block.get("signature"):
            raise Rejected(f"{where}.signature: Field required")
    elif kind == "redacted_thinking":
        if not block.get("data"):
            raise Rejected(f"{where}.data: Field required")
    else:
        raise Rejected(f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags")


def _text(block: dict[str, Any], where: str) -> None:
    text = block.get("text")
    if not isinstance(text, str) or not text:
        raise Rejected(f"{where}: text content blocks must be non-empty")
    if not text.strip():
        raise Rejected(f"{where}: text content blocks must contain non-whitespace text")


def _thinking(body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    messages = body["messages"]
    enabled = isinstance(thinking, dict) and thinking.get("type") == "enabled"
    if not enabled:
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and i == len(messages) - 1 and _has_thinking(message):
                raise Rejected(
                    f"messages.{i}.content.0: When thinking is disabled, an `assistant` message in the final "
                    f"position cannot contain `thinking`."
                )
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        raise Rejected("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if budget >= body["max_tokens"]:
        raise Rejected("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if "temperature" in body or "top_k" in body:
        raise Rejected("`temperature` and `top_k` may not be set when thinking is enabled.")
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        raise Rejected("`top_p` must be between 0.95 and 1 when thinking is enabled.")
    choice = body.get("tool_choice") or {}
    if choice.get("type") in ("any", "tool"):
        raise Rejected("Thinking may not be enabled when tool_choice forces tool use.")
    assistants = [(i, m) for i, m in enumerate(messages) if m["role"] == "assistant"]
    if assistants:
        i, last = assistants[-1]
        blocks = last["content"] if isinstance(last["content"], list) else []
        first = blocks[0]["type"] if blocks else "text"
        in_play = i == len(messages) - 1 or any(b["type"] == "tool_use" for b in blocks)  # prefill or tool loop
        if in_play and first not in ("thinking", "redacted_thinking"):
            raise Rejected(
                f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. "
                f"When `thinking` is enabled, a final `assistant` message must start with a thinking block."
            )


def _has_thinking(message: dict[str, Any]) -> bool:
    content = message["content"]
    return isinstance(content, list) and any(b["type"] in ("thinking", "redacted_thinking") for b in content)
