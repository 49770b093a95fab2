"""Reasoning through each client protocol, read by the clients' own libraries (issue #25 item 1).

/v1/chat/completions   `delta.reasoning_content` chunks; `message.reasoning_content`
/v1/responses          a `reasoning` output item, `response.reasoning_text.delta`
AI SDK UI stream       `reasoning-start` / `reasoning-delta` / `reasoning-end`: a
                       reasoning part of the message, before its text part
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.test_reasoning import THOUGHT, think
from tests.e2e.test_ui_stream import send, text_of
from tests.support.node import node_executable
from tests.support.servers import AppServer


@pytest.fixture
def sdk(server: AppServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_v1_chat_streams_reasoning_content_before_the_content(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="test-model",
            messages=ask(think("reasoning_content")),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    # Not a field of the SDK's types: read as OpenAI-compatible servers send it.
    thought = [getattr(d, "reasoning_content", None) for d in deltas]
    assert "".join(t for t in thought if t) == THOUGHT
    last_thought = max(i for i, t in enumerate(thought) if t)
    first_text = min(i for i, d in enumerate(deltas) if d.content)
    assert last_thought < first_text
    text = "".join(d.content or "" for d in deltas)
    assert text and THOUGHT not in text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8 + 3

    whole = sdk.chat.completions.create(
        model="test-model",
        messages=ask(think("details")),  # type: ignore[arg-type]
    )
    message = whole.choices[0].message
    assert getattr(message, "reasoning_content", None) == THOUGHT
    assert message.content and THOUGHT not in message.content
    plain = sdk.chat.completions.create(
        model="test-model",
        messages=ask("[[fake tokens=2]] plain"),  # type: ignore[arg-type]
    )
    assert "reasoning_content" not in plain.choices[0].message.model_dump(exclude_unset=True)


def test_responses_stream_a_reasoning_item_then_the_message(sdk: openai.OpenAI) -> None:
    events = list(sdk.responses.create(model="test-model", input=think("reasoning"), stream=True))
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.reasoning_text.delta"]
    assert "".join(e.delta for e in deltas) == THOUGHT
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    final = events[-1]
    assert final.type == "response.completed"
    reasoning, message = final.response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [part.text for part in reasoning.content or []] == [THOUGHT]
    assert final.response.output_text and THOUGHT not in final.response.output_text
    usage = final.response.usage
    assert usage is not None and usage.output_tokens_details.reasoning_tokens == 8


def test_the_ai_sdk_assembles_a_reasoning_part_before_the_text(server: AppServer) -> None:
    result = send(node_executable(), server, "thinking-chat", think("reasoning_content"))
    assert result["errors"] == []
    kinds = [chunk["type"] for chunk in result["chunks"]]
    assert kinds[kinds.index("reasoning-start") : kinds.index("reasoning-end") + 1] == [
        "reasoning-start",
        *["reasoning-delta"] * 8,
        "reasoning-end",
    ]
    assert kinds.index("reasoning-end") < kinds.index("text-start")
    parts = result["message"]["parts"]
    reasoning = [part for part in parts if part["type"] == "reasoning"]
    assert [(part["text"], part["state"]) for part in reasoning] == [(THOUGHT, "done")]
    assert text_of(result["message"]) and THOUGHT not in text_of(result["message"])
