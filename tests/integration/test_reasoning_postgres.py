"""Reasoning on real PostgreSQL: streamed, saved in its own column, resumed, kept out of the
model's context (the same checks as the SQLite e2e test, issue #25 item 1)."""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.test_reasoning import check_reasoning_kept_apart
from tests.support.servers import AppServer, FakeUpstreamThread


def test_reasoning_is_kept_apart_on_postgres(
    make_server: Callable[..., AppServer], postgres_url: str, fake: FakeUpstreamThread
) -> None:
    check_reasoning_kept_apart(make_server(database_url=postgres_url), fake, "details")
