"""Most recently active first on PostgreSQL too (its timestamps and the cursor's keyset)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.test_session_order import all_pages
from tests.support.sentinels import SENTINEL_JWT_SECRET, make_token
from tests.support.servers import AppServer


@pytest.mark.postgres
def test_sessions_by_activity_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str
) -> None:
    server = make_server(database_url=postgres_url, auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    token = make_token(f"order-{uuid.uuid4().hex}")  # a fresh owner in the shared database
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    ) as client:
        ids = [client.post("/api/sessions", json={"title": str(i)}).json()["id"] for i in range(5)]
        assert all_pages(client, 2) == list(reversed(ids))
        client.post("/api/chat", json={"message": "hi", "session_id": ids[1]})
        client.patch(f"/api/sessions/{ids[3]}", json={"title": "renamed"})
        assert all_pages(client, 2) == [ids[3], ids[1], ids[4], ids[2], ids[0]]
