"""The opaque `cursor` of a listing: where its next page starts."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta

from chatstream.errors import InvalidRequest

# A cursor is a position in the list: the last row's activity time (microseconds
# since the epoch) and pk, as 16 bytes in base64url: always 22 characters, and
# every such string is a position, so none can be invalid.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{22}$"
_LARGEST = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(active: datetime, pk: int) -> str:
    micros = (active.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
    raw = max(micros, 0).to_bytes(8, "big") + pk.to_bytes(8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "==")
    except (binascii.Error, ValueError):
        raise InvalidRequest("`cursor` is not a cursor this server issued.") from None
    if len(raw) != 16:
        raise InvalidRequest("`cursor` is not a cursor this server issued.")
    micros = min(int.from_bytes(raw[:8], "big"), _LARGEST_MICROS)
    pk = min(int.from_bytes(raw[8:], "big"), _LARGEST)
    return _EPOCH + timedelta(microseconds=micros), pk


# Up to the year 9999, the largest a datetime holds.
_LARGEST_MICROS = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
