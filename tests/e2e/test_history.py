"""What goes upstream: the system prompt plus the budgeted recent history."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.sse import read_stream


def chat(client: httpx.Client, **body: Any) -> dict[str, Any]:
    with client.stream("POST", "/api/chat/stream", json=body) as response:
        assert response.status_code == 200
        stream = read_stream(response)
    assert stream.done["status"] == "complete"
    return stream.events[0].data


def test_upstream_gets_the_system_prompt_and_at_most_n_recent_messages(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    server: AppServer = make_server(history_messages=4)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        first = chat(client, message="turn 0 [[fake tokens=2]]", system_prompt="Be brief.")
        session_id = first["session_id"]
        for turn in range(1, 5):
            chat(client, message=f"turn {turn} [[fake tokens=2]]", session_id=session_id)

    sent = fake.fake.requests[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    history = sent[1:]
    assert len(history) == 4
    # Oldest dropped first; the new user message is last and always sent.
    assert [m["role"] for m in history] == ["assistant", "user", "assistant", "user"]
    assert history[-1] == {"role": "user", "content": "turn 4 [[fake tokens=2]]"}
    assert history[1]["content"] == "turn 3 [[fake tokens=2]]"
    # The first request of the session had only the system prompt and the message.
    assert fake.fake.requests[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "turn 0 [[fake tokens=2]]"},
    ]


def test_character_budget_drops_the_oldest_first(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    server: AppServer = make_server(history_chars=300, history_messages=50)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session_id = chat(client, message="a" * 100 + " [[fake tokens=1]]")["session_id"]
        chat(client, message="b" * 100 + " [[fake tokens=1]]", session_id=session_id)
        chat(client, message="c" * 100 + " [[fake tokens=1]]", session_id=session_id)

    sent = fake.fake.requests[-1]["messages"]
    assert all(m["role"] != "system" for m in sent)
    total = sum(len(m["content"]) for m in sent)
    assert total <= 300
    assert sent[-1]["content"].startswith("c" * 100)
    assert not any(m["content"].startswith("a" * 100) for m in sent)
    assert any(m["content"].startswith("b" * 100) for m in sent)


def test_the_new_message_is_sent_even_when_it_alone_is_over_budget(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    server: AppServer = make_server(history_chars=10)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        session_id = chat(client, message="first [[fake tokens=1]]")["session_id"]
        chat(client, message="a long second message [[fake tokens=1]]", session_id=session_id)
    assert fake.fake.requests[-1]["messages"] == [
        {"role": "user", "content": "a long second message [[fake tokens=1]]"}
    ]


def test_failed_empty_answers_are_not_sent_upstream(
    make_server: Any, fake: FakeUpstreamThread
) -> None:
    server: AppServer = make_server()
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        with client.stream(
            "POST", "/api/chat/stream", json={"message": "[[fake status=500]] one"}
        ) as r:
            session_id = read_stream(r).events[0].data["session_id"]
        chat(client, message="two [[fake tokens=1]]", session_id=session_id)
    sent = fake.fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user"]


def test_request_options_reach_the_upstream(client: httpx.Client, fake: FakeUpstreamThread) -> None:
    chat(
        client, message="[[fake tokens=1]] hi", model="other-model", temperature=0.3, max_tokens=77
    )
    request = fake.fake.requests[-1]
    assert request["model"] == "other-model"
    assert request["temperature"] == 0.3
    assert request["max_tokens"] == 77
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


def test_max_tokens_defaults_to_the_cap(client: httpx.Client, fake: FakeUpstreamThread) -> None:
    chat(client, message="[[fake tokens=1]] hi")
    assert fake.fake.requests[-1]["max_tokens"] == 4096
    assert "temperature" not in fake.fake.requests[-1]
