"""A gateway with one provider of each kind, every fake validating what it is sent the
way its real API does and otherwise answering a success in its own shape.

Models: oai-large (openai), ant-large (anthropic), gem-large (gemini); one attempt per
request, so each answer is the one upstream's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import UPSTREAM_KEY, Gateway, base_config
from fake_anthropic import check as anthropic_check
from fake_gemini import GeminiCheck
from fakes import Reply, fixture_bytes, fixture_json, json_reply, sse_reply

KINDS = {"oai": "openai", "ant": "anthropic", "gem": "gemini"}


class Answers:
    """The `check` of every fake.  `failed` is set when a fake broke on what it was sent
    (its 5xx is then no gateway bug); `refused` when its validator answered 4xx (a value
    the upstream judges, named its own way).  Reset both before each request."""

    def __init__(self) -> None:
        self.failed = self.refused = False
        self.gemini = GeminiCheck(key=UPSTREAM_KEY)

    def __call__(self, kind: str) -> Any:
        def check(path: str, headers: dict[str, str], body: Any) -> Reply:
            try:
                reply = self._answer(kind, path, headers, body)
            except Exception:  # the fake's own bug on odd input
                self.failed = True
                return json_reply({"error": {"message": "fake upstream broke"}}, 500)
            self.refused = 400 <= reply.status < 500
            return reply

        return check

    def _answer(self, kind: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        stream = isinstance(body, dict) and body.get("stream") is True
        if kind == "openai":
            if path.endswith("/embeddings"):
                return json_reply(fixture_json("openai_embeddings_response.json"))
            if stream:
                return sse_reply(fixture_bytes("openai_chunks_text_usage.sse"))
            return json_reply(fixture_json("openai_chat_completion_text.json"))
        if kind == "anthropic":
            rejected = anthropic_check(path, headers, body)
            if rejected is not None:
                return rejected
            if stream:
                return sse_reply(fixture_bytes("anthropic_stream_text.sse"))
            return json_reply(fixture_json("anthropic_message_text.json"))
        rejected = self.gemini(path, headers, body)
        if rejected is not None:
            return rejected
        if path.endswith(":batchEmbedContents"):
            return json_reply({"embeddings": [{"values": [0.5, -0.25]} for _ in body["requests"]]})
        if "streamGenerateContent" in path:
            return sse_reply(fixture_bytes("gemini_stream_text.sse"))
        return json_reply(fixture_json("gemini_generate_content_text.json"))


async def start_all_kinds(
    fake_server: Any, start_gateway: Any, tmp_path: Path, **extra: Any
) -> tuple[Gateway, Answers]:
    """`fake_server` and `start_gateway` are conftest's fixtures; `extra` goes into the YAML."""
    answers = Answers()
    urls = {}
    for name, kind in KINDS.items():
        _, urls[name] = await fake_server(answers(kind))
    doc = base_config({name: (kind, urls[name]) for name, kind in KINDS.items()}, str(tmp_path / "usage.db"))
    doc["routing"] = {"attempts": 1}
    doc.update(extra)
    return await start_gateway(doc), answers
