"""OpenAI-compatible streams passed on as the upstream's own bytes (`_OpenAIStream._as_is`).

A chunk goes out unchanged but for two byte-level rewrites: the upstream's
`"model":"<dated name>"` becomes the model id the client asked for, and the
`,"usage":null` the gateway caused (it always asks upstream for usage) is removed
when the client did not ask for usage.  Any other difference from what the
contract demands (a missing choice field, another id or created, another object or
model, several `data:` lines, the pattern not found exactly once, spaced JSON) makes
the gateway re-encode the chunk with the fields fixed.  Everything is read here as
the raw SSE body, so the assertions are on exact bytes."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from conftest import PRO_KEY, Gateway
from fakes import CHUNKINGS, FakeUpstream, sse_reply
from openai_schema import validate_chunk

MESSAGES = [{"role": "user", "content": "Hello"}]
ASKED = "oai-small"  # the model id the client uses
UP_MODEL = "oai-small-2024-08-06"  # what the upstream says it ran: a dated snapshot of "oai-small-2024"
UP_ID = "chatcmpl-AbC123upstreamXYZ"
CREATED = 1727346168
UP_MODEL_PAIR = b'"model":"oai-small-2024-08-06"'
ASKED_PAIR = b'"model":"oai-small"'
USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 5,
    "total_tokens": 14,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
HEAD = b'{"id":"chatcmpl-AbC123upstreamXYZ","object":"chat.completion.chunk","created":1727346168,'


def _compact(delta: bytes, finish: bytes = b"null", logprobs: bytes = b"null") -> bytes:
    """One chunk as OpenAI writes it when include_usage is on: compact, `"usage":null` last."""
    return (
        HEAD + b'"model":"oai-small-2024-08-06","service_tier":"default","system_fingerprint":"fp_f33667828e",'
        b'"choices":[{"index":0,"delta":'
        + delta
        + b',"logprobs":'
        + logprobs
        + b',"finish_reason":'
        + finish
        + b'}],"usage":null}'
    )


# The content chunks of an OpenAI-style stream, as the upstream's bytes (data payloads).
CONTENT_CHUNKS: list[bytes] = [
    _compact(b'{"role":"assistant","content":"","refusal":null}'),
    _compact(b'{"content":"Caf\\u00e9 "}'),  # an escape orjson would not write: proves no re-encoding
    _compact('{"content":"au lait 🌍 — ça va"}'.encode()),  # raw multi-byte UTF-8, cut by split_utf8
    # another key order, with a field the gateway knows nothing about
    b'{"choices":[{"finish_reason":null,"logprobs":null,"delta":{"content":" ok"},"index":0}],"usage":null,'
    b'"obfuscation":"Qx3","system_fingerprint":"fp_f33667828e","service_tier":"default",'
    b'"model":"oai-small-2024-08-06","created":1727346168,"object":"chat.completion.chunk",'
    b'"id":"chatcmpl-AbC123upstreamXYZ"}',
    _compact(
        b'{"content":"!"}',
        logprobs=b'{"content":[{"token":"!","logprob":-0.0125,"bytes":[33],"top_logprobs":[]}],"refusal":null}',
    ),
    _compact(b"{}", finish=b'"stop"'),
]
USAGE_CHUNK = (
    HEAD + b'"model":"oai-small-2024-08-06","service_tier":"default","system_fingerprint":"fp_f33667828e",'
    b'"choices":[],"usage":' + orjson.dumps(USAGE) + b"}"
)
CONTENT = "Café au lait 🌍 — ça va ok!"


def _sse(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


COMPACT_STREAM = _sse(*CONTENT_CHUNKS, USAGE_CHUNK)


async def _stream(gateway: Gateway, http: Any, stream_options: dict[str, Any] | None = None) -> list[bytes]:
    """POST a streaming chat request; the data payloads of the raw SSE body, `[DONE]` checked and removed."""
    body: dict[str, Any] = {"model": ASKED, "messages": MESSAGES, "stream": True}
    if stream_options is not None:
        body["stream_options"] = stream_options
    headers = {"Authorization": f"Bearer {PRO_KEY}"}
    async with http.post(f"{gateway.url}/chat/completions", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""], raw[-300:]
    payloads = []
    for event in events[:-2]:
        assert event.startswith(b"data: ") and b"\n" not in event, event
        payloads.append(event[len(b"data: ") :])
    return payloads


def _content(payloads: list[bytes]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in map(orjson.loads, payloads) if c["choices"])


def _check_upstream_asked_for_usage(upstream: FakeUpstream) -> None:
    sent = upstream.last.json
    assert sent["model"] == "oai-small-2024"
    assert sent["stream_options"] == {"include_usage": True}


# -- 1 and 4: the compact stream, client without include_usage, every framing ----------------


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}], ids=["no_options", "usage_false"])
async def test_compact_chunks_are_the_upstream_bytes_minus_model_and_usage(
    gateway: Gateway, upstream: FakeUpstream, http: Any, chunking: str, stream_options: dict[str, Any] | None
) -> None:
    upstream.script(sse_reply(COMPACT_STREAM, chunking))
    got = await _stream(gateway, http, stream_options)
    _check_upstream_asked_for_usage(upstream)

    # exactly one event per content chunk; the usage-only chunk (asked for by the gateway) is gone
    assert len(got) == len(CONTENT_CHUNKS)
    for sent, up in zip(got, CONTENT_CHUNKS, strict=True):
        want = up.replace(UP_MODEL_PAIR, ASKED_PAIR).replace(b',"usage":null', b"")
        assert want != up and len(want) == len(up) - len(UP_MODEL_PAIR) + len(ASKED_PAIR) - len(b',"usage":null')
        assert sent == want
        parsed, original = orjson.loads(sent), orjson.loads(up)
        assert parsed["model"] == ASKED and "usage" not in parsed
        del original["usage"]
        # every other field, key order included, as the upstream sent it
        assert list(parsed) == list(original)
        assert {k: v for k, v in parsed.items() if k != "model"} == {k: v for k, v in original.items() if k != "model"}
        validate_chunk(parsed)
    assert b'"Caf\\u00e9 "' in got[1]  # the upstream's own escape, not re-serialised
    assert orjson.loads(got[3])["obfuscation"] == "Qx3"
    assert orjson.loads(got[4])["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.0125
    assert all(orjson.loads(p)["service_tier"] == "default" for p in got)
    assert all(orjson.loads(p)["system_fingerprint"] == "fp_f33667828e" for p in got)
    assert _content(got) == CONTENT
    assert orjson.loads(got[-1])["choices"][0]["finish_reason"] == "stop"

    rows = await gateway.usage_rows()  # the usage the client did not see is still accounted
    assert (rows[-1]["prompt_tokens"], rows[-1]["completion_tokens"], rows[-1]["total_tokens"]) == (9, 5, 14)


@pytest.mark.parametrize("chunking", CHUNKINGS)
async def test_compact_stream_through_the_sdk_every_framing(
    gateway: Gateway, upstream: FakeUpstream, chunking: str
) -> None:
    upstream.script(sse_reply(COMPACT_STREAM, chunking))
    stream = await gateway.client().chat.completions.create(model=ASKED, messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert len(chunks) == len(CONTENT_CHUNKS)
    for c in chunks:
        validate_chunk(c.model_dump(exclude_unset=True))
        assert (c.id, c.created, c.model, c.usage) == (UP_ID, CREATED, ASKED, None)
        assert c.system_fingerprint == "fp_f33667828e"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == CONTENT
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(CONTENT_CHUNKS) - 1) + ["stop"]


# -- 2: the same stream, client asking include_usage -----------------------------------------


@pytest.mark.parametrize("chunking", ["whole", "bytes"])
async def test_include_usage_keeps_usage_null_and_sends_the_usage_chunk(
    gateway: Gateway, upstream: FakeUpstream, http: Any, chunking: str
) -> None:
    upstream.script(sse_reply(COMPACT_STREAM, chunking))
    got = await _stream(gateway, http, {"include_usage": True})
    _check_upstream_asked_for_usage(upstream)

    assert len(got) == len(CONTENT_CHUNKS) + 1
    for sent, up in zip(got, CONTENT_CHUNKS, strict=False):
        assert sent == up.replace(UP_MODEL_PAIR, ASKED_PAIR)  # only the model differs
        parsed = orjson.loads(sent)
        assert "usage" in parsed and parsed["usage"] is None
        validate_chunk(parsed)
    assert _content(got) == CONTENT

    last = orjson.loads(got[-1])
    validate_chunk(last)
    assert last["choices"] == [] and last["usage"] == USAGE
    assert (last["id"], last["object"], last["created"], last["model"]) == (
        UP_ID,
        "chat.completion.chunk",
        CREATED,
        ASKED,
    )
    assert last["system_fingerprint"] == "fp_f33667828e" and last["service_tier"] == "default"


# -- 3: chunks that must be re-encoded ------------------------------------------------------


def _obj(content: str, **fields: Any) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": UP_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": UP_MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    chunk.update(fields)
    return chunk


TRICKY = 'say "model":"oai-small-2024-08-06", then ,"usage":null'  # JSON escapes its quotes

# (name, the upstream's data payload, whether it can go out as the upstream's bytes)
ODD_CHUNKS: list[tuple[str, bytes, bool]] = [
    ("first", _compact(b'{"role":"assistant","content":""}'), True),
    (
        "no_finish_reason_no_index",
        HEAD + b'"model":"oai-small-2024-08-06","choices":[{"delta":{"content":"a"}}],"usage":null}',
        False,
    ),
    ("no_delta", HEAD + b'"model":"oai-small-2024-08-06","choices":[{"index":0,"finish_reason":null}]}', False),
    ("other_id", orjson.dumps(_obj("b", id="chatcmpl-other")), False),
    ("other_created", orjson.dumps(_obj("b", created=1727346999)), False),
    ("pretty", json.dumps(_obj("c")).encode(), False),  # spaces after ':' and ','
    ("several_data_lines", orjson.dumps(_obj("d")).replace(b',"choices"', b',\ndata: "choices"'), False),
    ("other_object", orjson.dumps(_obj("e", object="chat.completion")), False),
    ("other_model", orjson.dumps(_obj("f", model="oai-small-2024-11-20")), False),
    # another model on top, the first chunk's model pair once, nested: not a pair to rewrite
    (
        "other_model_nested_pair",
        orjson.dumps(_obj("f", model="oai-small-2024-11-20", metadata={"model": UP_MODEL})),
        False,
    ),
    ("model_pair_twice", orjson.dumps(_obj("g", metadata={"model": UP_MODEL})), False),
    ("usage_first_key", orjson.dumps({"usage": None, **_obj("h")}), False),
    ("usage_pair_twice", orjson.dumps(_obj("i", x_groq={"id": "req_1", "usage": None})), False),
    ("tricky_content", orjson.dumps(_obj(TRICKY)), True),
    ("finish", _compact(b"{}", finish=b'"stop"'), True),
]


def test_odd_chunks_are_what_they_claim() -> None:
    """The inputs of the re-encoding test are shaped as their names say (else it tests nothing)."""
    data = dict((name, payload) for name, payload, _ in ODD_CHUNKS)
    assert b'": "' in data["pretty"] and data["pretty"].count(b"\n") == 0
    assert data["several_data_lines"].count(b"\ndata: ") == 1
    assert data["model_pair_twice"].count(UP_MODEL_PAIR) == 2
    assert data["other_model_nested_pair"].count(UP_MODEL_PAIR) == 1
    assert data["usage_first_key"].startswith(b'{"usage":null,') and b',"usage":null' not in data["usage_first_key"]
    assert data["usage_pair_twice"].count(b',"usage":null') == 2
    assert UP_MODEL_PAIR not in data["tricky_content"].replace(UP_MODEL_PAIR, b"", 1)  # the one in content is escaped
    assert b'\\"model\\":\\"oai-small-2024-08-06\\"' in data["tricky_content"]
    assert "finish_reason" not in orjson.loads(data["no_finish_reason_no_index"])["choices"][0]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_odd_chunks_are_re_encoded_with_the_fields_fixed(
    gateway: Gateway, upstream: FakeUpstream, http: Any, include_usage: bool
) -> None:
    upstream.script(sse_reply(_sse(*(p for _, p, _ in ODD_CHUNKS), USAGE_CHUNK)))
    got = await _stream(gateway, http, {"include_usage": True} if include_usage else None)
    assert len(got) == len(ODD_CHUNKS) + include_usage

    sent = dict(zip((name for name, _, _ in ODD_CHUNKS), got, strict=False))
    out = {name: orjson.loads(payload) for name, payload in sent.items()}
    for name, chunk in out.items():
        validate_chunk(chunk)
        assert chunk["id"] == UP_ID, name  # the first chunk's id and created, on every chunk
        assert chunk["created"] == CREATED, name
        assert chunk["object"] == "chat.completion.chunk", name
        assert chunk["model"] == ASKED, name
        if include_usage:
            assert "usage" in chunk and chunk["usage"] is None, name
        else:
            assert "usage" not in chunk, name
        for choice in chunk["choices"]:
            assert {"index", "delta", "finish_reason"} <= set(choice), name

    # the ones that can pass are the upstream's bytes with only the two rewrites
    for name, up, as_is in ODD_CHUNKS:
        if as_is:
            want = up.replace(UP_MODEL_PAIR, ASKED_PAIR)
            assert sent[name] == (want if include_usage else want.replace(b',"usage":null', b"")), name

    want_choice = {"index": 0, "delta": {"content": "a"}, "finish_reason": None}
    assert out["no_finish_reason_no_index"]["choices"] == [want_choice]
    assert out["no_delta"]["choices"] == [{"index": 0, "delta": {}, "finish_reason": None}]
    assert out["other_id"]["choices"][0]["delta"] == out["other_created"]["choices"][0]["delta"] == {"content": "b"}
    assert b'": ' not in sent["pretty"] and b", " not in sent["pretty"]  # re-encoded compact
    assert out["pretty"]["choices"][0]["delta"] == {"content": "c"}
    assert out["several_data_lines"]["choices"][0]["delta"] == {"content": "d"}
    assert out["other_model"]["choices"][0]["delta"] == {"content": "f"}
    assert out["other_model_nested_pair"]["metadata"] == {"model": UP_MODEL}
    assert out["model_pair_twice"]["metadata"] == {"model": UP_MODEL}  # only the top-level model is the client's
    assert out["usage_first_key"]["choices"][0]["delta"] == {"content": "h"}
    assert out["usage_pair_twice"]["x_groq"] == {"id": "req_1", "usage": None}
    assert out["tricky_content"]["choices"][0]["delta"]["content"] == TRICKY
    assert b'\\"model\\":\\"oai-small-2024-08-06\\"' in sent["tricky_content"]
    assert out["finish"]["choices"][0]["finish_reason"] == "stop"
    assert _content(got) == "abbcdeffghi" + TRICKY

    if include_usage:
        last = orjson.loads(got[-1])
        assert last["choices"] == [] and last["usage"] == USAGE and last["model"] == ASKED and last["id"] == UP_ID


async def test_chunks_after_a_model_change_are_re_encoded_not_rewritten(
    gateway: Gateway, upstream: FakeUpstream, http: Any
) -> None:
    """The upstream's model string is the first chunk's: a later chunk carrying the
    dated name is not rewritten byte-wise once another name was learned."""
    first = orjson.dumps(_obj("x", model="oai-small-2024-11-20"))
    second = orjson.dumps(_obj("y"))  # UP_MODEL: not the name learned from the first chunk
    final = orjson.dumps(_obj("", model="oai-small-2024-11-20"))
    final = final.replace(b'"finish_reason":null', b'"finish_reason":"stop"')
    upstream.script(sse_reply(_sse(first, second, final)))
    got = await _stream(gateway, http)
    assert got[0] == first.replace(b'"model":"oai-small-2024-11-20"', ASKED_PAIR).replace(b',"usage":null', b"")
    assert got[2] == final.replace(b'"model":"oai-small-2024-11-20"', ASKED_PAIR).replace(b',"usage":null', b"")
    chunks = [orjson.loads(p) for p in got]
    assert [c["model"] for c in chunks] == [ASKED] * 3
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["x", "y", ""]
    assert all("usage" not in c for c in chunks)


# -- where the byte rewrite can hit the wrong place ------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        # top-level usage written first (no comma before it), a nested `,"usage":null` elsewhere
        orjson.dumps({"usage": None, **_obj("z", x_groq={"id": "req_1", "usage": None})}),
        # the top-level model pair spaced, an identical compact pair nested
        orjson.dumps(_obj("z", metadata={"model": UP_MODEL})).replace(
            UP_MODEL_PAIR, b'"model": "oai-small-2024-08-06"', 1
        ),
    ],
    ids=["usage_first_and_nested", "model_spaced_and_nested"],
)
async def test_byte_rewrites_touch_only_the_top_level_pair(
    gateway: Gateway, upstream: FakeUpstream, http: Any, payload: bytes
) -> None:
    first = _compact(b'{"role":"assistant","content":""}')
    final = _compact(b"{}", finish=b'"stop"')
    upstream.script(sse_reply(_sse(first, payload, final)))
    got = await _stream(gateway, http)
    chunk = orjson.loads(got[1])
    original = orjson.loads(payload)
    nested = "x_groq" if "x_groq" in original else "metadata"
    assert chunk["choices"][0]["delta"] == {"content": "z"}
    # the client's model on top, no top-level usage, and the nested data as the upstream sent it
    assert (chunk["model"], "usage" in chunk, chunk[nested]) == (ASKED, False, original[nested])


# -- usage that arrives on a chunk with choices -----------------------------------------------


async def test_usage_on_the_finish_chunk_still_gives_a_usage_only_chunk(
    gateway: Gateway, upstream: FakeUpstream, http: Any
) -> None:
    """Some OpenAI-compatible servers put usage on the last chunk that has choices.  With
    include_usage, an OpenAI client still expects a final chunk with `choices: []` and the usage."""
    first = _compact(b'{"role":"assistant","content":"hi"}')
    final = _compact(b'{"content":""}', finish=b'"stop"').replace(b'"usage":null', b'"usage":' + orjson.dumps(USAGE))
    upstream.script(sse_reply(_sse(first, final)))
    got = [orjson.loads(p) for p in await _stream(gateway, http, {"include_usage": True})]
    for chunk in got:
        validate_chunk(chunk)
    assert [c["choices"][0]["finish_reason"] for c in got if c["choices"]] == [None, "stop"]
    assert got[-1]["choices"] == [] and got[-1]["usage"] == USAGE
    rows = await gateway.usage_rows()
    assert rows[-1]["total_tokens"] == 14


# -- a prelude chunk without id, time or model -----------------------------------------------


async def test_prelude_chunk_without_id_or_time_does_not_fix_them(
    gateway: Gateway, upstream: FakeUpstream, http: Any
) -> None:
    """Azure OpenAI opens a stream with `{"choices":[],"created":0,"id":"","model":"",...}`
    (prompt filter results).  Its blank id and zero time are not the completion's."""
    prelude = (
        b'{"choices":[],"created":0,"id":"","model":"","object":"",'
        b'"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}'
    )
    upstream.script(sse_reply(_sse(prelude, *CONTENT_CHUNKS, USAGE_CHUNK)))
    got = [orjson.loads(p) for p in await _stream(gateway, http)]
    assert len(got) == len(CONTENT_CHUNKS)
    assert _content([orjson.dumps(c) for c in got]) == CONTENT
    assert {c["model"] for c in got} == {ASKED}
    assert ({c["created"] for c in got}, {c["id"] for c in got}) == ({CREATED}, {UP_ID})
