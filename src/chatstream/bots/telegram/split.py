"""Sans-I/O: cut an answer into Telegram messages, and mark its code for display.

A Telegram message holds at most 4096 characters (counted in UTF-16 code
units, as Telegram counts; an emoji outside the BMP is two) and Telegram
trims whitespace at both ends of every message. So messages are cut only at
whitespace, and each holds a piece that neither starts nor ends with any:

    answer = gap₀ + piece₁ + gap₁ + piece₂ + … + pieceₙ + gapₙ

where every gap is whitespace only (a gap between two pieces is empty only
when a single word is longer than a message and had to be cut). "The
messages joined" means exactly this: the pieces, put back with the
whitespace between them, are the answer.

Each cut is the last paragraph break in the message's room, else the last
line break, else the last sentence end, else the last space, else the room's
end. Paragraph, line and sentence breaks count only in the room's second
half, so that a break near the start does not leave a tiny message.

The cut of a piece depends only on the text up to one character past the
piece's room, so pieces cut while an answer streams (`next_piece`) are the
same as those of the whole answer (`pieces`).
"""

from __future__ import annotations

import re
from typing import Any

MESSAGE_LIMIT = 4096

_SENTENCE_END = ".!?…"
_CLOSERS = "\"')]\u00bb\u201d\u2019"  # closing quotes and brackets


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _room_end(text: str, start: int, limit: int) -> int:
    """The largest `end` with `text[start:end]` at most `limit` UTF-16 units long."""
    end = min(len(text), start + limit)
    units = utf16_len(text[start:end])
    while units > limit and end > start + 1:
        end -= 1
        units -= 2 if ord(text[end]) > 0xFFFF else 1
    return end  # at least one character, even one wider than a one-unit limit


def _is_sentence_end(text: str, i: int) -> bool:
    """Whether the whitespace at `i` follows the end of a sentence."""
    j = i - 1
    while j >= 0 and text[j] in _CLOSERS:
        j -= 1
    return j >= 0 and text[j] in _SENTENCE_END


def _cut(text: str, start: int, room: int) -> int:
    """Where the piece starting at `start` ends, given `text[room]` exists."""
    half = start + (room - start) // 2
    paragraph = text.rfind("\n\n", half, room + 2)
    if paragraph > half:
        return paragraph
    line = text.rfind("\n", half, room + 1)
    if line > half:
        return line
    for i in range(room, half, -1):
        if text[i].isspace() and _is_sentence_end(text, i):
            return i
    for i in range(room, start, -1):
        if text[i].isspace():
            return i
    return room


def next_piece(text: str, position: int, limit: int, *, final: bool) -> tuple[int, int] | None:
    """The next piece at or after `position`, as `(start, end)`.

    With `final` False (the answer is still streaming), a piece only once the
    rest is longer than one message: only then is its cut known for good.
    """
    start = position
    while start < len(text) and text[start].isspace():
        start += 1
    end = len(text)
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return None
    if utf16_len(text[start:end]) <= limit:
        return (start, end) if final else None
    room = _room_end(text, start, limit)
    if room >= len(text):  # a lone character wider than a one-unit limit
        return (start, room) if final else None
    cut = _cut(text, start, room)
    end = cut
    while text[end - 1].isspace():
        end -= 1
    return start, end


def pieces(text: str, limit: int = MESSAGE_LIMIT) -> list[tuple[int, int]]:
    """Every piece of a whole answer, in order, as `(start, end)` spans."""
    spans: list[tuple[int, int]] = []
    position = 0
    while (span := next_piece(text, position, limit, final=True)) is not None:
        spans.append(span)
        position = span[1]
    return spans


_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)(?:^```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def code_entities(text: str) -> list[dict[str, Any]]:
    """Telegram entities that show a message's Markdown code as code.

    The text is sent as it is (its characters are the answer's): fenced
    blocks keep their fences and get a `pre` entity over their content,
    inline code keeps its backticks and gets a `code` entity. Nothing is
    parsed by Telegram, so no answer can make a send fail.
    """
    entities: list[dict[str, Any]] = []
    blocks: list[tuple[int, int]] = []
    for match in _FENCE.finditer(text):
        body = match.group(2).rstrip("\n")
        if not body.strip():
            continue
        start = match.start(2)
        blocks.append((match.start(), match.end()))
        entity: dict[str, Any] = {
            "type": "pre",
            "offset": utf16_len(text[:start]),
            "length": utf16_len(body),
        }
        language = match.group(1).strip()
        if language and re.fullmatch(r"[\w+#.-]{1,32}", language):
            entity["language"] = language
        entities.append(entity)
    for match in _INLINE.finditer(text):
        if any(a <= match.start() < b for a, b in blocks):
            continue
        entities.append(
            {
                "type": "code",
                "offset": utf16_len(text[: match.start(1)]),
                "length": utf16_len(match.group(1)),
            }
        )
    entities.sort(key=lambda e: int(e["offset"]))
    return entities
