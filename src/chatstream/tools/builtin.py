"""The tools chatstream ships with."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chatstream.tools.registry import Tool, ToolError, tool


@tool
async def get_current_time(timezone: str | None = None) -> dict[str, str]:
    """The current date and time, in UTC or in the given IANA time zone (e.g. Europe/Paris)."""
    zone: tzinfo
    if timezone is None:
        zone = UTC
    else:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(
                f"unknown time zone {timezone!r}; use an IANA name such as Europe/Paris"
            ) from None
    now = datetime.now(zone)
    return {
        "time": now.isoformat(timespec="seconds"),
        "timezone": timezone or "UTC",
        "weekday": now.strftime("%A"),
    }


BUILTIN_TOOLS: tuple[Tool, ...] = (get_current_time,)
