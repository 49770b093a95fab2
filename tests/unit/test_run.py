"""One Run, driven through the in-process demo transport: no network, no database.

The upstream is the real `AsyncOpenAI` client over the emulator's httpx2
transport (the offline demo's plumbing, with directives on); the store only
records what the run asked it to keep.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx2
import openai

from chatstream.emulation.demo import DEMO_BASE_URL, DemoTransport
from chatstream.emulation.emulator import Emulator
from chatstream.runs.events import Event
from chatstream.runs.run import Run, RunLimits, RunSpec
from chatstream.storage.records import RunOutput
from chatstream.tools import ToolRegistry, ToolSet
from chatstream.upstream.stream import ChatUpstream


class KeptOutputs:
    """A `RunStore` that keeps what it is given, as the database would."""

    def __init__(self, accept: bool = True) -> None:
        self.outputs: list[RunOutput] = []
        self._accept = accept

    async def save(self, output: RunOutput) -> bool:
        self.outputs.append(output)
        return self._accept


def limits(**values: Any) -> RunLimits:
    defaults: dict[str, Any] = {
        "first_token_timeout_s": 5.0,
        "idle_timeout_s": 5.0,
        "max_duration_s": 30.0,
        "thinking_interval_s": 5.0,
    }
    return RunLimits(**{**defaults, **values})


def make_run(message: str, store: KeptOutputs, tools: ToolSet | None = None, **bounds: Any) -> Run:
    client = openai.AsyncOpenAI(
        api_key="demo",
        base_url=DEMO_BASE_URL,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=DemoTransport(Emulator())),
    )
    spec = RunSpec(
        owner="someone",
        session_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        user_message_id=uuid.uuid4(),
        model="demo",
        messages=[{"role": "user", "content": message}],
        max_tokens=100,
        tools=tools or ToolSet(),
    )
    return Run(spec, upstream=ChatUpstream(client), store=store, limits=limits(**bounds))


def play(message: str, store: KeptOutputs, tools: ToolSet | None = None, **bounds: Any) -> Run:
    """Make a run and execute it to its end (on an event loop of its own)."""

    async def scenario() -> Run:
        run = make_run(message, store, tools, **bounds)
        run.record = await run.execute()  # type: ignore[attr-defined]
        return run

    return asyncio.run(scenario())


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.type == "delta")  # type: ignore[typeddict-item]


def test_a_run_streams_persists_once_then_says_done() -> None:
    store = KeptOutputs()
    run = play("[[fake tokens=6]] hi", store)
    record = run.record  # type: ignore[attr-defined]
    events = run.log.after(0)
    assert [e.type for e in events] == ["start", *["delta"] * 6, "done"]
    assert [e.seq for e in events] == list(range(1, 9))
    (output,) = store.outputs
    assert [row.role for row in output.rows] == ["assistant"]
    assert output.rows[-1].content == text_of(events) == record.answer  # type: ignore[union-attr]
    assert events[-1].data["persisted"] is True  # type: ignore[typeddict-item]
    assert record is not None and record.status == "complete"
    # An ended run keeps its log, nothing else.
    assert run.generation is None and run.spec.messages == []


def test_a_tool_round_writes_its_rows_before_the_answer() -> None:
    store = KeptOutputs()
    tools = ToolRegistry.default().select(["get_current_time"])
    run = play("[[fake tool=get_current_time tokens=3]] what time?", store, tools)
    types = [e.type for e in run.log.after(0)]
    assert types.index("tool_call") < types.index("tool_result") < types.index("done")
    (output,) = store.outputs
    assert [row.role for row in output.rows] == ["assistant", "tool", "assistant"]
    assert output.rows[0].tool_calls and output.rows[1].tool_call_id
    assert output.rows[-1].id == run.id


def test_a_stopped_run_keeps_what_it_streamed_as_cancelled() -> None:
    store = KeptOutputs()

    async def scenario() -> Run:
        run = make_run("[[fake tokens=20 stall_after=3]] hold", store)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(run.execute())
            async with run.follow() as batches:
                seen = 0
                async for batch in batches:
                    before, seen = seen, seen + sum(1 for e in batch if e.type == "delta")
                    if before < 3 <= seen:
                        assert run.stop()
                    if batch[-1].is_terminal:
                        break
        return run

    run = asyncio.run(scenario())
    events = run.log.after(0)
    assert events[-1].data["status"] == "cancelled"  # type: ignore[typeddict-item]
    assert "error" not in [e.type for e in events]
    assert store.outputs[0].rows[-1].content == text_of(events) == "stream every token "
    assert store.outputs[0].rows[-1].status == "cancelled"


def test_the_first_token_deadline_ends_a_silent_model() -> None:
    store = KeptOutputs()
    run = play("[[fake first_token_ms=5000 tokens=2]] slow", store, first_token_timeout_s=0.1)
    events = run.log.after(0)
    assert [e.type for e in events] == ["start", "error", "done"]
    assert events[1].data["code"] == "upstream_timeout"  # type: ignore[typeddict-item]
    assert store.outputs[0].rows[-1].status == "error"


def test_a_spooled_answer_is_done_with_persisted_false() -> None:
    store = KeptOutputs(accept=False)
    run = play("[[fake tokens=2]] hi", store)
    done = run.log.after(0)[-1].data
    assert (done["status"], done["persisted"]) == ("complete", False)  # type: ignore[typeddict-item]
