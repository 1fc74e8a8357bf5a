"""A Messages create (or count_tokens) body -> the hub request (a Chat Completions body).

Only Messages clients in front of non-Anthropic upstreams come here (an Anthropic
upstream gets the client's bytes untouched).  Field by field:

- `system` (string or text blocks) -> one leading `system` message, blocks joined
  by a blank line.  A Claude Code `x-anthropic-billing-header:` block is dropped:
  it changes on every request and would defeat the upstream's prefix cache.
- `messages` -> see content.py.
- `max_tokens` (required, int >= 1) -> `max_completion_tokens`;
  `stop_sequences` -> `stop`; `temperature`, `top_p` (0..1) -> same.
- `top_k` (int >= 1) -> `top_k`, a hub extension: the Gemini adapter sends it as
  `topK`; OpenAI has no such knob, so the OpenAI adapter must drop it.
- `stream` -> `stream` plus `stream_options.include_usage` (the final usage is
  what `message_delta` reports).
- `tools`: custom tools (`name`, `description`, `input_schema`, `strict`) ->
  function tools.  Server tools (any `type` but "custom": web_search_*, bash_*,
  text_editor_*, code_execution_*, computer_*, memory_*...) are 400s naming
  `tools[i]`: only Anthropic runs them.
- `tool_choice` auto / any / tool / none -> `auto` / `required` / `{function}` /
  `none`; `disable_parallel_tool_use` -> `parallel_tool_calls: false`.  Both only
  go out with tools: without any they mean nothing and OpenAI refuses them.
- `thinking` -> `reasoning_effort`: enabled with `budget_tokens` < 2048 low,
  < 8192 medium, else high; adaptive medium; disabled none.  It stays a plain hub
  field, so the pipeline can drop it for models that cannot think.
  `output_config.effort` -> `reasoning_effort` too, and wins over a thinking level
  (a `thinking: disabled` wins over it).
- `output_config.format` json_schema -> `response_format` json_schema named
  "response", not strict (Anthropic schemas need not meet OpenAI's strict rules).
- `metadata.user_id` -> `user`; one longer than 64 characters (OpenAI's limit)
  becomes its sha256 hex.
- Dropped: `cache_control` (top level and on blocks: caching is the upstream's
  own business), `service_tier` (no other upstream has Anthropic's tiers),
  `context_management` (server-side history trimming; the request works without).
- 400: `container`, `mcp_servers`, `inference_geo` (code-execution containers,
  Anthropic's MCP connector and data residency cannot be honoured elsewhere),
  and any field not named here: never ignored silently.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from gateway.dialects.messages import fields as F
from gateway.dialects.messages.content import hub_messages
from gateway.errors import InvalidRequest

Json = dict[str, Any]

_TRANSLATED: Final = frozenset(
    {
        "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k",
        "stream", "tools", "tool_choice", "thinking", "output_config", "metadata",
    }
)  # fmt: skip
_DROPPED: Final = frozenset({"cache_control", "service_tier", "context_management"})
_REFUSED: Final = {
    "container": "code-execution containers exist only on Anthropic",
    "mcp_servers": "Anthropic's MCP connector is not available for this model; run MCP tools on the client",
    "inference_geo": "the region of inference cannot be guaranteed for this model",
}
_BILLING_HEADER: Final = "x-anthropic-billing-header:"
_EFFORTS: Final = ("low", "medium", "high", "xhigh", "max")
_TOOL_CHOICE: Final = {"auto": "auto", "any": "required", "none": "none"}
USER_MAX: Final = 64


def to_hub(body: Json) -> Json:
    """The hub (Chat Completions) body for a Messages create body; 400 on any bad field."""
    return _translate(body, count_only=False)


def count_tokens_body(body: Json) -> Json:
    """The hub body for /v1/messages/count_tokens (what the token estimator reads):
    the create fields, `max_tokens` optional; never a stream."""
    return _translate(body, count_only=True)


def thinking_enabled(body: Json) -> bool:
    """Whether the client asked for thinking (and so may get `thinking` blocks back)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _translate(body: Any, count_only: bool) -> Json:
    body = F.obj(body, "body")
    for name, value in body.items():
        if value is None or name in _TRANSLATED or name in _DROPPED:
            continue
        why = _REFUSED.get(name, "this parameter is not supported by this model on this gateway")
        raise InvalidRequest(f"Unsupported parameter '{name}': {why}.", param=name, code="unsupported_parameter")
    hub: Json = {"model": F.string(body.get("model"), "model", empty=False)}
    system = _system(body.get("system"))
    hub["messages"] = ([{"role": "system", "content": system}] if system else []) + hub_messages(body.get("messages"))

    max_tokens = F.integer(body.get("max_tokens"), "max_tokens", 1)
    if max_tokens is None and not count_only:
        F.obj(None, "max_tokens")  # the "missing" 400
    if max_tokens is not None and not count_only:
        hub["max_completion_tokens"] = max_tokens
    stop = body.get("stop_sequences")
    if stop is not None:
        stop = [F.string(s, f"stop_sequences[{i}]") for i, s in enumerate(F.array(stop, "stop_sequences"))]
        if stop:
            hub["stop"] = stop
    for name in ("temperature", "top_p"):
        value = F.number(body.get(name), name, 0, 1)
        if value is not None:
            hub[name] = value
    top_k = F.integer(body.get("top_k"), "top_k", 1)
    if top_k is not None:
        hub["top_k"] = top_k
    if F.boolean(body.get("stream"), "stream") and not count_only:
        hub["stream"] = True
        hub["stream_options"] = {"include_usage": True}

    _tools(body, hub)
    effort = _effort(body.get("thinking"), F.opt_obj(body.get("output_config"), "output_config"), hub)
    if effort is not None:
        hub["reasoning_effort"] = effort
    metadata = F.opt_obj(body.get("metadata"), "metadata")
    user = F.opt_string(metadata.get("user_id"), "metadata.user_id") if metadata else None
    if user:
        # OpenAI caps `user` at 64 characters; Claude Code's ids are longer.  A hash keeps
        # the one property that matters (same user, same value) and reveals nothing.
        hub["user"] = user if len(user) <= USER_MAX else hashlib.sha256(user.encode()).hexdigest()
    return hub


def _system(value: Any) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    texts = []
    for i, block in enumerate(F.array(value, "system")):
        block = F.obj(block, f"system[{i}]")
        F.choice(block.get("type"), f"system[{i}].type", ("text",))
        text = F.string(block.get("text"), f"system[{i}].text")
        if text and not text.startswith(_BILLING_HEADER):
            texts.append(text)
    return "\n\n".join(texts)


def _tools(body: Json, hub: Json) -> None:
    tools = []
    declared = body.get("tools")
    for i, tool in enumerate(F.array(declared, "tools") if declared is not None else ()):
        at = f"tools[{i}]"
        tool = F.obj(tool, at)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise InvalidRequest(
                f"{at}: '{kind}' is an Anthropic server tool; it runs only on Anthropic's servers, "
                "not for this model. Define it as a custom tool (name, input_schema) instead.",
                param=at,
                code="unsupported_tool",
            )
        function: Json = {"name": F.string(tool.get("name"), f"{at}.name", empty=False)}
        description = F.opt_string(tool.get("description"), f"{at}.description")
        if description:
            function["description"] = description
        function["parameters"] = F.obj(tool.get("input_schema"), f"{at}.input_schema")
        strict = F.boolean(tool.get("strict"), f"{at}.strict")
        if strict is not None:
            function["strict"] = strict
        tools.append({"type": "function", "function": function})

    choice = F.opt_obj(body.get("tool_choice"), "tool_choice")
    if choice is None:
        if tools:
            hub["tools"] = tools
        return
    kind = F.choice(choice.get("type"), "tool_choice.type", ("auto", "any", "tool", "none"))
    if kind == "tool":
        name = F.string(choice.get("name"), "tool_choice.name", empty=False)
        mapped: Any = {"type": "function", "function": {"name": name}}
    else:
        mapped = _TOOL_CHOICE[kind]
    serial = F.boolean(choice.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use")
    if tools:  # without tools a choice means nothing, and OpenAI refuses it
        hub["tools"] = tools
        hub["tool_choice"] = mapped
        if serial and kind != "none":
            hub["parallel_tool_calls"] = False


def _effort(thinking: Any, output_config: Json | None, hub: Json) -> str | None:
    level = None
    if thinking is not None:
        thinking = F.obj(thinking, "thinking")
        kind = F.choice(thinking.get("type"), "thinking.type", ("enabled", "adaptive", "disabled"))
        if kind == "disabled":
            level = "none"
        elif kind == "adaptive":
            level = "medium"
        else:
            budget = F.integer(thinking.get("budget_tokens"), "thinking.budget_tokens", 1)
            if budget is None:
                F.fail("thinking.budget_tokens", "required when thinking.type is 'enabled'")
            level = "low" if budget < 2048 else "medium" if budget < 8192 else "high"
        if thinking.get("display") is not None:
            F.choice(thinking["display"], "thinking.display", ("summarized", "omitted"))
    if output_config is None:
        return level
    effort = output_config.get("effort")
    if effort is not None:
        effort = F.choice(effort, "output_config.effort", _EFFORTS)
        level = level if level == "none" else effort
    fmt = F.opt_obj(output_config.get("format"), "output_config.format")
    if fmt is not None:
        F.choice(fmt.get("type"), "output_config.format.type", ("json_schema",))
        schema = F.obj(fmt.get("schema"), "output_config.format.schema")
        hub["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    return level
