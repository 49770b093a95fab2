"""Access to the real PostgreSQL and Redis named by the environment.

Without `CHATSTREAM_TEST_POSTGRES_URL` / `CHATSTREAM_TEST_REDIS_URL` the tests
that need them are skipped, saying why. With `CHATSTREAM_TEST_REQUIRE_SERVICES=1`
(as `.ci/run` sets) a missing or unreachable service fails them instead.
"""

from __future__ import annotations

import os

import pytest


def service_url(variable: str) -> str:
    url = os.environ.get(variable)
    if url:
        return url
    if os.environ.get("CHATSTREAM_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{variable} is not set, and this run requires the real service")
    pytest.skip(f"{variable} is not set: no real service to test against")
