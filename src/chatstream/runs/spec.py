"""What a run is asked to do, fixed when it is created, and the bounds it runs within."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from chatstream.tools import ToolSet


@dataclass(slots=True)
class RunLimits:
    first_token_timeout_s: float
    idle_timeout_s: float
    max_duration_s: float
    thinking_interval_s: float
    on_disconnect: Literal["continue", "cancel"] = "continue"
    max_tool_rounds: int = 5
    tool_timeout_s: float = 30.0


@dataclass(slots=True)
class RunSpec:
    """What to generate, fixed when the run is created."""

    owner: str
    session_id: uuid.UUID
    message_id: uuid.UUID
    user_message_id: uuid.UUID
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    chunk_chars: int | None = None
    tools: ToolSet = field(default_factory=ToolSet)


def round_row_id(run_id: uuid.UUID, round_index: int) -> uuid.UUID:
    """The id of a run's tool round `round_index` (its assistant row carrying the calls).

    Derived, not random: whoever writes a run's rows (the run itself, or the
    instance that ended it after its own died) writes the same ids, so the
    rows land once.
    """
    return uuid.uuid5(run_id, f"round:{round_index}")


def tool_row_id(run_id: uuid.UUID, round_index: int, call_index: int) -> uuid.UUID:
    """The id of the result row of call `call_index` of tool round `round_index`."""
    return uuid.uuid5(run_id, f"tool:{round_index}:{call_index}")
