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
