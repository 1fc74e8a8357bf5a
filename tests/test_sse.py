"""The SSE decoder: every framing the WHATWG spec allows, cut at every possible place."""

from __future__ import annotations

import pytest
from fakes import CHUNKINGS, chunked, fixture_bytes

from gateway.sse import Event, SSEDecoder, SSEError


def decode(pieces: list[bytes], **kw: int) -> list[Event]:
    decoder = SSEDecoder(**kw)
    events = [e for p in pieces for e in decoder.feed(p)]
    return events + decoder.close()


def test_lf_crlf_and_cr_endings_give_the_same_events() -> None:
    lf = b"event: a\ndata: 1\n\ndata: 2\ndata: 3\n\n"
    for variant in (lf, lf.replace(b"\n", b"\r\n"), lf.replace(b"\n", b"\r")):
        assert decode([variant]) == [Event(b"1", "a"), Event(b"2\n3", "")]


def test_comments_ids_retry_and_unknown_fields_are_ignored() -> None:
    payload = b": keep-alive\n\nid: 7\nretry: 10\nfoo: bar\ndata:x\n\n:ping\n\n"
    assert decode([payload]) == [Event(b"x")]


def test_one_leading_space_is_stripped_and_trailing_spaces_kept() -> None:
    assert decode([b'data:  {"a": 1}  \n\n']) == [Event(b' {"a": 1}  ')]


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize(
    "fixture", ["gemini_stream_text_multi_chunk.sse", "anthropic_stream_tool_use.sse", "openai_chunks_refusal.sse"]
)
def test_any_cut_gives_the_same_events(fixture: str, how: str) -> None:
    payload = fixture_bytes(fixture)
    assert decode(chunked(payload, how)) == decode([payload])
    assert len(decode([payload])) > 1


def test_cr_at_the_end_of_a_read_waits_for_its_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []
    assert decoder.feed(b"\n") == [Event(b"a")]


def test_split_utf8_character() -> None:
    text = 'data: {"t": "caffè ☕"}\n\n'.encode()
    cut = text.index("☕".encode()) + 1
    assert decode([text[:cut], text[cut:]]) == [Event('{"t": "caffè ☕"}'.encode())]


def test_event_without_final_blank_line_is_flushed_at_close() -> None:
    assert decode([b"data: last"]) == [Event(b"last")]


def test_very_long_event_is_fine_and_a_cap_exists() -> None:
    big = b"data: " + b"x" * 500_000 + b"\n\n"
    assert decode(chunked(big, "coalesced"))[0].data == b"x" * 500_000
    with pytest.raises(SSEError):
        decode([big], max_event_bytes=100_000)
