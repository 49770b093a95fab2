"""Cutting answers into Telegram messages: joined, they are the answer; none is too long."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatstream.bots.telegram.split import (
    MESSAGE_LIMIT,
    code_entities,
    next_piece,
    pieces,
    utf16_len,
)

# Words, spaces, line and paragraph breaks, sentence ends, astral characters (two UTF-16 units).
ALPHABET = st.sampled_from(["a", "b", "é", "😀", " ", "\n", "\n\n", ". ", "! ", "\t", "`", "```"])
TEXTS = st.lists(ALPHABET, max_size=400).map("".join) | st.text(max_size=300)
LIMITS = st.integers(min_value=2, max_value=40)  # an astral character is 2 units


def check_pieces(text: str, spans: list[tuple[int, int]], limit: int) -> None:
    """The definition in split.py: pieces in order, whitespace (only) between and around."""
    position = 0
    for start, end in spans:
        gap, piece = text[position:start], text[start:end]
        assert gap == "" or gap.isspace()
        assert piece and not piece[0].isspace() and not piece[-1].isspace()
        assert utf16_len(piece) <= limit
        position = end
    assert text[position:] == "" or text[position:].isspace()
    # Nothing but whitespace is ever left out.
    kept = "".join(text[s:e] for s, e in spans)
    assert "".join(kept.split()) == "".join(text.split())


@given(TEXTS, LIMITS)
@settings(max_examples=400)
@example("word " * 30, 12)
@example("😀" * 10, 3)
def test_pieces_join_into_the_answer(text: str, limit: int) -> None:
    check_pieces(text, pieces(text, limit), limit)


@given(TEXTS, LIMITS, st.lists(st.integers(min_value=1, max_value=20), max_size=30))
@settings(max_examples=300)
def test_pieces_cut_while_streaming_are_the_pieces_of_the_whole(
    text: str, limit: int, steps: list[int]
) -> None:
    """Deliveries cut as text arrives; the cuts must be those of the finished answer."""
    committed: list[tuple[int, int]] = []
    position, seen = 0, 0
    for step in [*steps, len(text)]:
        seen = min(len(text), seen + step)
        while (span := next_piece(text[:seen], position, limit, final=False)) is not None:
            committed.append(span)
            position = span[1]
    rest = pieces(text[position:], limit)
    streamed = committed + [(position + s, position + e) for s, e in rest]
    assert streamed == pieces(text, limit)


def test_cuts_prefer_paragraphs_then_sentences_then_words() -> None:
    paragraph = "First sentence here. " * 100 + "\n\n" + "Next paragraph. " * 200
    assert paragraph[slice(*pieces(paragraph)[0])] == ("First sentence here. " * 100).strip()
    sentences = "One sentence ends here. " * 400
    assert all(sentences[s:e].endswith(".") for s, e in pieces(sentences)[:-1])
    words = "word " * 2000
    assert all(words[s:e].endswith("word") for s, e in pieces(words))
    long_word = "x" * 5000
    assert [e - s for s, e in pieces(long_word)] == [MESSAGE_LIMIT, 5000 - MESSAGE_LIMIT]


def test_code_entities_mark_code_without_changing_the_text() -> None:
    text = "Try:\n```python\nprint('😀')\n```\nthen `ls -l` and ``` not a fence"
    pre, code = code_entities(text)
    units = text.encode("utf-16-le")

    def covered(entity: dict[str, int]) -> str:
        start, length = entity["offset"] * 2, entity["length"] * 2
        return units[start : start + length].decode("utf-16-le")

    assert pre["type"] == "pre" and pre["language"] == "python"
    assert covered(pre) == "print('😀')"
    assert code["type"] == "code" and covered(code) == "ls -l"
    assert code_entities("no code at all") == []
    assert code_entities("```\n\n```") == []
