"""The upstream SSE decoder, fed every way a network can split bytes."""

from __future__ import annotations

import pytest

from chatstream.upstream.sse import EventTooLarge, SSEDecoder

STREAM = (
    b'data: {"a":1}\n\n'
    b": a comment\n\n"
    b"event: message\nid: 7\ndata: first line\ndata: second line\n\n"
    b"retry: 100\n\n"
    b"data:no-space\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a":1}', b"first line\nsecond line", b"no-space", b"[DONE]"]


def decode_in_pieces(data: bytes, size: int) -> list[bytes]:
    decoder = SSEDecoder()
    out: list[bytes] = []
    for start in range(0, len(data), size):
        out.extend(decoder.feed(data[start : start + size]))
    out.extend(decoder.flush())
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 1000])
def test_any_split_gives_the_same_events(size: int) -> None:
    assert decode_in_pieces(STREAM, size) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_crlf_and_cr_line_ends(size: int) -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert decode_in_pieces(crlf, size) == EXPECTED
    cr = STREAM.replace(b"\n", b"\r")
    assert decode_in_pieces(cr, size) == EXPECTED


def test_unterminated_last_event_is_flushed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"b"') == [b'{"a":1}']
    assert decoder.feed(b":2}") == []
    assert decoder.flush() == [b'{"b":2}']
    assert decoder.flush() == []


def test_an_event_without_data_is_skipped() -> None:
    assert SSEDecoder().feed(b"event: ping\n\nid: 3\n\n") == []


def test_oversized_event_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: " + b"x" * 200)
