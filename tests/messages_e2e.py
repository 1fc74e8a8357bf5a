"""Shared set-up of the Messages API acceptance tests (issue 13: test_messages_acceptance.py,
test_messages_access.py, test_messages_switch.py, test_messages_node.py).

`start_stack` starts a gateway with one validating fake per provider kind: `ant`
(Anthropic), `oai` (OpenAI) and `gem` (Gemini; model `gem-3` goes upstream as
gemini-3-pro-preview, which demands thought signatures).  Each fake keeps the raw
bytes of every body it received (`RawFake.raw`), so the Anthropic passthrough can be
checked byte for byte, and rejects what the real API rejects (the provider checks
below add what fake_anthropic / fake_gemini leave out).  `Stack.anthropic()` is an
official AsyncAnthropic client whose traffic is tapped: the bytes it sent and
received stay in `client.tap`."""

from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import orjson
from aiohttp import web
from conftest import ENV, PRO_KEY, UPSTREAM_KEY, Gateway, base_config
from fake_anthropic import check as anthropic_check
from fake_anthropic import error_body
from fake_gemini import GeminiCheck
from fakes import FakeUpstream, Reply, fixture_bytes, fixture_json, json_reply, sse_from_jsonl, sse_reply
from http_tap import Exchange, Tap

Json = dict[str, Any]

LIMITED_KEY = "sk-test-limited-0123456789"  # a pro key with rpm 1
WEATHER = {
    "name": "weather",
    "description": "Get weather information for a location",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
QUESTION = "What's the weather in Florence, Italy?"
# a 1x1 transparent PNG, as clients send screenshots
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
GEMINI_SENTINELS = ("skip_thought_signature_validator", "context_engineering_is_the_way_to_go")
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


# -- fakes that keep raw bytes, and the provider rules they enforce --------------------------


class RawFake(FakeUpstream):
    """A FakeUpstream that also keeps each request body exactly as it arrived."""

    def __init__(self, check: Any = None) -> None:
        super().__init__(check)
        self.raw: list[bytes] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.raw.append(await request.read())  # aiohttp caches the body: the parent reads it again
        return await super()._handle(request)


def anthropic_upstream_check(path: str, headers: dict[str, str], body: Any) -> Reply | None:
    """fake_anthropic's rules, plus /v1/messages/count_tokens and the tool-id pattern
    (`messages.1.content.0.id: String should match pattern '^[a-zA-Z0-9_-]+$'`)."""
    if path == "/v1/messages/count_tokens":
        lowered = {k.lower(): v for k, v in headers.items()}
        if not lowered.get("x-api-key") or not lowered.get("anthropic-version"):
            return json_reply(error_body("authentication_error", "x-api-key header is required"), 401)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body.get("messages"):
            return json_reply(error_body("invalid_request_error", "messages: Field required"), 400)
        return None
    for i, message in enumerate(_messages(body)):
        for j, block in enumerate(message.get("content") if isinstance(message.get("content"), list) else []):
            for key in ("id", "tool_use_id"):
                value = block.get(key) if block.get("type") in ("tool_use", "tool_result") else None
                if isinstance(value, str) and not ANTHROPIC_ID.match(value):
                    text = f"messages.{i}.content.{j}.{key}: String should match pattern '^[a-zA-Z0-9_-]+$'"
                    return json_reply(error_body("invalid_request_error", text), 400)
    return anthropic_check(path, headers, body)


def _messages(body: Any) -> list[Any]:
    messages = body.get("messages") if isinstance(body, dict) else None
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def openai_too_long(param: str, value: str) -> Reply:
    """OpenAI's 400 for an id over its 40-character limit, word for word."""
    message = (
        f"Invalid '{param}': string too long. Expected a string with maximum length 40, "
        f"but got a string with length {len(value)} instead."
    )
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": "string_above_max_length"}
    return json_reply({"error": error}, 400)


def openai_invalid(message: str, param: str) -> Reply:
    return json_reply(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}, 400
    )


def openai_upstream_check(path: str, headers: dict[str, str], body: Any) -> Reply | None:
    """OpenAI refuses tool-call ids longer than 40 characters (in a call and in its
    result), a tool message that answers no call of the assistant message before it,
    and a call left without its tool message; each with its own 400."""
    pending: list[str] = []  # the calls of the last assistant message still unanswered
    for i, message in enumerate(_messages(body)):
        for k, call in enumerate(message.get("tool_calls") or []):
            if isinstance(call.get("id"), str) and len(call["id"]) > 40:
                return openai_too_long(f"messages[{i}].tool_calls[{k}].id", call["id"])
        if isinstance(message.get("tool_call_id"), str) and len(message["tool_call_id"]) > 40:
            return openai_too_long(f"messages[{i}].tool_call_id", message["tool_call_id"])
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in pending:
                return openai_invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(message["tool_call_id"])
            continue
        if pending:
            return openai_invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}",
                f"messages.[{i}].role",
            )
        pending = [c.get("id") for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    return None


class GeminiUpstreamCheck(GeminiCheck):
    """GeminiCheck, accepting the placeholder signatures Google documents for calls a
    Gemini 3 model did not make (thought-signatures docs).  Google reads a signature
    as proto `bytes`, whose JSON form may be URL-safe base64: the sentinels decode so;
    fake_gemini only accepts the standard alphabet and would refuse them."""

    def __call__(self, path: str, headers: dict[str, str], body: Any) -> Reply | None:
        if isinstance(body, dict) and isinstance(body.get("contents"), list):
            body = copy.deepcopy(body)
            for content in body["contents"]:
                for part in content.get("parts") or [] if isinstance(content, dict) else []:
                    if isinstance(part, dict) and part.get("thoughtSignature") in GEMINI_SENTINELS:
                        part["thoughtSignature"] = base64.b64encode(b"placeholder accepted").decode()
        return super().__call__(path, headers, body)


# -- the tapped client ---------------------------------------------------------------------


class TappedAnthropic(anthropic.AsyncAnthropic):
    tap: Tap


# -- the gateway ---------------------------------------------------------------------------


@dataclass
class Stack:
    gw: Gateway
    ant: RawFake
    oai: RawFake
    gem: RawFake
    urls: dict[str, str]
    clients: list[TappedAnthropic] = field(default_factory=list)

    @property
    def root(self) -> str:
        """The gateway's root URL: the anthropic SDKs add /v1 themselves."""
        return self.gw.url.removesuffix("/v1")

    def fake(self, kind: str) -> RawFake:
        return {"ant": self.ant, "oai": self.oai, "gem": self.gem}[kind]

    def anthropic(self, key: str = PRO_KEY) -> TappedAnthropic:
        tap = Tap()
        client = TappedAnthropic(
            base_url=self.root, api_key=key, max_retries=0, http_client=httpx.AsyncClient(transport=tap)
        )
        client.tap = tap
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


async def start_stack(aiohttp_server: Any, start_gateway: Any, tmp_path: Path) -> Stack:
    """`aiohttp_server`, `start_gateway`: the fixtures.  Models ant-/oai-/gem-small
    (upstream `<name>-small-2024`), -large, and gem-3; free has the -small ones, pro
    everything; LIMITED_KEY is a pro key with rpm 1.  One attempt per request."""
    gemini = GeminiUpstreamCheck(key=UPSTREAM_KEY)
    fakes, urls = {}, {}
    for name, check in (("ant", anthropic_upstream_check), ("oai", openai_upstream_check), ("gem", gemini)):
        fakes[name] = RawFake(check)
        server = await aiohttp_server(fakes[name].app, host="127.0.0.1")
        urls[name] = str(server.make_url("")).rstrip("/")
    gemini.fake = fakes["gem"]
    kinds = {"ant": "anthropic", "oai": "openai", "gem": "gemini"}
    doc = base_config({name: (kind, urls[name]) for name, kind in kinds.items()}, str(tmp_path / "usage.db"))
    doc["models"].append({"id": "gem-3", "provider": "gem", "upstream": "gemini-3-pro-preview"})
    doc["tiers"]["pro"]["models"].append("gem-3")
    doc["keys"].append({"name": "carol", "key": "${LIMITED_KEY}", "tier": "pro", "limits": {"rpm": 1}})
    doc["routing"] = {"attempts": 1}  # each scripted reply answers exactly one request
    gw = await start_gateway(doc, {**ENV, "LIMITED_KEY": LIMITED_KEY})
    return Stack(gw, fakes["ant"], fakes["oai"], fakes["gem"], urls)


# -- recorded answers ------------------------------------------------------------------------

ANTHROPIC_THINKING_TOOL = "anthropic_message_thinking_tool_use.json"
ANTHROPIC_THINKING_TOOL_STREAM = "anthropic_stream_thinking_tool_use.sse"
GEMINI3_STREAM = "gemini_stream_function_call_gemini3.jsonl"
GEMINI_CALL = "gemini_generate_content_function_call.json"


def tool_call_reply(kind: str, stream: bool) -> Reply:
    """A recorded answer in which the model calls `weather`."""
    if kind == "oai":
        if stream:  # the recording calls `get_weather`: renamed to the one tool these tests offer
            recorded = fixture_bytes("openai_chunks_tool_call.sse").replace(b'"get_weather"', b'"weather"')
            return sse_reply(recorded, "split_utf8")
        return json_reply(fixture_json("openai_chat_completion_tool_calls.json"))
    if kind == "ant":
        if stream:
            return sse_reply(fixture_bytes(ANTHROPIC_THINKING_TOOL_STREAM), "split_utf8")
        return json_reply(fixture_json(ANTHROPIC_THINKING_TOOL))
    if stream:
        return sse_reply(sse_from_jsonl(GEMINI3_STREAM, sep=b"\r\n\r\n"), "bytes")
    return json_reply(fixture_json(GEMINI_CALL))


def text_reply(kind: str, stream: bool) -> Reply:
    """A recorded plain-text answer."""
    if kind == "oai":
        if stream:
            return sse_reply(fixture_bytes("openai_chunks_text_usage.sse"), "split_crlf")
        return json_reply(fixture_json("openai_chat_completion_text.json"))
    if kind == "ant":
        if stream:
            return sse_reply(fixture_bytes("anthropic_stream_text.sse"), "coalesced")
        return json_reply(fixture_json("anthropic_message_text.json"))
    if stream:
        return sse_reply(fixture_bytes("gemini_stream_text.sse"), "split_utf8")
    return json_reply(fixture_json("gemini_generate_content_text.json"))


def gemini_signature(stream: bool) -> str:
    """The thoughtSignature on the functionCall part of the recorded Gemini answer."""
    answer = orjson.loads(fixture_bytes(GEMINI3_STREAM).splitlines()[0]) if stream else fixture_json(GEMINI_CALL)
    return answer["candidates"][0]["content"]["parts"][0]["thoughtSignature"]


def recorded_signature(stream: bool) -> str:
    """The signature of the recorded Claude thinking block (streamed: its signature_delta)."""
    if not stream:
        return fixture_json(ANTHROPIC_THINKING_TOOL)["content"][0]["signature"]
    deltas = [orjson.loads(data)["delta"] for name, data in sse_events(fixture_bytes(ANTHROPIC_THINKING_TOOL_STREAM))
              if name == b"content_block_delta"]  # fmt: skip
    return "".join(d["signature"] for d in deltas if d["type"] == "signature_delta")


def sse_events(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(event name, data bytes) of each event of an SSE body, the bytes as they were."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line for line in block.split(b"\n") if line and not line.startswith(b":")]
        if lines:
            name = b"".join(line[7:] for line in lines if line.startswith(b"event: "))
            out.append((name, b"\n".join(line[6:] for line in lines if line.startswith(b"data: "))))
    return out


def with_model(raw: bytes, model: str, upstream: str) -> bytes:
    """`raw` (a client's body) with its one `"model": "<model>"` value replaced."""
    found = list(re.finditer(rb'"model"\s*:\s*"' + re.escape(model.encode()) + rb'"', raw))
    assert len(found) == 1, raw[:200]
    start, end = found[0].span()
    return raw[:start] + raw[start:end].replace(f'"{model}"'.encode(), f'"{upstream}"'.encode()) + raw[end:]


def error_of(exchange: Exchange) -> Json:
    """An Anthropic error body, checked for its shape."""
    body = orjson.loads(bytes(exchange.body))
    assert set(body) >= {"type", "error"} and body["type"] == "error", body
    assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str), body
    return body["error"]
