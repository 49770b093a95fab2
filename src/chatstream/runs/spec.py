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
    max_tokens: int | None  # None: the model server's own default (a pass-through sent none)
    temperature: float | None = None
    chunk_chars: int | None = None
    tools: ToolSet = field(default_factory=ToolSet)
    # A pass-through client's own request fields (`response_format`, `stop`, its
    # `tools`, ...), sent to the model as given.
    upstream_fields: dict[str, Any] = field(default_factory=dict)
    # The tools offered are the client's: their calls end the run (finish_reason
    # "tool_calls") and are the answer; they are never run here.
    client_tools: bool = False
    # A regeneration: a new answer is asked for, never the answer cache's (the same one).
    answer_again: bool = False


@dataclass(frozen=True, slots=True)
class Passthrough:
    """What an OpenAI-compatible client asks of the model beyond its message, kept as sent.

    `messages`: the whole context as the client sent it (a stateless call), sent
    instead of the stored history and never windowed (the adapter refuses one over
    the budget instead). `fields`: request fields sent to the model as given.
    `client_tools`: `fields` offer the client's tools. `server_tools`: offer the
    built-in tools too (an operator's choice; never with the client's own).
    """

    messages: list[dict[str, Any]] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    client_tools: bool = False
    server_tools: bool = False

    def apply(self, spec: RunSpec) -> None:
        """Shape `spec` (built as for chatstream's own clients) to this request.

        No `max_tokens` of chatstream's own: the client's, if it sent one, is in
        `fields` (capped, under the name it used).
        """
        if self.messages is not None:
            spec.messages = self.messages
        spec.max_tokens = None
        spec.upstream_fields = self.fields
        spec.client_tools = self.client_tools
        if self.client_tools or not self.server_tools:
            spec.tools = ToolSet()


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
