"""The quota window: fixed, aligned to its length since the Unix epoch (sans-I/O).

`CHATSTREAM_QUOTA_WINDOW` is `minute`, `hour`, `day` (the default) or a
number of seconds. A window of N seconds starts at every multiple of N
seconds since 1970-01-01T00:00:00Z, so `day` is the UTC day (midnight to
midnight), `hour` the clock hour, and every instance, whatever its start-up
time, agrees on where the current window starts and ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

NAMED_WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}


def window_seconds(value: str) -> int:
    """The length of `CHATSTREAM_QUOTA_WINDOW`, in seconds; ValueError says what is accepted."""
    text = value.strip().lower()
    if text in NAMED_WINDOWS:
        return NAMED_WINDOWS[text]
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError("must be minute, hour, day or a whole number of seconds (such as 3600)")


@dataclass(frozen=True, slots=True)
class Window:
    """One window: `[start, end)` in Unix seconds."""

    start: int
    end: int

    def reset_after(self, now: float) -> int:
        """Whole seconds until the window ends (at least 1 while it lasts)."""
        return max(math.ceil(self.end - now), 1)


def window_at(now: float, length_s: int) -> Window:
    """The window of length `length_s` that holds the moment `now` (Unix seconds)."""
    start = math.floor(now / length_s) * length_s
    return Window(start, start + length_s)
