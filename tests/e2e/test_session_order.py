"""Sessions are listed most recently active first, across pages."""

from __future__ import annotations

from typing import Any

import httpx


def all_pages(client: httpx.Client, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/sessions", params=params).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_a_session_with_a_new_message_moves_to_the_top(client: httpx.Client) -> None:
    old, middle, new = (client.post("/api/sessions", json={"title": t}).json()["id"] for t in "abc")
    assert all_pages(client, 2) == [new, middle, old]
    # A chat in the oldest session makes it the most recently active.
    answered = client.post("/api/chat", json={"message": "back again", "session_id": old})
    assert answered.status_code == 200
    assert all_pages(client, 2) == [old, new, middle]
    assert all_pages(client, 1) == [old, new, middle]
    listed = client.get("/api/sessions").json()["items"]
    stamps = [item["updated_at"] for item in listed]
    assert stamps == sorted(stamps, reverse=True)


def test_a_cursor_that_is_not_ours_is_422_in_the_error_shape(client: httpx.Client) -> None:
    answer = client.get("/api/sessions", params={"cursor": "not-a-cursor"})
    assert answer.status_code == 422
    assert "cursor" in answer.json()["error"]["message"]
